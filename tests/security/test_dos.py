"""Denial-of-service inputs against a running server (issue 6's "DoS inputs").

* 50 TCP connections that never send an A-ASSOCIATE-RQ are closed within twice the ARTIM timeout,
  while DCMTK echoscu keeps getting answers;
* with ``max_associations = 10`` the 11th association is rejected (A-ASSOCIATE-RJ, transient, local
  limit exceeded) and the server goes on accepting once one is released;
* a PDU announcing 0xFFFFFFFF bytes before association, and command fragments never marked last,
  end in an A-ABORT (or a close) of that connection only.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import AssociationRejected, RequestedContext, connect
from pacskit.server.server import Server
from pacskit.config.settings import load_settings
from pacskit.testing.peers import dcmtk_env, dcmtk_tool, have_dcmtk

from pacskit.net import pdu


def associate_rq(called: str) -> bytes:
    contexts = [pdu.PresentationContextRQ(1, VERIFICATION_SOP_CLASS, ["1.2.840.10008.1.2"])]
    info = pdu.UserInformation(max_pdu_length=16384, implementation_class_uid="1.2.3.4", implementation_version_name="RAW")
    return pdu.AssociateRQ(called, "RAWSCU", contexts, info).encode()


def p_data(context_id: int, control: int, payload: bytes) -> bytes:
    return pdu.p_data_header(len(payload), context_id, control) + payload

pytestmark = [pytest.mark.dcmtk]

ARTIM = 1.0
ACSE = 5.0


def _settings(tmp_path: Path, **extra: object):
    folder = tmp_path / "srv"
    folder.mkdir()
    lines = ['ae_title = "DOSPACS"', "port = 0", 'data_dir = "data"']
    lines += [f"{k} = {v!r}" for k, v in extra.items()]
    lines += ["[timeouts]", f"artim = {ARTIM}", f"acse = {ACSE:g}"]
    (folder / "server.toml").write_text("\n".join(lines) + "\n")
    return load_settings(folder)


async def _echoscu(port: int) -> int:
    proc = await asyncio.create_subprocess_exec(
        dcmtk_tool("echoscu"), "-aec", "DOSPACS", "127.0.0.1", str(port), env=dcmtk_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), 30)


def test_silent_connections_closed_by_artim_while_echoscu_works(tmp_path: Path) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")

    async def run() -> tuple[list[float], list[int]]:
        async with Server(_settings(tmp_path)) as server:
            loop = asyncio.get_running_loop()

            async def open_and_wait_for_close() -> float:
                """Seconds from this connection's open to the server closing it (EOF), watched from
                the start, so that the echoes below do not delay the observation."""
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                opened = loop.time()
                try:
                    await asyncio.wait_for(reader.read(), 10 * ARTIM)  # EOF: the server closed it
                    return loop.time() - opened
                finally:
                    writer.close()

            watchers = []
            for _ in range(50):
                watchers.append(asyncio.ensure_future(open_and_wait_for_close()))
                await asyncio.sleep(0)  # let it connect before the next one starts
            echoes = [await _echoscu(server.port) for _ in range(3)]
            times = await asyncio.gather(*watchers)
            echoes.append(await _echoscu(server.port))
            return list(times), echoes

    times, echoes = asyncio.run(run())
    assert echoes == [0, 0, 0, 0]
    # Closed by ARTIM (1 s), not earlier, and not by the next timer that could close a silent
    # connection (the ACSE timeout, 5 s): each time is measured from that connection's own open.
    assert min(times) >= ARTIM - 0.05, min(times)
    assert max(times) < ACSE, max(times)


def test_eleventh_association_over_a_limit_of_ten_is_rejected(tmp_path: Path) -> None:
    async def run() -> tuple[AssociationRejected, int]:
        async with Server(_settings(tmp_path, max_associations=10)) as server:
            contexts = [RequestedContext(VERIFICATION_SOP_CLASS)]
            held = [await connect("127.0.0.1", server.port, called_ae="DOSPACS", contexts=contexts) for _ in range(10)]
            with pytest.raises(AssociationRejected) as refused:
                await connect("127.0.0.1", server.port, called_ae="DOSPACS", contexts=contexts)
            await held.pop().release()
            async with await connect("127.0.0.1", server.port, called_ae="DOSPACS", contexts=contexts) as again:
                status = await again.echo()
            for assoc in held:
                await assoc.release()
            return refused.value, status

    refused, status = asyncio.run(run())
    assert (refused.result, refused.source, refused.reason) == (2, 3, 2)  # transient, presentation, limit
    assert status == 0x0000


def _read_until_closed(sock: socket.socket, got: bytes = b"", timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        got += chunk
    return got


def _raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data``, then read until the server closes; returns what it sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return _read_until_closed(sock, timeout=timeout)


def _endless_command(port: int) -> bytes:
    """Associate, then send command fragments that are never the last one; returns what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(associate_rq(called="DOSPACS"))
        got = sock.recv(65536)
        try:
            for _ in range(8):
                sock.sendall(p_data(1, 0x01, b"\x00" * 16000))
        except (BrokenPipeError, ConnectionResetError):
            pass
        return _read_until_closed(sock, got)


def test_absurd_pdu_length_and_endless_command_fragments_abort_only_that_connection(tmp_path: Path) -> None:
    async def run() -> tuple[bytes, bytes, int]:
        async with Server(_settings(tmp_path)) as server:
            port = server.port
            huge = await asyncio.to_thread(_raw, port, struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF) + b"\x00" * 64)
            # an accepted association, then command fragments (bit 0 set, bit 1 never) forever
            fragments = await asyncio.to_thread(_endless_command, port)
            async with await connect("127.0.0.1", port, called_ae="DOSPACS",
                                     contexts=[RequestedContext(VERIFICATION_SOP_CLASS)]) as assoc:
                return huge, fragments, await assoc.echo()

    huge, fragments, status = asyncio.run(run())
    assert huge[:1] in (b"", b"\x07")  # closed, or A-ABORT
    assert fragments[:1] == b"\x02"  # A-ASSOCIATE-AC first ...
    assert b"\x07\x00" in fragments  # ... then A-ABORT once the command passed its size cap
    assert status == 0x0000
