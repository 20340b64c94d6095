"""The life cycle of issue 7, end to end with real processes and real peers.

Two servers are created and started by the service manager (``pacskit server …``, each its own
background process); DCMTK echoscu is refused, then accepted once its AE is added through the admin
API; a DCMTK client kept open (``echoscu --repeat``) is listed and disconnected (it reports the
A-ABORT); the notification stream records all of it; an add-in option is changed and reloaded while a
pynetdicom association keeps doing C-ECHOs (and keeps the old options), a new association gets the
new ones; both servers are stopped.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pynetdicom import AE
from typer.testing import CliRunner

from pacskit.admin.manager import ServiceManager, admin_client
from pacskit.cli import app
from pacskit.testing import make_instance
from pacskit.testing.peers import dcmtk_env, dcmtk_tool, free_port, run_echoscu

pytestmark = [pytest.mark.usefixtures("need_dcmtk"), pytest.mark.dcmtk, pytest.mark.slow]

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, f"pacskit {' '.join(args)} -> {result.exit_code}: {result.output}"
    return result.output


class EventReader:
    """Reads a server's /events stream in a thread and keeps the parsed events."""

    def __init__(self, folder: Path, kinds: str | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._client = admin_client(folder)
        self._kinds = kinds
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.ready.wait(10), "the event stream did not open"

    def _run(self) -> None:
        params = {"kinds": self._kinds} if self._kinds else None
        try:
            with self._client.stream("GET", "/events", params=params, timeout=httpx.Timeout(10, read=None)) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                for line in response.iter_lines():
                    if line.startswith(":"):
                        self.ready.set()
                    elif line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
        except httpx.HTTPError:
            pass  # the server stopped: the stream ends

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if predicate(event):
                    return event
            time.sleep(0.02)
        raise AssertionError(f"no matching event; got {self.events}")

    def close(self) -> None:
        self._thread.join(10)
        self._client.close()


def wait_until(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_two_servers_life_cycle(servers_root: Path, tmp_path: Path) -> None:
    manager = ServiceManager(servers_root)
    port_a, port_b = free_port(), free_port()
    cli("server", "create", "--ae", "STORE_A", "--port", str(port_a))
    cli("server", "create", "--ae", "STORE_B", "--port", str(port_b))
    folder_a, folder_b = servers_root / "STORE_A", servers_root / "STORE_B"
    for folder in (folder_a, folder_b):
        assert (folder / "server.toml").is_file() and (folder / "addins").is_dir()
        assert (folder / "data").is_dir() and (folder / "logs").is_dir()
    # A enforces its registry even on loopback (open_mode = false); B is the default (anyone on loopback).
    cli("server", "edit", "STORE_A", "--set", "open_mode=false")

    cli("server", "start", "STORE_A")
    cli("server", "start", "STORE_B")
    try:
        listing = cli("server", "list")
        assert listing.count("running") == 2, listing
        assert (folder_a / "STORE_A.sock").exists() and (folder_b / "STORE_B.sock").exists()

        events = EventReader(folder_a, kinds="connection,admin,error")

        # --- access: refused, add the AE through the API, accepted (no restart, no reload)
        refused = run_echoscu("127.0.0.1", port_a, "STORE_A", calling="NEWAE")
        assert refused.returncode != 0 and "Association Rejected" in refused.stdout, refused.stdout
        events.wait_for(lambda e: e["event"] == "connection" and e["state"] == "rejected")
        assert run_echoscu("127.0.0.1", port_b, "STORE_B", calling="NEWAE").returncode == 0  # B is open on loopback

        out = cli("ae", "add", "NEWAE", "--host", "127.0.0.1", "--port", "104", "--config", str(folder_a))
        assert "added NEWAE" in out
        events.wait_for(lambda e: e["event"] == "admin" and e["action"] == "ae-added" and e["title"] == "NEWAE")
        accepted = run_echoscu("127.0.0.1", port_a, "STORE_A", calling="NEWAE")
        assert accepted.returncode == 0, accepted.stdout
        assert "NEWAE" in cli("ae", "list", "--config", str(folder_a))

        # --- a connected DCMTK client, listed and disconnected
        keep = subprocess.Popen(
            [dcmtk_tool("echoscu"), "-aet", "NEWAE", "-aec", "STORE_A", "--repeat", "100000000", "127.0.0.1", str(port_a)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=dcmtk_env(),
        )
        try:
            with admin_client(folder_a) as client:
                client_row = wait_until(
                    lambda: next(
                        (c for c in client.get("/clients").json() if c["calling_ae"] == "NEWAE" and (c["operations"] or 0) > 0),
                        None,
                    )
                )
            assert client_row["state"] == "established"
            assert client_row["address"].startswith("127.0.0.1:")
            assert [ctx["abstract_syntax"] for ctx in client_row["contexts"]] == [VERIFICATION]
            assert client_row["bytes_in"] > 0 and client_row["bytes_out"] > 0
            assert client_row["implementation_version_name"].startswith("OFFIS_DCMTK")
            listed = cli("clients", "--server", str(folder_a))
            assert "NEWAE" in listed and str(client_row["id"]) in listed
            cli("clients", "disconnect", str(client_row["id"]), "--server", "STORE_A")
            output, _ = keep.communicate(timeout=30)
        finally:
            if keep.poll() is None:
                keep.kill()
                keep.wait()
        assert "Peer aborted Association" in output, output
        events.wait_for(lambda e: e["event"] == "connection" and e["state"] == "aborted" and e["id"] == client_row["id"])
        events.wait_for(lambda e: e["event"] == "admin" and e["action"] == "client-disconnected")
        with admin_client(folder_a) as client:
            assert all(c["id"] != client_row["id"] for c in client.get("/clients").json())
            stats = client.get("/statistics").json()
        assert stats["associations_rejected"] >= 1 and stats["associations_aborted"] >= 1
        assert stats["operations"]["C-ECHO"]["statuses"]["0x0000"] >= 2

        # --- change an add-in option and reload while another association keeps working
        instance = make_instance(tmp_path / "ct.dcm")
        ds = dcmread(instance)
        ae = AE(ae_title="NEWAE")
        ae.add_requested_context(VERIFICATION)
        ae.add_requested_context(CT)
        old = ae.associate("127.0.0.1", port_a, ae_title="STORE_A")
        assert old.is_established
        try:
            assert old.send_c_echo().Status == 0x0000
            assert old.send_c_store(ds).Status == 0x0000
            assert old.send_c_store(ds).Status == 0x0000  # duplicate, kept as first received
            # the same through the CLI: PATCH /addins/storage, then POST /reload
            cli("addins", "set", "storage", 'duplicate_policy="reject"', "--server", str(folder_a))
            with admin_client(folder_a) as client:
                storage = client.get("/addins/storage").json()
            assert storage["options"]["duplicate_policy"] == "reject"
            assert storage["schema"]["properties"]["duplicate_policy"]["enum"] == ["reject", "keep-first", "overwrite"]
            events.wait_for(lambda e: e["event"] == "admin" and e["action"] == "reloaded" and e["previous_associations"] >= 1)
            # the old association was not dropped and still runs with the previous add-ins
            for _ in range(3):
                assert old.send_c_echo().Status == 0x0000
            assert old.send_c_store(ds).Status == 0x0000
            new = ae.associate("127.0.0.1", port_a, ae_title="STORE_A")
            assert new.is_established
            try:
                assert new.send_c_echo().Status == 0x0000
                assert new.send_c_store(ds).Status == 0x0111  # the new option: duplicates refused
            finally:
                new.release()
            assert old.send_c_echo().Status == 0x0000
        finally:
            old.release()
        assert "duplicate_policy" in (folder_a / "server.toml").read_text()

        metrics = httpx.Client(transport=httpx.HTTPTransport(uds=str(folder_a / "STORE_A.sock"))).get("http://a/metrics").text
        assert 'pacskit_operations_total{ae="STORE_A",service="C-STORE",status="0x0111"} 1' in metrics
        status = cli("status", "--server", "STORE_B")
        assert "STORE_B" in status
    finally:
        for name in ("STORE_A", "STORE_B"):
            manager.stop(name, force=True)
    events.close()
    assert "stopped" in cli("server", "list").lower()
    assert manager.list()[0].pid is None and manager.list()[1].pid is None
    assert not (folder_a / "STORE_A.sock").exists()
    assert not (folder_a / "server.pid").exists()


def test_start_reports_the_servers_error_line(servers_root: Path) -> None:
    manager = ServiceManager(servers_root)
    port = free_port()
    manager.create("FIRST", port=port)
    manager.create("SECOND", port=free_port())
    manager.edit("SECOND", [f"port={port}"])
    manager.start("FIRST")
    try:
        result = CliRunner().invoke(app, ["server", "start", "SECOND"])
        assert result.exit_code == 1
        assert f"cannot listen on 127.0.0.1:{port}: address already in use" in result.output
        assert manager.pid(servers_root / "SECOND") is None
        removed = CliRunner().invoke(app, ["server", "remove", "FIRST", "--yes"])
        assert removed.exit_code == 1 and "running" in removed.output
    finally:
        manager.stop("FIRST")
    assert CliRunner().invoke(app, ["server", "remove", "FIRST", "--yes"]).exit_code == 0
    assert not (servers_root / "FIRST").exists()
