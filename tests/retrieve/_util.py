"""Helpers for the retrieve tests: a server with data, DCMTK movescu/getscu, a capturing destination."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy.engine import URL

from pacskit.net import Acceptor, Services, SupportedContext
from pacskit.config.aetitles import AE_FILE, FileAeRegistry, RemoteAE
from pacskit.config.settings import ServerSettings, load_settings
from pacskit.store import DataStore
from pacskit.testing.peers import dcmtk_env, dcmtk_tool
from pacskit.testing.synth import make_instance, make_series

PACS_AE = "RTPACS"


def server_settings(tmp_path: Path, db_url: URL | str | None = None, **retrieve: object) -> ServerSettings:
    """A server folder with storage + retrieve add-ins (retrieve options as given)."""
    folder = tmp_path / "srv"
    folder.mkdir(exist_ok=True)
    lines = [f'ae_title = "{PACS_AE}"', "port = 0", 'data_dir = "data"']
    if db_url is not None:
        url = db_url.render_as_string(hide_password=False) if isinstance(db_url, URL) else db_url
        lines += ["[database]", f"url = {url!r}"]
    import tomli_w

    lines.append("[addins.retrieve]")
    (folder / "server.toml").write_text("\n".join(lines) + "\n" + tomli_w.dumps(dict(retrieve)))
    return load_settings(folder)


def register(settings: ServerSettings, title: str, port: int, host: str = "127.0.0.1") -> None:
    FileAeRegistry(settings.folder / AE_FILE).add(RemoteAE(title=title, host=host, port=port), replace=True)


def ingest(store: DataStore, path: str | os.PathLike[str], source_ae: str = "TEST") -> None:
    """Copy ``path`` into the store's temp folder and ingest it (the store consumes the copy)."""
    staged = Path(store.temp_dir) / f"stage-{generate_uid()[-12:]}.dcm"
    shutil.copyfile(path, staged)
    store.ingest(str(staged), source_ae=source_ae)


@dataclass
class Archive:
    """What :func:`populate` stored: two patients; patient P1 with two studies."""

    # study uid -> series uid -> [sop uids]
    studies: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    patient_of: dict[str, str] = field(default_factory=dict)  # study uid -> patient id
    files: dict[str, Path] = field(default_factory=dict)  # sop uid -> source file

    def sops(self, study: str | None = None, series: str | None = None, patient: str | None = None) -> set[str]:
        out: set[str] = set()
        for st, series_map in self.studies.items():
            if study and st != study or patient and self.patient_of[st] != patient:
                continue
            for se, sops in series_map.items():
                if series and se != series:
                    continue
                out.update(sops)
        return out


def populate(store: DataStore, folder: Path, *, per_series: int = 3) -> Archive:
    """P1: study A (2 series), study B (1 series); P2: study C (1 series). 64x64 CT, Explicit LE."""
    archive = Archive()
    layout = [("P1", 2), ("P1", 1), ("P2", 1)]
    for n, (patient, n_series) in enumerate(layout):
        study = generate_uid()
        archive.studies[study] = {}
        archive.patient_of[study] = patient
        for s in range(n_series):
            series = generate_uid()
            paths = make_series(folder / f"st{n}" / f"se{s}", per_series, patient_id=patient, study_uid=study,
                                series_uid=series, series_number=s + 1)
            archive.studies[study][series] = []
            for p in paths:
                from pydicom import dcmread

                uid = str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                archive.studies[study][series].append(uid)
                archive.files[uid] = p
                ingest(store, p)
    return archive


def study_of(archive: Archive, index: int) -> str:
    return list(archive.studies)[index]


async def run_tool(name: str, *args: str, timeout: float = 120) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        dcmtk_tool(name), *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dcmtk_env(),
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(errors="replace")


async def movescu(port: int, destination: str, keys: Sequence[str], *, model: str = "-S", extra: Sequence[str] = ()) -> str:
    args = ["-v", model, "-aet", "MOVESCU", "-aec", PACS_AE, "-aem", destination, *extra]
    for k in keys:
        args += ["-k", k]
    _, out = await run_tool("movescu", *args, "127.0.0.1", str(port))
    return out


async def getscu(port: int, out_dir: Path, keys: Sequence[str], *, model: str = "-S", extra: Sequence[str] = ()) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["-v", model, "-aet", "GETSCU", "-aec", PACS_AE, "-od", str(out_dir), *extra]
    for k in keys:
        args += ["-k", k]
    _, out = await run_tool("getscu", *args, "127.0.0.1", str(port))
    return out


class CapturingDestination:
    """A pacskit acceptor as C-MOVE destination that records each C-STORE command and file.

    ``statuses`` maps SOP Instance UID -> status to answer (default 0x0000); ``gate``, when set, is
    awaited before each answer (to hold sub-operations while a test cancels).
    """

    def __init__(self, out_dir: Path, *, ae_title: str = "CAPTURE", transfer_syntaxes: Sequence[str] | None = None,
                 sop_classes: Sequence[str] = ("1.2.840.10008.5.1.4.1.1.2",), on_associate: Any = None) -> None:
        from pacskit.dicom.uids import UNCOMPRESSED_TRANSFER_SYNTAXES

        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.commands: list[Any] = []
        self.files: dict[str, Path] = {}
        self.statuses: dict[str, int] = {}
        self.gate: asyncio.Event | None = None
        self.stored = asyncio.Event()
        services = Services()
        services.register("C-STORE", self._on_store)
        ts = tuple(transfer_syntaxes or UNCOMPRESSED_TRANSFER_SYNTAXES)
        self.acceptor = Acceptor(ae_title, [SupportedContext(c, ts) for c in sop_classes], services,
                                 on_associate=on_associate)

    async def _on_store(self, request: Any) -> int:
        self.commands.append(request.command)
        uid = request.sop_instance_uid
        dest = self.out_dir / f"{len(self.commands):05d}.dcm"
        request.received.move_to(dest)
        self.files[uid] = dest
        self.stored.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.statuses.get(uid, 0x0000)

    async def __aenter__(self) -> CapturingDestination:
        await self.acceptor.start("127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.acceptor.close(grace=1.0)

    @property
    def port(self) -> int:
        return self.acceptor.port


def make_file(path: Path, **kw: Any) -> Path:
    return make_instance(path, **kw)


CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"


def identifier(level: str, **keys: Any) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


async def scu_move(port: int, destination: str, ds: Any, *, sop_class: str = STUDY_ROOT_MOVE,
                   cancel_after: asyncio.Event | None = None) -> list[tuple[Any, Any]]:
    """C-MOVE with pacskit's SCU; returns [(response command, decoded identifier or None)].
    ``cancel_after``: send C-CANCEL once this event is set."""
    from pacskit.net import CommandField, RequestedContext, connect

    assoc = await connect("127.0.0.1", port, called_ae=PACS_AE, calling_ae="MOVESCU",
                          contexts=[RequestedContext(sop_class)])
    out: list[tuple[Any, Any]] = []
    async with assoc:
        responses = assoc.request(CommandField.C_MOVE_RQ, sop_class, ds, Priority=0, MoveDestination=destination)
        canceller = None
        if cancel_after is not None:
            message_id = assoc.last_message_id + 1

            async def cancel() -> None:
                await cancel_after.wait()
                await assoc.cancel(message_id, assoc.find_context(sop_class))

            canceller = asyncio.ensure_future(cancel())
        async for rsp, received in responses:
            out.append((rsp, received.decode() if received is not None else None))
        if canceller is not None:
            await canceller
    return out


def counts(rsp: Any) -> tuple[Any, Any, Any, Any]:
    return tuple(rsp.get(k) for k in ("NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
                                     "NumberOfFailedSuboperations", "NumberOfWarningSuboperations"))


def failed_list(ds: Any) -> list[str]:
    """Failed SOP Instance UID List as a list (pydicom gives a str for one value)."""
    value = ds.FailedSOPInstanceUIDList
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]
