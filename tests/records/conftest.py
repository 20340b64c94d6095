"""Fixtures of the record-keeping tests: real syslog collectors (UDP, TLS with a test certificate), the
store backends of tests/store (``need_dcmtk`` is in tests/conftest.py)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from store.conftest import (  # noqa: F401 - fixtures
    backend,
    blobs,
    db_url,
    mariadb_server,
    postgres_server,
    session_databases,
    store,
)


def make_certificate(folder: Path, common_name: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 (IP SAN) and its key, made with ``cryptography``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "collector.pem", folder / "collector.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Collector:
    """Messages a collector received (raw RFC 5424 bytes), in arrival order."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.lock = threading.Lock()
        self.port = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def wait_for(self, count: int, timeout: float = 15.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self.lock:
            raise AssertionError(f"collector got {len(self.messages)} messages, expected {count}")

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)


class UdpCollector(Collector):
    """RFC 5426: one message per datagram."""

    def start(self, port: int = 0) -> UdpCollector:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", port))
        sock.settimeout(0.1)
        self.port = sock.getsockname()[1]

        def run() -> None:
            with sock:
                while not self._stop.is_set():
                    try:
                        data, _ = sock.recvfrom(65535)
                    except TimeoutError:
                        continue
                    with self.lock:
                        self.messages.append(data)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self._threads.append(t)
        return self


class TlsCollector(Collector):
    """RFC 5425: TLS, octet-counting framing (``LEN SP MSG``); checks the framing of every message."""

    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ctx.load_cert_chain(cert, key)
        self.errors: list[str] = []

    def start(self, port: int = 0) -> TlsCollector:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(4)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]

        def serve(conn: ssl.SSLSocket) -> None:
            buf = b""
            conn.settimeout(0.1)
            with conn:
                while not self._stop.is_set():
                    try:
                        chunk = conn.recv(65536)
                    except (TimeoutError, ssl.SSLWantReadError):
                        continue
                    except OSError:
                        return
                    if not chunk:
                        return
                    buf += chunk
                    while b" " in buf:
                        length_text, _, rest = buf.partition(b" ")
                        if not length_text.isdigit():
                            self.errors.append(f"bad frame header {length_text[:20]!r}")
                            return
                        length = int(length_text)
                        if len(rest) < length:
                            break
                        with self.lock:
                            self.messages.append(rest[:length])
                        buf = rest[length:]

        def run() -> None:
            with listener:
                while not self._stop.is_set():
                    try:
                        raw, _ = listener.accept()
                    except TimeoutError:
                        continue
                    try:
                        conn = self.ctx.wrap_socket(raw, server_side=True)
                    except (ssl.SSLError, OSError) as exc:
                        self.errors.append(f"handshake: {exc}")
                        raw.close()
                        continue
                    t = threading.Thread(target=serve, args=(conn,), daemon=True)
                    t.start()
                    self._threads.append(t)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self._threads.insert(0, t)
        return self


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return make_certificate(tmp_path / "certs")


@pytest.fixture
def udp_collector() -> Iterator[UdpCollector]:
    collector = UdpCollector().start()
    yield collector
    collector.stop()


def parse_syslog(message: bytes) -> dict[str, object]:
    """Split an RFC 5424 message: pri, version, timestamp, host, app, procid, msgid, sd, msg (BOM removed)."""
    head, _, rest = message.partition(b" ")
    assert head.startswith(b"<") and head.endswith(b">1"), head
    pri = int(head[1:head.index(b">")])
    fields = rest.split(b" ", 5)
    timestamp, host, app, procid, msgid, remainder = fields
    if remainder.startswith(b"-"):
        sd, msg = b"-", remainder[2:]
    else:
        end = remainder.index(b"] ") + 1 if b"] " in remainder else len(remainder)
        sd, msg = remainder[:end], remainder[end + 1:]
    if msg.startswith(b"\xef\xbb\xbf"):
        msg = msg[3:]
    return {"pri": pri, "timestamp": timestamp.decode(), "host": host.decode(), "app": app.decode(),
            "procid": procid.decode(), "msgid": msgid.decode(), "sd": sd.decode(), "msg": msg.decode("utf-8")}
