"""The admin API in-process: reload by add-in generations, add-in routes, AE titles, statistics and
metrics, the event stream, the Unix socket, and TCP with TLS and a bearer token."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from pacskit.services import AddIn, AddInOptions, SupportedContext
from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import RequestedContext, connect
from pacskit.net import events as ev
from pacskit.server.server import Server, ServerError
from pacskit.config.settings import SettingsError, load_settings

ECHO = [RequestedContext(VERIFICATION_SOP_CLASS)]
JOURNAL: list[str] = []


class GreeterOptions(AddInOptions):
    word: str = "a"
    fail_start: bool = False


class Greeter(AddIn):
    """C-ECHO that notes which instance (which options) answered; has admin routes."""

    name = "greeter"
    Options = GreeterOptions

    def presentation_contexts(self):
        return [SupportedContext(VERIFICATION_SOP_CLASS)]

    def handlers(self):
        return {"C-ECHO": self.on_echo}

    async def on_echo(self, request):
        JOURNAL.append(f"echo {self.options.word}")
        return 0x0000

    async def start(self) -> None:
        if self.options.fail_start:
            raise RuntimeError("cannot start")
        JOURNAL.append(f"start {self.options.word}")

    async def stop(self) -> None:
        JOURNAL.append(f"stop {self.options.word}")

    def admin_router(self):
        from fastapi import APIRouter

        router = APIRouter()

        @router.get("/word")
        async def word() -> dict[str, str]:
            return {"word": self.options.word}

        return router


def _server(folder: Path, extra: str = "") -> Server:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.toml").write_text(f'ae_title = "ADMINTEST"\nport = 0\ndata_dir = "data"\n{extra}')
    return Server(load_settings(folder), addin_classes=[Greeter])


def _uds(server: Server) -> httpx.AsyncClient:
    path = server.settings.admin_socket_path
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(path)), base_url="http://admin")


async def _echo_on(assoc: Any) -> int:
    return await assoc.echo()


def test_reload_keeps_open_associations_on_their_generation(tmp_path: Path) -> None:
    JOURNAL.clear()

    async def run() -> None:
        server = _server(tmp_path / "srv")
        await server.start()
        try:
            async with _uds(server) as api:
                old = await connect("127.0.0.1", server.port, called_ae="ADMINTEST", contexts=ECHO)
                assert await old.echo() == 0
                assert (await api.get("/addins/greeter/word")).json() == {"word": "a"}

                bad = await api.patch("/addins/greeter", json={"word": 7})
                assert bad.status_code == 422 and "word" in bad.json()["detail"]
                r = await api.patch("/addins/greeter", params={"reload": True}, json={"word": "b"})
                assert r.status_code == 200, r.text
                assert r.json()["reload"]["previous_associations"] == 1
                assert 'word = "b"' in (tmp_path / "srv" / "server.toml").read_text()

                assert await old.echo() == 0  # still served by the first instance
                new = await connect("127.0.0.1", server.port, called_ae="ADMINTEST", contexts=ECHO)
                assert await new.echo() == 0  # served by the new one
                assert (await api.get("/addins/greeter/word")).json() == {"word": "b"}
                assert "stop a" not in JOURNAL  # its association is still open
                openapi = (await api.get("/openapi.json")).json()
                assert "/addins/greeter/word" in openapi["paths"]

                # a reload whose add-ins cannot start changes nothing
                r = await api.patch("/addins/greeter", params={"reload": True}, json={"fail_start": True})
                assert r.status_code == 409 and "cannot start" in r.json()["detail"]
                assert await new.echo() == 0
                await api.patch("/addins/greeter", json={"fail_start": None})  # back to the default

                await old.release()
                for _ in range(200):
                    if "stop a" in JOURNAL:
                        break
                    await asyncio.sleep(0.01)
                assert await new.echo() == 0
                await new.release()
        finally:
            await server.stop()

    asyncio.run(run())
    assert JOURNAL == ["start a", "echo a", "start b", "echo a", "echo b", "echo b", "stop a", "echo b", "stop b"]


def test_ae_titles_clients_statistics_metrics_and_events(tmp_path: Path) -> None:
    async def run() -> None:
        server = _server(tmp_path / "srv", "open_mode = false\n")
        await server.start()
        try:
            async with _uds(server) as api:
                stream_events: list[dict[str, Any]] = []
                opened = asyncio.Event()

                async def read_stream() -> None:
                    async with api.stream("GET", "/events") as response:
                        async for line in response.aiter_lines():
                            if line.startswith(":"):
                                opened.set()
                            elif line.startswith("data: "):
                                stream_events.append(json.loads(line[6:]))

                reader = asyncio.create_task(read_stream())
                await asyncio.wait_for(opened.wait(), 10)

                # AE titles: refused, added, accepted; edit, bad input, remove
                with pytest.raises(Exception, match="reject"):
                    await connect("127.0.0.1", server.port, called_ae="ADMINTEST", calling_ae="SCU1", contexts=ECHO)
                body = {"title": "SCU1", "host": "127.0.0.1", "port": 11112, "allowed_services": ["echo"]}
                assert (await api.post("/ae-titles", json=body)).status_code == 201
                assert (await api.post("/ae-titles", json=body)).status_code == 409
                bad = await api.post("/ae-titles", json={**body, "title": "A\\B"})
                assert bad.status_code == 422
                assert server.ae_titles.get("SCU1") is not None
                assoc = await connect("127.0.0.1", server.port, called_ae="ADMINTEST", calling_ae="SCU1", contexts=ECHO)
                for _ in range(5):
                    assert await assoc.echo() == 0
                r = await api.put("/ae-titles/SCU1", json={**body, "description": "the test SCU"})
                assert r.status_code == 200 and server.ae_titles.get("SCU1").description == "the test SCU"
                assert (await api.put("/ae-titles/SCU1", json={**body, "title": "OTHER"})).status_code == 422
                assert (await api.put("/ae-titles/NOPE", json={**body, "title": "NOPE"})).status_code == 404
                listed = (await api.get("/ae-titles")).json()
                assert [e["title"] for e in listed] == ["SCU1"]

                clients = (await api.get("/clients")).json()
                assert len(clients) == 1
                row = clients[0]
                assert row["calling_ae"] == "SCU1" and row["operations"] == 5 and row["state"] == "established"
                assert row["contexts"][0]["name"] == "Verification SOP Class"

                stats = (await api.get("/statistics")).json()
                assert stats["associations_total"] == 1 and stats["associations_rejected"] == 1
                assert stats["associations_active"] == 1
                echo = stats["operations"]["C-ECHO"]
                assert echo["count"] == 5 and echo["statuses"] == {"0x0000": 5}
                assert echo["latency"]["buckets"]["+Inf"] == 5
                assert stats["bytes_in"] > 0 and stats["bytes_out"] > 0

                text = (await api.get("/metrics")).text
                _check_prometheus(text)
                assert 'pacskit_operations_total{ae="ADMINTEST",service="C-ECHO",status="0x0000"} 5' in text
                assert 'pacskit_operation_duration_seconds_count{ae="ADMINTEST",service="C-ECHO"} 5' in text
                assert 'pacskit_associations_active{ae="ADMINTEST"} 1' in text

                assert (await api.delete(f"/clients/{row['id']}")).status_code == 204
                assert (await api.delete(f"/clients/{row['id'] + 100}")).status_code == 404
                await asyncio.wait_for(assoc.wait_closed(), 10)
                assert assoc.is_aborted
                assert (await api.delete("/ae-titles/SCU1")).status_code == 204
                assert (await api.delete("/ae-titles/SCU1")).status_code == 404

                for _ in range(200):
                    if any(e.get("state") == "aborted" for e in stream_events):
                        break
                    await asyncio.sleep(0.01)
                kinds = [(e["event"], e.get("state") or e.get("action") or e.get("service")) for e in stream_events]
                assert ("connection", "rejected") in kinds
                assert ("admin", "ae-added") in kinds
                assert ("connection", "accepted") in kinds
                assert kinds.count(("operation", "C-ECHO")) == 5
                assert ("admin", "client-disconnected") in kinds
                assert ("connection", "aborted") in kinds
                assert ("admin", "ae-removed") in kinds
                await server.stop()  # ends the stream cleanly
                await asyncio.wait_for(reader, 10)
        finally:
            await server.stop()

    asyncio.run(run())


def _check_prometheus(text: str) -> None:
    sample = re.compile(r'^[a-z_]+\{(?:[a-z_]+="(?:[^"\\]|\\.)*",?)+\} -?[0-9.e+-]+$')
    buckets: dict[str, list[int]] = {}
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            continue
        assert sample.match(line), line
        m = re.match(r'pacskit_operation_duration_seconds_bucket\{.*service="([^"]+)",le="([^"]+)"\} (\d+)', line)
        if m:
            buckets.setdefault(m.group(1), []).append(int(m.group(3)))
    for counts in buckets.values():
        assert counts == sorted(counts), "histogram buckets must be cumulative"


def _statistics_observers(server: Server) -> list[object]:
    """Observers on the server's bus that belong to the admin statistics (other parts subscribe too)."""
    from pacskit.server.stats import Statistics

    return [
        o for observers in server.bus._subs.values() for o in observers
        if isinstance(getattr(o, "__self__", None), Statistics)
    ]


def test_statistics_off_subscribes_nothing(tmp_path: Path) -> None:
    async def run() -> None:
        server = _server(tmp_path / "srv", "[admin]\nstatistics = false\n")
        await server.start()
        try:
            assert _statistics_observers(server) == []
            async with _uds(server) as api:
                status = (await api.get("/status")).json()
                assert status["admin"]["statistics"] is False and status["ae_title"] == "ADMINTEST"
        finally:
            await server.stop()
        srv = _server(tmp_path / "srv2")
        await srv.start()
        try:
            assert srv.bus.wants(ev.OPERATION_COMPLETED)
            assert len(_statistics_observers(srv)) == 8
        finally:
            await srv.stop()
        assert _statistics_observers(srv) == []

    asyncio.run(run())


def test_unix_socket_is_private_and_exclusive(tmp_path: Path) -> None:
    async def run() -> None:
        folder = tmp_path / "srv"
        server = _server(folder)
        await server.start()
        sock = folder / "ADMINTEST.sock"
        try:
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600
            other = Server(load_settings(folder), addin_classes=[Greeter])
            with pytest.raises(ServerError, match="in use"):
                await other.start()
        finally:
            await server.stop()
        assert not sock.exists()
        # a socket file left by a crash is replaced
        import socket as socketlib

        stale = socketlib.socket(socketlib.AF_UNIX)
        stale.bind(str(sock))
        stale.close()
        again = Server(load_settings(folder), addin_classes=[Greeter])
        await again.start()
        await again.stop()

    asyncio.run(run())


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "admin-cert.pem", folder / "admin-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_tcp_listener_needs_tls_and_the_token(tmp_path: Path) -> None:
    import ssl

    from pacskit.testing.peers import free_port

    folder = tmp_path / "srv"
    folder.mkdir()
    cert, _ = _self_signed(folder)
    token = "s3cret-token-of-the-admin-0123456789"
    (folder / "admin-token").write_text(token + "\n")
    (folder / "admin-token").chmod(0o600)
    port = free_port()
    admin = (
        f'[admin]\ntcp_host = "127.0.0.1"\ntcp_port = {port}\ntls_cert = "admin-cert.pem"\n'
        'tls_key = "admin-key.pem"\ntoken_file = "admin-token"\n'
    )

    async def run() -> None:
        server = _server(folder, admin)
        await server.start()
        try:
            context = ssl.create_default_context(cafile=str(cert))
            url = f"https://127.0.0.1:{port}"
            async with httpx.AsyncClient(verify=context, base_url=url) as api:
                assert (await api.get("/status")).status_code == 401
                assert (await api.get("/addins/greeter/word")).status_code == 401
                wrong = await api.get("/status", headers={"Authorization": "Bearer wrong"})
                assert wrong.status_code == 401
                ok = await api.get("/status", headers={"Authorization": f"Bearer {token}"})
                assert ok.status_code == 200 and ok.json()["admin"]["tcp"] == f"127.0.0.1:{port}"
                word = await api.get("/addins/greeter/word", headers={"Authorization": f"Bearer {token}"})
                assert word.json() == {"word": "a"}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as plain:
                with pytest.raises(httpx.HTTPError):
                    await plain.get("/status", headers={"Authorization": f"Bearer {token}"})
            async with _uds(server) as api:  # the Unix socket needs no token
                assert (await api.get("/status")).status_code == 200
        finally:
            await server.stop()

    asyncio.run(run())
    (folder / "server.toml").write_text('ae_title = "ADMINTEST"\n[admin]\ntcp_host = "127.0.0.1"\ntcp_port = 1\n')
    with pytest.raises(SettingsError, match="tls_cert, tls_key and token_file"):
        load_settings(folder)
