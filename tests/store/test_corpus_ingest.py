"""Every storage instance of pydicom's test corpus, stored through the server: byte-identical, indexed.

DCMTK's storescu re-encodes some files (undefined-length sequences, trailing padding), so this sends
them with pacskit's own requestor, which streams a file's dataset bytes unchanged; the DCMTK path is
covered by test_storage_addin.py. Files whose File Meta lacks what a C-STORE needs are left out; where
several files share a SOP Instance UID (pydicom does that on purpose) the first one by name is sent.
Each stored file must hold the sent dataset byte for byte (compressed, implicit VR, big endian, odd
VRs, private tags), the index row must name the right UIDs and transfer syntax, and ``check()`` must be
clean — on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pydicom.data
from pydicom import dcmread
from pynetdicom import AllStoragePresentationContexts
from sqlalchemy.engine import URL

from pacskit.net import RequestedContext, connect
from pacskit.dicom.part10 import read_part10_header
from pacskit.server.server import Server
from pacskit.config.settings import load_settings
from pacskit.store.index.extract import is_valid_uid
from pacskit.testing.synth import dataset_bytes

_STORAGE = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
_ROOT = Path(pydicom.data.__file__).parent / "test_files"


def _corpus() -> dict[str, Path]:
    chosen: dict[str, Path] = {}
    for path in sorted(p for p in _ROOT.rglob("*.dcm") if p.is_file()):
        try:
            info = read_part10_header(path)
        except ValueError:
            continue
        if info.sop_class_uid in _STORAGE and info.sop_instance_uid not in chosen:
            chosen[info.sop_instance_uid] = path
    return chosen


CORPUS = _corpus()



def _expected_status(path: Path) -> int:
    """What the Storage add-in must answer: the C-STORE command carries the File Meta's UIDs."""
    from .test_parse_to_end import UNPARSEABLE

    if path.name in UNPARSEABLE:  # cut short, or Implicit VR sent as JPEG Baseline: cannot understand
        return 0xC000
    ds = dcmread(path, stop_before_pixels=True)
    if not all(is_valid_uid(str(ds.get(k, ""))) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")):
        return 0xC000
    info = read_part10_header(path)
    if (str(ds.SOPInstanceUID), str(ds.SOPClassUID)) != (info.sop_instance_uid, info.sop_class_uid):
        return 0xA900  # e.g. badVR.dcm: its File Meta names another instance than its dataset
    return 0x0000


def test_corpus_is_large() -> None:
    assert len(CORPUS) >= 40


def test_every_corpus_instance_stored_byte_identical(tmp_path: Path, db_url: URL | str) -> None:
    folder = tmp_path / "srv"
    folder.mkdir()
    url = db_url.render_as_string(hide_password=False) if isinstance(db_url, URL) else db_url
    (folder / "server.toml").write_text(f'ae_title = "CORPUS"\nport = 0\ndata_dir = "data"\n[database]\nurl = {url!r}\n')
    settings = load_settings(folder)
    infos = {uid: read_part10_header(p) for uid, p in CORPUS.items()}
    pairs = sorted({(i.sop_class_uid, i.transfer_syntax) for i in infos.values()})
    assert len(pairs) <= 128

    async def run() -> dict[str, int]:
        statuses: dict[str, int] = {}
        async with Server(settings) as server:
            contexts = [RequestedContext(sop, (ts,)) for sop, ts in pairs]
            async with await connect("127.0.0.1", server.port, called_ae="CORPUS", calling_ae="MOD",
                                     contexts=contexts) as assoc:
                for uid, path in CORPUS.items():
                    statuses[uid] = (await assoc.store(path)).status
            store = server.store
            for uid, path in CORPUS.items():
                if statuses[uid] != 0x0000:
                    continue
                row = store.get_instance(uid)
                assert row is not None, path.name
                assert row.sop_class_uid == infos[uid].sop_class_uid
                assert row.transfer_syntax_uid == infos[uid].transfer_syntax
                assert row.source_ae == "MOD"
                stored = store.instance_path(uid)
                assert stored is not None
                assert dataset_bytes(stored) == dataset_bytes(path), path.name
                assert row.sha256 == hashlib.sha256(Path(stored).read_bytes()).hexdigest()
            report = store.check()
            assert report.ok, str(report)
            assert store.count("instances") == sum(1 for s in statuses.values() if s == 0x0000)
        return statuses

    statuses = asyncio.run(run())
    for uid, path in CORPUS.items():
        expected = _expected_status(path)
        assert statuses[uid] == expected, (path.name, hex(statuses[uid]))
