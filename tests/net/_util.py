"""Helpers shared by the tests in tests/net/ (real peers, raw sockets, acceptors on free ports)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pacskit.testing.peers import PeerError, count_store_successes, dcmtk_env, dcmtk_tool
from pacskit.testing.synth import dataset_bytes  # noqa: F401  (the net tests import it from here)
from pacskit.dicom.uids import ALL_TRANSFER_SYNTAXES, VERIFICATION_SOP_CLASS
from pacskit.net import Acceptor, NetConfig, Request, Services, SupportedContext
from pacskit.net import pdu

HERE = Path(__file__).resolve().parent
LOCALHOST = "127.0.0.1"
AE = "PACSKIT"

# --------------------------------------------------------------------------- DCMTK


def dcmtk(name: str) -> str:
    """Path of the real DCMTK program ``name`` (not pynetdicom's same-named scripts); skip if absent."""
    try:
        return dcmtk_tool(name)
    except PeerError as exc:
        pytest.skip(str(exc))


async def run_tool(*argv: str, timeout: float = 120) -> tuple[int, str]:
    """Run a DCMTK tool without blocking the event loop; return (exit code, stdout+stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dcmtk_env(),
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode("utf-8", "replace")


store_successes = count_store_successes


def free_port() -> int:
    """A TCP port free right now on all interfaces (DCMTK servers bind the wildcard address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((LOCALHOST, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on port {port}") from None
            time.sleep(0.02)


@contextlib.contextmanager
def spawned(argv: Sequence[str], port: int, *, env: dict[str, str] | None = None, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server process, wait until it listens on ``port``, stop it at exit (by its own pid)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        try:
            wait_for_port(port, proc)
        except Exception as exc:
            raise RuntimeError(f"{exc}\n--- log ---\n{log.read_text(errors='replace')}") from None
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# --------------------------------------------------------------------------- test data


def sample_file(name: str) -> str:
    """A file shipped inside pydicom's package (never downloaded)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available offline")
    return str(path)


def storage_sop_classes() -> list[str]:
    from pynetdicom import AllStoragePresentationContexts

    return list(dict.fromkeys(cx.abstract_syntax for cx in AllStoragePresentationContexts))


def storage_contexts(transfer_syntaxes: Sequence[str] = ALL_TRANSFER_SYNTAXES) -> list[SupportedContext]:
    return [SupportedContext(VERIFICATION_SOP_CLASS)] + [
        SupportedContext(uid, transfer_syntaxes) for uid in storage_sop_classes()
    ]


# --------------------------------------------------------------------------- acceptors


@dataclass
class StoreLog:
    """What a test acceptor received: one entry per C-STORE (file moved into ``folder``)."""

    folder: Path = Path(".")
    stored: list[dict[str, Any]] = field(default_factory=list)
    echoes: int = 0
    calls: int = 0

    async def on_store(self, req: Request) -> int:
        self.calls += 1
        assert req.received is not None
        dest = self.folder / f"{len(self.stored):04d}-{req.sop_instance_uid}.dcm"
        req.received.move_to(dest)
        self.stored.append(
            {
                "path": dest,
                "sop_class": req.sop_class_uid,
                "sop_instance": req.sop_instance_uid,
                "transfer_syntax": req.context.transfer_syntax,
                "calling_ae": req.assoc.remote_ae_title,
            }
        )
        return 0x0000

    async def on_echo(self, req: Request) -> int:
        self.echoes += 1
        return 0x0000

    def services(self) -> Services:
        services = Services()
        services.register("C-STORE", self.on_store)
        services.register("C-ECHO", self.on_echo)
        return services


@contextlib.asynccontextmanager
async def serving(
    services: Services,
    contexts: Sequence[SupportedContext] | None = None,
    *,
    config: NetConfig | None = None,
    ae_title: str = AE,
    **kwargs: Any,
) -> AsyncIterator[Acceptor]:
    """An :class:`Acceptor` on 127.0.0.1, a free port, closed at exit."""
    acceptor = Acceptor(ae_title, contexts if contexts is not None else storage_contexts(), services, config=config, **kwargs)
    await acceptor.start(LOCALHOST, 0)
    try:
        yield acceptor
    finally:
        await acceptor.close(grace=2.0)


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` on the event loop until true or ``timeout`` (a generous bound, not a speed test)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def leftover_files(folder: str | os.PathLike[str]) -> list[str]:
    return sorted(os.listdir(folder))


# --------------------------------------------------------------------------- raw sockets


def associate_rq(
    called: str = AE,
    calling: str = "RAWSCU",
    abstract_syntaxes: Sequence[str] = (VERIFICATION_SOP_CLASS,),
    transfer_syntaxes: Sequence[str] = ("1.2.840.10008.1.2",),
    max_pdu: int = 16384,
) -> bytes:
    contexts = [pdu.PresentationContextRQ(2 * i + 1, a, list(transfer_syntaxes)) for i, a in enumerate(abstract_syntaxes)]
    info = pdu.UserInformation(max_pdu_length=max_pdu, implementation_class_uid="1.2.3.4.5.6", implementation_version_name="RAW")
    return pdu.AssociateRQ(called, calling, contexts, info).encode()


def p_data(context_id: int, control: int, payload: bytes) -> bytes:
    return pdu.p_data_header(len(payload), context_id, control) + payload


# --------------------------------------------------------------------------- memory


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (peak RSS) of a process in bytes, from /proc/<pid>/status."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmPeak", "VmSize"):
                values[key] = int(rest.split()[0]) * 1024
    return values


# --------------------------------------------------------------------------- synthetic instances

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def make_instance(
    path: str | os.PathLike[str],
    *,
    rows: int = 512,
    cols: int = 1024,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    sop_instance_uid: str | None = None,
) -> Path:
    """Write a 16-bit Secondary Capture image of rows*cols*2 pixel bytes (random) as a Part 10 file."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "NET^TEST"
    ds.PatientID = "NET001"
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = os.urandom(rows * cols * 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    path = Path(path)
    ds.save_as(path, enforce_file_format=True)
    return path


MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"


def make_large_instance(path: str | os.PathLike[str], size_bytes: int, *, rows: int = 512, cols: int = 512) -> Path:
    """Write a multi-frame 16-bit Secondary Capture of about ``size_bytes`` pixel bytes, Explicit VR Little
    Endian, without ever holding the pixel data in memory: pydicom writes the header, then the (7FE0,0010)
    element header and the frames are appended in 1 MB pieces."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    frame = rows * cols * 2
    frames = max(1, size_bytes // frame)
    total = frame * frames
    ds = Dataset()
    ds.SOPClassUID = MULTIFRAME_WORD_SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "BIG^DATASET"
    ds.PatientID = "BIG001"
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    path = Path(path)
    ds.save_as(path, enforce_file_format=True)
    block = os.urandom(1 << 20)
    with open(path, "ab") as fh:
        fh.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, total))
        left = total
        counter = 0
        while left:
            n = min(left, len(block))
            # vary every block a little so the data is not one repeated megabyte
            fh.write(struct.pack("<Q", counter) + block[8:n] if n >= 8 else block[:n])
            counter += 1
            left -= n
    return path


def sha256_from(path: str | os.PathLike[str], offset: int) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/<pid>/clear_refs); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False
