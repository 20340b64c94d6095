"""Access control behind a real HAProxy: with ``proxy_protocol_from`` the server sees each caller's own
address (HAProxy ``send-proxy`` / ``send-proxy-v2``), so an AE bound to its hosts is still checked
against them; without it every caller is the balancer. TLS passes through after the header."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from pacskit.config.aetitles import RemoteAE
from pacskit.net import pdu
from pacskit.testing.haproxy import Backend, haproxy, haproxy_binary
from pacskit.testing.peers import have_dcmtk, run_echoscu

from .conftest import Pki, running_server, server_folder

AET = "SECPACS"
BOUND = RemoteAE(title="BOUND", host="127.0.0.3", port=104, source_hosts=["127.0.0.3"])


@pytest.fixture(scope="module", autouse=True)
def need_haproxy() -> None:
    if haproxy_binary() is None:
        pytest.skip("no haproxy: apt-get install haproxy (./run test installs it)")


def _with_settings(folder: Path, **extra: Any) -> Path:
    path = folder / "server.toml"
    settings = tomllib.loads(path.read_text())
    settings.update(extra)
    path.write_text(tomli_w.dumps(settings))
    return folder


def _associate(port: int, calling: str, source: str) -> int:
    """Open an association as ``calling`` from the address ``source``; the answer's PDU type (2: AC, 3: RJ)."""
    contexts = [pdu.PresentationContextRQ(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])]
    info = pdu.UserInformation(max_pdu_length=16384, implementation_class_uid="1.2.3.4.5.6", implementation_version_name="RAW")
    with socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0)) as sock:
        sock.sendall(pdu.AssociateRQ(AET, calling, contexts, info).encode())
        answer = sock.recv(1)
        return answer[0] if answer else 0


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_behind_haproxy_each_caller_is_checked_against_its_own_address(tmp_path: Path, version: str) -> None:
    folder = _with_settings(server_folder(tmp_path, ae_title=AET, open_mode=False, entries=[BOUND]),
                            proxy_protocol_from=["127.0.0.1"])
    with running_server(folder) as server, \
            haproxy([Backend("node", server.port, 1)], health_checks=False, send_proxy=version) as lb:  # type: ignore[arg-type]
        assert _associate(lb.dicom_port, "BOUND", "127.0.0.3") == 2  # its own host: accepted
        assert _associate(lb.dicom_port, "BOUND", "127.0.0.4") == 3  # another host: rejected
        assert _associate(server.port, "BOUND", "127.0.0.3") == 2  # direct, not through the balancer


def test_without_the_proxy_protocol_every_caller_is_the_balancer(tmp_path: Path) -> None:
    """The reason for the feature: the same caller, from its own host, is refused as the balancer's."""
    folder = server_folder(tmp_path, ae_title=AET, open_mode=False, entries=[BOUND])
    with running_server(folder) as server, haproxy([Backend("node", server.port, 1)], health_checks=False) as lb:
        assert _associate(lb.dicom_port, "BOUND", "127.0.0.3") == 3


def test_dcmtk_tls_through_haproxy_after_the_header(pki: Pki, tmp_path: Path) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    folder = server_folder(
        tmp_path, ae_title=AET, open_mode=None,
        tls={"certificate": str(pki.server_cert), "private_key": str(pki.server_key), "ca_file": str(pki.ca),
             "client_certificates": "required"},
    )
    _with_settings(folder, proxy_protocol_from=["127.0.0.1/32"])
    cert, key = pki.pair("good")
    tls = ["+tls", str(key), str(cert), "-pw", "+cf", str(pki.ca)]
    with running_server(folder) as server:
        for version in ("v1", "v2"):
            with haproxy([Backend("node", server.tls_port, 1)], health_checks=False, send_proxy=version) as lb:  # type: ignore[arg-type]
                result = run_echoscu("127.0.0.1", lb.dicom_port, AET, "MODALITY1", tls, timeout=60)
                assert result.returncode == 0 and "Received Echo Response (Success)" in result.stdout, result.stdout


def test_workers_read_the_header_of_a_handed_connection(tmp_path: Path) -> None:
    """``serve --workers 2``: the parent accepts, a worker reads the PROXY header (Acceptor.adopt)."""
    import subprocess
    import sys

    from pacskit.testing.peers import free_port

    folder = _with_settings(server_folder(tmp_path, ae_title=AET, open_mode=False, entries=[BOUND]),
                            proxy_protocol_from=["127.0.0.1"])
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pacskit", "serve", "--data-dir", str(folder), "--port", str(port),
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()  # printed once every worker is ready and the parent listens
        assert "with 2 workers" in ready, ready
        with haproxy([Backend("node", port, 1)], health_checks=False, send_proxy="v2") as lb:
            assert [_associate(lb.dicom_port, "BOUND", "127.0.0.3") for _ in range(4)] == [2] * 4
            assert _associate(lb.dicom_port, "BOUND", "127.0.0.4") == 3
    finally:
        proc.terminate()
        proc.wait(60)
