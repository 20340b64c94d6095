"""Helpers for the storage commitment tests: a pacskit server with the commitment add-in and data."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomli_w
from pydicom import dcmread
from pydicom.uid import generate_uid

from pacskit.client.commitment import SopReference
from pacskit.config.aetitles import AE_FILE, FileAeRegistry, RemoteAE
from pacskit.config.settings import ServerSettings, load_settings
from pacskit.store import DataStore
from pacskit.testing.synth import make_instance

PACS_AE = "CMTPACS"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def server_settings(tmp_path: Path, db_url: Any = None, **commitment: Any) -> ServerSettings:
    """A server folder with the given options of the commitment add-in; its index is SQLite in the
    data folder unless ``db_url`` (a URL or string) says otherwise."""
    from sqlalchemy.engine import URL

    folder = tmp_path / "srv"
    folder.mkdir(exist_ok=True)
    head = f'ae_title = "{PACS_AE}"\nport = 0\ndata_dir = "data"\n'
    config: dict[str, Any] = {"addins": {"commitment": dict(commitment)}}
    if db_url is not None:
        config["database"] = {"url": db_url.render_as_string(hide_password=False) if isinstance(db_url, URL) else str(db_url)}
    (folder / "server.toml").write_text(head + tomli_w.dumps(config))
    return load_settings(folder)


def register(settings: ServerSettings, title: str, port: int, host: str = "127.0.0.1", **kw: Any) -> None:
    FileAeRegistry(settings.folder / AE_FILE).add(RemoteAE(title=title, host=host, port=port, **kw), replace=True)


def store_files(store: DataStore, folder: Path, n: int, *, prefix: str = "img") -> list[tuple[Path, SopReference]]:
    """Make ``n`` CT instances under ``folder`` and ingest copies of them; returns (file, reference)."""
    out = []
    study, series = generate_uid(), generate_uid()
    for i in range(n):
        path = make_instance(folder / f"{prefix}{i}.dcm", study_uid=study, series_uid=series, instance_number=i + 1)
        staged = Path(store.temp_dir) / f"stage-{generate_uid()[-12:]}.dcm"
        shutil.copyfile(path, staged)
        store.ingest(str(staged), source_ae="TEST")
        ds = dcmread(path, stop_before_pixels=True)
        out.append((path, SopReference(str(ds.SOPClassUID), str(ds.SOPInstanceUID))))
    return out


def blob_path(store: DataStore, sop_instance_uid: str) -> Path:
    path = store.instance_path(sop_instance_uid)
    assert path is not None
    return Path(path)


def corrupt(path: Path) -> None:
    """Change bytes in the middle of a stored file, keeping its size (only the hash can tell)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def request_rows(store: DataStore) -> list[Any]:
    from sqlalchemy import select

    from pacskit.store import CommitmentRequest

    with store.index.reading() as s:
        return list(s.scalars(select(CommitmentRequest).order_by(CommitmentRequest.pk)))


def reasons(failed: Sequence[Any]) -> dict[str, int]:
    return {f.reference.sop_instance_uid: f.reason for f in failed}


def hold_checks_until_released(server: Any) -> None:
    """Make the add-in's store check wait until an association of the server was released.

    A requester that releases right after the N-ACTION-RSP races the report: the SCP may find its
    association still open and report there. Tests of "the requester closed its association" hold the
    check (which comes before the report) until the release happened, so they see the new-association
    path every time, not by timing luck.
    """
    import threading

    from pacskit.net import events as ev

    released = threading.Event()
    server.bus.subscribe(ev.ASSOCIATION_RELEASED, lambda event: released.set())
    verify = server.store.verify_instances

    def after_release(uids: Any) -> Any:
        assert released.wait(30), "the requester never released its association"
        return verify(uids)

    server.store.verify_instances = after_release


async def wait_for_states(store: DataStore, *states: str, timeout: float = 20.0) -> list[Any]:
    """The request rows once their states are ``states`` (the add-in records a report after the
    requester answered it, so a test that got the report may look a moment too early)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        rows = request_rows(store)
        if [r.state for r in rows] == list(states) or loop.time() > deadline:
            return rows
        await asyncio.sleep(0.02)
