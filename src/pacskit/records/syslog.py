"""RFC 5424 syslog messages and their transports: UDP (RFC 5426), TCP and TLS (RFC 5425).

Used by the ``syslog`` logging destination and by the audit trail (IHE ATNA sends audit messages as
RFC 5424 syslog over TLS). :func:`format_message` builds one message::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG

:class:`SyslogSender` sends it. Over UDP each message is one datagram (truncated to ``max_udp``
bytes, RFC 5426 3.2 — 2048 is what every receiver must accept; audit messages are usually larger, so
use TLS for ATNA). Over TCP and TLS the framing is *octet counting* (RFC 5425 4.3, RFC 6587 3.4.1):
``MSG-LEN SP SYSLOG-MSG``. A stream connection is opened on first use and kept; a failed send closes
it and raises :class:`OSError` to the caller (who decides to spool or to drop), the next send
reconnects.

TLS: the collector's certificate is verified against ``ca_file`` (or the system store) and its name
(``server_name``, default the host) — RFC 5425 5.2; a client certificate is presented when
``cert_file``/``key_file`` are given (mutual authentication, as ATNA's Secure Node requires).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import threading
from typing import Literal

# RFC 5424 6.2.1: facilities and severities
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "audit": 13, "alert": 14, "clock": 15,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21, "local6": 22,
    "local7": 23,
}
SEVERITIES = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}
#: Python logging level -> RFC 5424 severity
LEVEL_SEVERITY = {50: 2, 40: 3, 30: 4, 20: 6, 10: 7}
NILVALUE = "-"
#: the private enterprise number RFC 5612 reserves for documentation and examples; SD-IDs of pacskit's
#: own structured data are ``pacskit@32473``
SD_ENTERPRISE = 32473

Protocol = Literal["udp", "tcp", "tls"]


def _header_field(value: str | None, limit: int) -> str:
    """PRINTUSASCII without spaces, at most ``limit`` characters, or the NILVALUE."""
    if not value:
        return NILVALUE
    cleaned = "".join(ch if 33 <= ord(ch) <= 126 else "_" for ch in value)[:limit]
    return cleaned or NILVALUE


def _sd_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_message(
    msg: str | bytes,
    *,
    facility: int = FACILITIES["daemon"],
    severity: int = SEVERITIES["info"],
    timestamp: dt.datetime | None = None,
    hostname: str | None = None,
    app_name: str = "pacskit",
    procid: str | None = None,
    msgid: str | None = None,
    structured_data: dict[str, dict[str, str]] | None = None,
    bom: bool = True,
) -> bytes:
    """One RFC 5424 message as bytes. ``msg`` is UTF-8 (prefixed with the BOM, RFC 5424 6.4, unless
    ``bom`` is false); ``structured_data`` maps SD-IDs to their parameters."""
    if not 0 <= facility <= 23 or not 0 <= severity <= 7:
        raise ValueError("facility must be 0-23 and severity 0-7")
    stamp = (timestamp or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="microseconds")
    stamp = stamp.replace("+00:00", "Z")
    host = _header_field(hostname if hostname is not None else socket.gethostname(), 255)
    header = (
        f"<{facility * 8 + severity}>1 {stamp} {host} {_header_field(app_name, 48)} "
        f"{_header_field(procid if procid is not None else str(os.getpid()), 128)} {_header_field(msgid, 32)} "
    )
    if structured_data:
        sd = "".join(
            "[" + _header_field(sd_id, 32) + "".join(f' {_header_field(k, 32)}="{_sd_value(v)}"' for k, v in params.items()) + "]"
            for sd_id, params in structured_data.items()
        )
    else:
        sd = NILVALUE
    body = msg.encode("utf-8") if isinstance(msg, str) else msg
    return header.encode("ascii") + sd.encode("utf-8") + b" " + (b"\xef\xbb\xbf" if bom and isinstance(msg, str) else b"") + body


def frame_octet_counting(message: bytes) -> bytes:
    """RFC 5425 4.3 / RFC 6587 3.4.1: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


class SyslogSender:
    """Sends RFC 5424 messages to one collector; thread-safe (one lock around the socket)."""

    def __init__(
        self,
        host: str,
        port: int,
        protocol: Protocol = "udp",
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        server_name: str | None = None,
        timeout: float = 5.0,
        max_udp: int = 65_000,
    ) -> None:
        if protocol not in ("udp", "tcp", "tls"):
            raise ValueError(f"syslog protocol must be udp, tcp or tls, not {protocol!r}")
        self.host = host
        self.port = port
        self.protocol = protocol
        self.timeout = timeout
        self.max_udp = max_udp
        self.server_name = server_name or host
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None
        if protocol == "tls":
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if cert_file:
                ctx.load_cert_chain(cert_file, key_file)
            self._ssl = ctx

    def __repr__(self) -> str:
        return f"SyslogSender({self.protocol}://{self.host}:{self.port})"

    def _connect(self) -> socket.socket:
        if self.protocol == "udp":
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.settimeout(self.timeout)
            sock.connect((self.host, self.port))  # connected: ICMP port unreachable surfaces as an error
            return sock
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl is not None:
            try:
                return self._ssl.wrap_socket(raw, server_hostname=self.server_name)
            except BaseException:
                raw.close()
                raise
        return raw

    def send(self, message: bytes) -> None:
        """Send one message; raises :class:`OSError` (``ssl.SSLError`` included) when it could not."""
        with self._lock:
            if self._sock is None:
                self._sock = self._connect()
            try:
                if self.protocol == "udp":
                    self._sock.send(message[: self.max_udp])
                else:
                    self._sock.sendall(frame_octet_counting(message))
            except OSError:
                self._close_locked()
                raise

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
