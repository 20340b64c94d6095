"""The TLS matrix (issue 6): DCMTK echoscu/storescu with ``+tls`` and pacskit's own SCU against a
pacskit server whose TLS add-in requires client certificates (mutual TLS) and checks a CRL.

Trusted certificates pass; corrupted, expired, revoked, self-signed, unknown-CA, missing and wrong-key
client certificates fail, as does a server certificate the client does not trust; plain DICOM to the
TLS port fails; TLS 1.0 and 1.1 are refused by the default (non-downgrading BCP 195) profile and, as a
control that the probe can succeed, accepted by the legacy BCP 195 profile.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from pacskit.client import EchoScu, StoreScu
from pacskit.net import NetError
from pacskit.net.tls import TlsConfigError, client_context
from pacskit.config.aetitles import RemoteAE
from pacskit.testing.peers import count_store_successes, dcmtk_env, dcmtk_tool, have_dcmtk, run_echoscu, run_storescu
from pacskit.testing.synth import make_instance

from .conftest import Pki, running_server, server_folder

pytestmark = [pytest.mark.dcmtk]

AET = "SECPACS"


@pytest.fixture(scope="module")
def need_dcmtk() -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    entries = [
        RemoteAE(title="TLSONLY", host="127.0.0.1", port=104, tls=True),
        RemoteAE(title="CERTAE", host="127.0.0.1", port=104, tls_subject="MODALITY1"),
    ]
    folder = server_folder(
        tmp_path_factory.mktemp("tls"), ae_title=AET, open_mode=None, entries=entries,
        tls={"certificate": str(pki.server_cert), "private_key": str(pki.server_key), "ca_file": str(pki.ca),
             "crl_file": str(pki.crl), "client_certificates": "required"},
    )
    with running_server(folder) as server:
        yield server


def dcmtk_tls(pki: Pki, name: str | None, ca: Path | None = None) -> list[str]:
    """echoscu/storescu options: our certificate ``name`` (None: anonymous TLS) and the CA we trust."""
    if name is None:
        opts = ["+tla"]
    else:
        cert, key = pki.pair(name)
        opts = ["+tls", str(key), str(cert), "-pw"]
    return opts + ["+cf", str(ca or pki.ca)]


REASON = {  # what the server logs for each refused client certificate (OpenSSL's verify messages)
    "expired": "certificate has expired",
    "revoked": "certificate revoked",
    "selfsigned": "self-signed certificate",
    "foreign": "unable to get local issuer certificate",
    None: "PEER_DID_NOT_RETURN_A_CERTIFICATE",
}


def server_logged(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 5.0) -> bool:
    """The server (in its own thread) logged ``text`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if any(text in r.getMessage() for r in caplog.records):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def echo_ok(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0 and "Received Echo Response (Success)" in result.stdout


# ---------------------------------------------------------------------- DCMTK


def test_dcmtk_echoscu_with_a_trusted_certificate_passes(need_dcmtk: None, pki: Pki, tls_server) -> None:  # type: ignore[no-untyped-def]
    result = run_echoscu("127.0.0.1", tls_server.tls_port, AET, "MODALITY1", dcmtk_tls(pki, "good"), timeout=60)
    assert echo_ok(result), result.stdout


@pytest.mark.parametrize("name", ["expired", "revoked", "selfsigned", "foreign", "wrongkey", "corrupt", None])
def test_dcmtk_echoscu_with_a_bad_or_missing_certificate_fails(need_dcmtk: None, pki: Pki, tls_server, name: str | None,
                                                               caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("WARNING", logger="pacskit.net")
    result = run_echoscu("127.0.0.1", tls_server.tls_port, AET, "MODALITY1", dcmtk_tls(pki, name), timeout=60)
    assert not echo_ok(result), result.stdout
    assert result.returncode != 0
    if name in REASON:  # refused by the server for the right reason (the others fail in echoscu itself)
        assert server_logged(caplog, REASON[name]), [r.getMessage() for r in caplog.records]
    else:
        assert "private key" in result.stdout.lower() or "certificate" in result.stdout.lower(), result.stdout


def test_dcmtk_echoscu_refuses_a_server_it_does_not_trust(need_dcmtk: None, pki: Pki, tls_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pacskit.cli.certs import make_ca, write_pem

    other = tmp_path / "other-ca.pem"
    write_pem(other, make_ca("not the server's CA").certificate)
    result = run_echoscu("127.0.0.1", tls_server.tls_port, AET, "MODALITY1", dcmtk_tls(pki, "good", other), timeout=60)
    assert not echo_ok(result), result.stdout


def test_plain_dicom_to_the_tls_port_fails_and_the_plain_port_still_works(need_dcmtk: None, pki: Pki, tls_server) -> None:  # type: ignore[no-untyped-def]
    plain_to_tls = run_echoscu("127.0.0.1", tls_server.tls_port, AET, "MODALITY1", ["-to", "5", "-ta", "5"], timeout=60)
    assert not echo_ok(plain_to_tls), plain_to_tls.stdout
    tls_to_plain = run_echoscu("127.0.0.1", tls_server.port, AET, "MODALITY1", dcmtk_tls(pki, "good") + ["-to", "5"], timeout=60)
    assert not echo_ok(tls_to_plain), tls_to_plain.stdout
    assert echo_ok(run_echoscu("127.0.0.1", tls_server.port, AET, "MODALITY1", timeout=60))


def test_dcmtk_storescu_over_tls_stores(need_dcmtk: None, pki: Pki, tls_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = [make_instance(tmp_path / f"i{n}.dcm") for n in range(3)]
    result = run_storescu("127.0.0.1", tls_server.tls_port, files, called=AET, calling="MODALITY1",
                          extra=dcmtk_tls(pki, "good"), timeout=120)
    assert count_store_successes(result) == 3, result.stdout
    refused = run_storescu("127.0.0.1", tls_server.tls_port, files, called=AET, calling="MODALITY1",
                           extra=dcmtk_tls(pki, "revoked"), timeout=120)
    assert count_store_successes(refused) == 0, refused.stdout


def test_tls_required_per_remote_ae_and_certificate_subject(need_dcmtk: None, pki: Pki, tls_server) -> None:  # type: ignore[no-untyped-def]
    plain = run_echoscu("127.0.0.1", tls_server.port, AET, "TLSONLY", timeout=60)
    assert not echo_ok(plain) and "Association Rejected" in plain.stdout, plain.stdout
    assert "Result: Rejected Permanent, Source: Service User" in plain.stdout and "Reason: No Reason" in plain.stdout, plain.stdout
    assert echo_ok(run_echoscu("127.0.0.1", tls_server.tls_port, AET, "TLSONLY", dcmtk_tls(pki, "good"), timeout=60))
    # CERTAE must present a certificate whose CN is MODALITY1
    assert echo_ok(run_echoscu("127.0.0.1", tls_server.tls_port, AET, "CERTAE", dcmtk_tls(pki, "good"), timeout=60))
    wrong_subject = run_echoscu("127.0.0.1", tls_server.tls_port, AET, "CERTAE", dcmtk_tls(pki, "other"), timeout=60)
    assert not echo_ok(wrong_subject) and "Association Rejected" in wrong_subject.stdout, wrong_subject.stdout


# ---------------------------------------------------------------------- pacskit's SCU


def _echo(port: int, calling: str = "PACSCU", **ssl_args: object) -> int:
    context = client_context(**ssl_args)  # type: ignore[arg-type]
    return EchoScu(f"{AET}@127.0.0.1:{port}", calling_ae=calling, ssl=context).echo_sync()


def test_pacskit_scu_matrix(pki: Pki, tls_server, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("WARNING", logger="pacskit.net")
    port = tls_server.tls_port
    cert, key = pki.pair("good")
    assert _echo(port, ca_file=pki.ca, certificate=cert, private_key=key) == 0
    for bad in ("expired", "revoked", "selfsigned", "foreign"):
        cert, key = pki.pair(bad)
        caplog.clear()
        with pytest.raises(NetError):
            _echo(port, ca_file=pki.ca, certificate=cert, private_key=key)
        assert server_logged(caplog, REASON[bad]), (bad, [r.getMessage() for r in caplog.records])
    caplog.clear()
    with pytest.raises(NetError):  # no client certificate, server requires one
        _echo(port, ca_file=pki.ca)
    assert server_logged(caplog, REASON[None]), [r.getMessage() for r in caplog.records]
    for broken in ("wrongkey", "corrupt"):  # refused before connecting, with the file named
        cert, key = pki.pair(broken)
        with pytest.raises(TlsConfigError):
            client_context(ca_file=pki.ca, certificate=cert, private_key=key)
    cert, key = pki.pair("good")
    with pytest.raises(NetError):  # the server's certificate is not from a CA we trust
        _echo(port, ca_file=pki.folder / "foreign-ca.pem", certificate=cert, private_key=key)
    with pytest.raises(NetError):  # TLS to the plain port
        _echo(tls_server.port, ca_file=pki.ca, certificate=cert, private_key=key)
    # the server keeps serving after all of that, and no failed handshake left an association behind
    assert _echo(port, ca_file=pki.ca, certificate=cert, private_key=key) == 0
    deadline = time.monotonic() + 5
    while tls_server.server.tls_acceptor.associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not tls_server.server.tls_acceptor.associations


def test_pacskit_store_scu_over_tls(pki: Pki, tls_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = pki.pair("good")
    files = [make_instance(tmp_path / f"s{n}.dcm") for n in range(2)]
    scu = StoreScu(f"{AET}@127.0.0.1:{tls_server.tls_port}", calling_ae="PACSCU",
                   ssl=client_context(ca_file=pki.ca, certificate=cert, private_key=key))
    report = asyncio.run(scu.store(files))
    assert len(report.succeeded) == 2 and not report.failed, report.summary()


# ---------------------------------------------------------------------- protocol versions


def _openssl_probe(port: int, version_flag: str, pki: Pki) -> subprocess.CompletedProcess[str]:
    cert, key = pki.pair("good")
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", version_flag, "-cipher", "DEFAULT:@SECLEVEL=0",
            "-cert", str(cert), "-key", str(key), "-CAfile", str(pki.ca)]
    return subprocess.run(argv, input="", capture_output=True, text=True, timeout=30, check=False)


def _handshake_done(probe: subprocess.CompletedProcess[str]) -> bool:
    out = probe.stdout + probe.stderr
    return "Cipher is (NONE)" not in out and ("New, TLSv1" in out or "Protocol  : TLSv1" in out) and "alert" not in out.lower()


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_tls_1_0_and_1_1_refused_by_openssl_s_client(pki: Pki, tls_server, flag: str, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("openssl") is None:
        pytest.skip("openssl command missing")
    caplog.set_level("WARNING", logger="pacskit.net")
    probe = _openssl_probe(tls_server.tls_port, flag, pki)
    out = probe.stdout + probe.stderr
    assert "unknown option" not in out, out  # the local OpenSSL knows the flag: this really probes the server
    assert "no protocols available" not in out, out  # and really offered TLS 1.0/1.1 (security level 0)
    assert not _handshake_done(probe), out
    # The server's reason (asyncio closes without sending the alert, so the client only sees EOF);
    # the server thread logs it right after closing, so give it a moment.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any("UNSUPPORTED_PROTOCOL" in r.getMessage() for r in caplog.records):
        time.sleep(0.05)
    assert any("TLS handshake from 127.0.0.1" in r.getMessage() and "UNSUPPORTED_PROTOCOL" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    tls12 = _openssl_probe(tls_server.tls_port, "-tls1_2", pki)
    assert _handshake_done(tls12), tls12.stdout + tls12.stderr


def _python_tls11_client(pki: Pki) -> ssl.SSLContext:
    import warnings

    cert, key = pki.pair("good")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.load_verify_locations(str(pki.ca))
    context.load_cert_chain(str(cert), str(key))
    return context


def _python_handshake(port: int, context: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return str(tls.version())


def test_tls_1_1_refused_with_python_ssl_and_accepted_by_the_legacy_profile(pki: Pki, tls_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ssl.SSLError):
        _python_handshake(tls_server.tls_port, _python_tls11_client(pki))
    # Control: the probe does reach TLS 1.1 against a server that allows the BCP 195 fallback.
    folder = server_folder(tmp_path, ae_title=AET, open_mode=None, tls={
        "certificate": str(pki.server_cert), "private_key": str(pki.server_key), "ca_file": str(pki.ca), "profile": "bcp195"})
    with running_server(folder) as legacy:
        try:
            version = _python_handshake(legacy.tls_port, _python_tls11_client(pki))
        except ssl.SSLError as exc:  # pragma: no cover - depends on the OpenSSL build
            pytest.fail(f"this OpenSSL cannot do TLS 1.1 even at security level 0, so the refusal above proves nothing: {exc}")
        assert version in ("TLSv1", "TLSv1.1"), version


# ---------------------------------------------------------------------- configuration errors


def test_unusable_tls_configuration_stops_the_server_with_one_clear_line(pki: Pki, tmp_path: Path) -> None:
    from pacskit.server.addin_manager import AddInError

    cases = {
        "wrongkey": ({"certificate": str(pki.server_cert), "private_key": str(pki.pair("wrongkey")[1])}, "does not belong"),
        "missing": ({"certificate": str(tmp_path / "nope.pem"), "private_key": str(pki.server_key)}, "does not exist"),
        "corrupt": ({"certificate": str(pki.pair("corrupt")[0]), "private_key": str(pki.pair("corrupt")[1])}, "addins.tls"),
        "no-ca": ({"certificate": str(pki.server_cert), "private_key": str(pki.server_key)}, "trust store"),
    }
    for name, (options, message) in cases.items():
        folder = server_folder(tmp_path / name, tls=options)
        with pytest.raises(AddInError) as error:
            with running_server(folder):
                pass
        assert message in str(error.value), (name, str(error.value))


def test_outgoing_tls_for_c_move_to_a_dcmtk_storescp_with_tls(need_dcmtk: None, pki: Pki, tmp_path: Path) -> None:
    """dicom_request reaches a destination marked ``tls`` over TLS with the add-in's client context."""
    from pacskit.client import QueryRetrieveScu
    from pacskit.testing.peers import free_port, wait_for_port

    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    scp = subprocess.Popen(
        [dcmtk_tool("storescp"), "-aet", "TLSDEST", "-od", str(out), "+tls", str(pki.server_key), str(pki.server_cert),
         "-pw", "+cf", str(pki.ca), str(port)],
        env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=20, proc=scp)
        folder = server_folder(tmp_path, ae_title=AET, open_mode=None,
                               entries=[RemoteAE(title="TLSDEST", host="127.0.0.1", port=port, tls=True)],
                               tls={"certificate": str(pki.server_cert), "private_key": str(pki.server_key),
                                    "ca_file": str(pki.ca)})
        with running_server(folder) as server:
            files = [make_instance(tmp_path / f"m{n}.dcm", study_uid="1.2.826.0.1.3680043.10.1.7") for n in range(2)]
            report = asyncio.run(StoreScu(f"{AET}@127.0.0.1:{server.port}").store(files))
            assert len(report.succeeded) == 2
            scu = QueryRetrieveScu(f"{AET}@127.0.0.1:{server.port}", calling_ae="PACSCU")
            result = asyncio.run(scu.move(["StudyInstanceUID=1.2.826.0.1.3680043.10.1.7"], level="STUDY", destination="TLSDEST"))
            alive = scp.poll() is None
            assert result.ok and result.completed == 2, (result, alive, "" if alive else scp.stdout.read())  # type: ignore[union-attr]
    finally:
        scp.terminate()
        scp.wait(10)
    assert len(list(out.iterdir())) == 2


def test_pacskit_certs_and_cli_tls_flags(tmp_path: Path) -> None:
    """``pacskit certs init`` makes a working lab PKI; ``pacskit echo --tls-*`` uses it; ``revoke`` works."""
    from typer.testing import CliRunner

    from pacskit.cli import app

    runner = CliRunner()
    pki = tmp_path / "pki"
    made = runner.invoke(app, ["certs", "init", str(pki), "--client", "MODALITY1", "--client", "LATE"])
    assert made.exit_code == 0, made.output
    assert (pki / "server.key").stat().st_mode & 0o077 == 0  # private keys are not readable by others
    again = runner.invoke(app, ["certs", "init", str(pki)])
    assert again.exit_code == 2 and "exists" in again.output
    folder = server_folder(tmp_path, ae_title=AET, open_mode=None, tls={
        "certificate": str(pki / "server.pem"), "private_key": str(pki / "server.key"), "ca_file": str(pki / "ca.pem"),
        "crl_file": str(pki / "crl.pem"), "plain_port": False})
    revoked = runner.invoke(app, ["certs", "revoke", str(pki), str(pki / "LATE.pem")])
    assert revoked.exit_code == 0, revoked.output
    with running_server(folder) as server:
        assert server.server.acceptor is None  # TLS only
        target = f"{AET}@127.0.0.1:{server.tls_port}"
        tls = ["--tls-ca", str(pki / "ca.pem")]
        ok = runner.invoke(app, ["echo", target, *tls, "--tls-cert", str(pki / "MODALITY1.pem"), "--tls-key", str(pki / "MODALITY1.key")])
        assert ok.exit_code == 0 and "Success" in ok.output, ok.output
        no_cert = runner.invoke(app, ["echo", target, *tls])
        assert no_cert.exit_code in (3, 6), no_cert.output  # connection failed / aborted
        late = runner.invoke(app, ["echo", target, *tls, "--tls-cert", str(pki / "LATE.pem"), "--tls-key", str(pki / "LATE.key")])
        assert late.exit_code in (3, 6), late.output  # revoked
        bad_profile = runner.invoke(app, ["echo", target, "--tls", "--tls-profile", "nonsense"])
        assert bad_profile.exit_code == 2 and "unknown TLS profile" in bad_profile.output, bad_profile.output


def test_a_silent_connection_to_the_tls_port_is_closed_by_artim(pki: Pki, tmp_path: Path) -> None:
    """Slow-loris on the TLS port: a connection that never sends a ClientHello is closed within ARTIM."""
    folder = server_folder(tmp_path, ae_title=AET, open_mode=None, artim=1.0, tls={
        "certificate": str(pki.server_cert), "private_key": str(pki.server_key), "ca_file": str(pki.ca)})
    with running_server(folder) as server:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.tls_port), timeout=10) as silent:
            assert silent.recv(1) == b""  # closed by the server
        assert time.monotonic() - started < 2 * 1.0 + 1.0
        deadline = time.monotonic() + 5  # the acceptor forgets it an event-loop turn after the close
        while server.server.tls_acceptor.associations and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.server.tls_acceptor.associations
        cert, key = pki.pair("good")
        assert _echo(server.tls_port, ca_file=pki.ca, certificate=cert, private_key=key) == 0


@pytest.mark.parametrize(("profile", "dcmtk_profile"), [
    ("bcp195-nd", "+py"), ("bcp195", "+px"), ("bcp195-rfc8996", "+py"), ("bcp195-ex", "+pz"), ("aes", "+pa"),
])
def test_each_profile_interoperates_with_dcmtk(need_dcmtk: None, pki: Pki, tmp_path: Path, profile: str, dcmtk_profile: str) -> None:
    folder = server_folder(tmp_path, ae_title=AET, open_mode=None, tls={
        "certificate": str(pki.server_cert), "private_key": str(pki.server_key), "ca_file": str(pki.ca), "profile": profile})
    with running_server(folder) as server:
        result = run_echoscu("127.0.0.1", server.tls_port, AET, "MODALITY1", dcmtk_tls(pki, "good") + [dcmtk_profile, "-d"])
    assert echo_ok(result), result.stdout
    protocol = next(line for line in result.stdout.splitlines() if "Protocol    :" in line)
    if profile == "aes":
        assert "TLSv1.3" not in protocol  # AES-CBC suites exist up to TLS 1.2 only
    else:
        assert "TLSv1.2" in protocol or "TLSv1.3" in protocol


def test_the_retired_basic_profile_is_refused_clearly_where_openssl_lacks_3des(pki: Pki) -> None:
    from pacskit.net.tls import server_context

    try:
        context = server_context(pki.server_cert, pki.server_key, profile="basic", ca_file=pki.ca)
    except TlsConfigError as exc:
        assert "TLS profile basic" in str(exc) and "cipher suites" in str(exc)
    else:  # an OpenSSL that still has 3DES: then the context offers it and nothing stronger
        assert {c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"} <= {"DES-CBC3-SHA"}
    with pytest.raises(TlsConfigError, match="unknown TLS profile"):
        server_context(pki.server_cert, pki.server_key, profile="bcp195-typo", ca_file=pki.ca)


def test_tls_with_worker_processes(pki: Pki, tmp_path: Path) -> None:
    """``workers = 2``: the parent listens on the TLS port the workers report and hands connections over;
    each worker does the handshake, logs a refused certificate with the peer's address, and serves."""
    import re
    import signal
    import sys

    import tomli_w

    from pacskit.testing.peers import free_port

    folder = server_folder(tmp_path, ae_title=AET, open_mode=None, tls={
        "certificate": str(pki.server_cert), "private_key": str(pki.server_key), "ca_file": str(pki.ca),
        "client_certificates": "required"})
    tls_port = free_port()
    settings = tomllib.loads((folder / "server.toml").read_text())
    settings["workers"] = 2
    settings["addins"]["tls"]["port"] = tls_port
    (folder / "server.toml").write_text(tomli_w.dumps(settings))
    proc = subprocess.Popen([sys.executable, "-m", "pacskit", "serve", "--config", str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert "with 2 workers" in ready, ready
        port = int(ready.split("listening on ", 1)[1].split(":", 1)[1].split()[0])
        cert, key = pki.pair("good")
        for _ in range(4):
            assert _echo(tls_port, ca_file=pki.ca, certificate=cert, private_key=key) == 0
        expired, expired_key = pki.pair("expired")
        with pytest.raises(NetError):
            _echo(tls_port, ca_file=pki.ca, certificate=expired, private_key=expired_key)
        assert EchoScu(f"{AET}@127.0.0.1:{port}", calling_ae="PACSCU").echo_sync() == 0  # the plain port
    finally:
        proc.send_signal(signal.SIGTERM)
        _, log_text = proc.communicate(timeout=60)
    assert proc.returncode == 0, log_text[-3000:]
    accepted = re.findall(r"\[(\d+)\] INFO pacskit\.net: PACSCU->SECPACS: association accepted from 127\.0\.0\.1:\d+",
                          log_text)
    assert len(accepted) == 5 and len(set(accepted)) == 2, log_text[-3000:]
    assert re.search(r"TLS handshake from 127\.0\.0\.1:\d+ failed: certificate has expired", log_text), log_text[-3000:]


def test_tls_port_in_use_with_worker_processes_is_one_clear_error(pki: Pki, tmp_path: Path) -> None:
    """The parent binds the TLS port the workers report: taken, it is one line and exit code 1."""
    import sys

    import tomli_w

    folder = server_folder(tmp_path, ae_title=AET, open_mode=None, tls={
        "certificate": str(pki.server_cert), "private_key": str(pki.server_key), "ca_file": str(pki.ca)})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        tls_port = taken.getsockname()[1]
        settings = tomllib.loads((folder / "server.toml").read_text())
        settings["workers"] = 2
        settings["addins"]["tls"]["port"] = tls_port
        (folder / "server.toml").write_text(tomli_w.dumps(settings))
        proc = subprocess.run([sys.executable, "-m", "pacskit", "serve", "--config", str(folder)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stdout == f"error: cannot listen on 127.0.0.1:{tls_port}: address already in use\n", proc.stdout
