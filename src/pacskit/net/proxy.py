"""The PROXY protocol (HAProxy's, versions 1 and 2): the client's address from a load balancer.

Behind a TCP load balancer every association seems to come from the balancer, so access control
(registered AEs and their ``source_hosts``, "only loopback may call unregistered") and the logs and
audit trail would see one address for every modality, and a balancer on the same host would make
every caller look local. A balancer that speaks the PROXY protocol (HAProxy ``send-proxy`` /
``send-proxy-v2``, AWS NLB, nginx ``proxy_protocol on``) writes a short header before the client's
bytes that names the client's address; :func:`read_header` reads it from a new connection.

Only connections from the addresses an administrator listed as trusted balancers may carry one
(:class:`TrustedProxies`): a header from anyone else would let a caller pick its own address. A
trusted balancer's connection must start with a header, read exactly (not a byte of the DICOM or
TLS stream after it is consumed) within a deadline; a missing or malformed one closes the
connection with a log line. A ``LOCAL`` header (v2, a balancer's own health check) or ``UNKNOWN``
(v1) keeps the balancer's address.

Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Iterable
from typing import Any

__all__ = ["ProxyProtocolError", "TrustedProxies", "read_header", "parse_v1", "parse_v2", "V2_SIGNATURE"]

#: the 12 bytes that open a version 2 header
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_V1_MAX = 107  # the longest v1 line, CRLF included (spec 2.1)
_V2_MAX_BODY = 4096  # addresses (at most 216 bytes) and TLVs; a longer header is refused, not buffered
#: v2 address family -> (socket family, its name, source address length, address block length: both
#: addresses and both ports; the source port follows the two addresses)
_V2_FAMILIES = {1: (socket.AF_INET, "IPv4", 4, 12), 2: (socket.AF_INET6, "IPv6", 16, 36)}

Address = tuple[str, int]


class ProxyProtocolError(ValueError):
    """A trusted balancer's connection did not start with a valid PROXY header."""


class TrustedProxies:
    """The addresses (or networks) allowed to send a PROXY header; empty: the protocol is off.

    >>> TrustedProxies(["10.0.0.0/24", "127.0.0.1"]).trusts(("10.0.0.7", 5000))
    True
    """

    def __init__(self, networks: Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n for n in networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(n) for n in self.networks]!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrustedProxies) and other.networks == self.networks

    def __hash__(self) -> int:
        return hash(self.networks)

    def trusts(self, peer: Any) -> bool:
        """Whether ``peer`` (a ``getpeername()`` tuple) is one of the trusted balancers."""
        if not self.networks or not isinstance(peer, tuple) or not peer:
            return False
        try:
            address = ipaddress.ip_address(peer[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def parse_v1(line: bytes) -> Address | None:
    """The source address of a version 1 line (``PROXY TCP4 src dst sport dport\\r\\n``), or ``None``
    for ``PROXY UNKNOWN``. Raises :class:`ProxyProtocolError` on anything else."""
    if not line.startswith(_V1_PREFIX) or not line.endswith(b"\r\n") or len(line) > _V1_MAX:
        raise ProxyProtocolError("not a PROXY v1 line")
    try:
        parts = line[:-2].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 line is not ASCII") from None
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return None
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"PROXY v1 line has an unknown form: {line[:60]!r}")
    _, family, source, destination, source_port, destination_port = parts
    try:
        src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1 line has an invalid address: {line[:60]!r}") from None
    if src.version != (4 if family == "TCP4" else 6) or dst.version != src.version:
        raise ProxyProtocolError(f"PROXY v1 {family} line with addresses of another family")
    for port in (source_port, destination_port):
        if not port.isdigit() or (len(port) > 1 and port[0] == "0") or int(port) > 65535:
            raise ProxyProtocolError(f"PROXY v1 line has an invalid port: {port!r}")
    return str(src), int(source_port)


def parse_v2(header: bytes) -> Address | None:
    """The source address of a version 2 header (signature, 4 fixed bytes and the body), or ``None``
    for a ``LOCAL`` command or an address family it does not carry (``UNSPEC``, ``UNIX``).
    Raises :class:`ProxyProtocolError` on a malformed header."""
    if len(header) < 16 or header[:12] != V2_SIGNATURE:
        raise ProxyProtocolError("not a PROXY v2 header")
    version_command, family_protocol, length = struct.unpack_from("!BBH", header, 12)
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 header of version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyProtocolError(f"PROXY v2 header with unknown command {command}")
    body = header[16:]
    if len(body) != length:
        raise ProxyProtocolError("PROXY v2 header shorter than its length")
    if command == 0:  # LOCAL: the balancer's own connection (a health check)
        return None
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    if protocol not in (0, 1):  # only STREAM (or UNSPEC) makes sense for a TCP listener
        raise ProxyProtocolError(f"PROXY v2 header for transport protocol {protocol}, not a stream")
    if family in _V2_FAMILIES:  # AF_INET, AF_INET6
        sock_family, name, size, block = _V2_FAMILIES[family]
        if length < block:
            raise ProxyProtocolError(f"PROXY v2 {name} header too short")
        source = socket.inet_ntop(sock_family, body[0:size])
        (port,) = struct.unpack_from("!H", body, 2 * size)
        return source, port
    if family in (0, 3):  # UNSPEC, AF_UNIX: no IP address to report
        return None
    raise ProxyProtocolError(f"PROXY v2 header with unknown address family {family}")


async def read_header(sock: socket.socket, loop: asyncio.AbstractEventLoop | None = None) -> Address | None:
    """Read the PROXY header at the start of ``sock`` (non-blocking, not yet given to a transport) and
    return the client's address it names, or ``None`` when it names none (``LOCAL`` / ``UNKNOWN``).

    Reads exactly the header's bytes, so what follows (A-ASSOCIATE-RQ, a TLS ClientHello) is left for
    the transport. The caller bounds the wait (``asyncio.wait_for``). Raises
    :class:`ProxyProtocolError` for anything but a valid header, ``ConnectionError`` when the peer
    closes first."""
    loop = loop or asyncio.get_running_loop()
    start = await _read_exactly(loop, sock, 6)  # "PROXY " or the first 6 bytes of the v2 signature
    if start == V2_SIGNATURE[:6]:
        fixed = start + await _read_exactly(loop, sock, 10)
        if fixed[:12] != V2_SIGNATURE:
            raise ProxyProtocolError("a trusted balancer's connection without a PROXY header")
        (length,) = struct.unpack_from("!H", fixed, 14)
        if length > _V2_MAX_BODY:
            raise ProxyProtocolError(f"PROXY v2 header of {length} bytes (at most {_V2_MAX_BODY} taken)")
        return parse_v2(fixed + (await _read_exactly(loop, sock, length) if length else b""))
    if start != _V1_PREFIX:
        raise ProxyProtocolError(f"a trusted balancer's connection without a PROXY header (starts {start!r})")
    # v1 has no length: the shortest line is "PROXY UNKNOWN\r\n" (15 bytes), then byte by byte to the CRLF
    line = bytearray(start + await _read_exactly(loop, sock, 9))
    while not line.endswith(b"\r\n"):
        if len(line) >= _V1_MAX:
            raise ProxyProtocolError(f"PROXY v1 line longer than {_V1_MAX} bytes")
        line += await _read_exactly(loop, sock, 1)
    return parse_v1(bytes(line))


async def _read_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    buffer = bytearray()
    while len(buffer) < size:
        chunk = await loop.sock_recv(sock, size - len(buffer))
        if not chunk:
            raise ConnectionError("the connection closed inside its PROXY header")
        buffer += chunk
    return bytes(buffer)
