"""UIDs that break PS3.5 9.1 harmlessly are stored, found and retrieved (issue 15 item 7).

Legacy modalities send UIDs with a component with a leading zero, a letter, or more than 64
characters; Orthanc and DCMTK store them. pacskit accepts them with a warning (``strict_uids`` in the
Storage add-in refuses them with 0xC000) and still refuses what is not safe: empty values, control
characters, spaces, path separators, wildcards, more than 128 characters. Blob paths never come from
UIDs. DCMTK storescu is the sending peer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy.engine import URL

from pacskit.client import QueryRetrieveScu
from pacskit.net.sinks import temp_files
from pacskit.server.server import Server
from pacskit.config.settings import load_settings
from pacskit.store import InvalidInstance
from pacskit.testing.peers import (
    count_store_successes,
    dcmtk_env,
    dcmtk_tool,
    have_dcmtk,
)
from pacskit.testing.synth import dataset_bytes, make_instance

AE = "UIDPACS"
ROOT = "1.2.826.0.1.3680043.8.498."
STUDY_65 = (ROOT + "1" * 64)[:65]  # 65 characters, digits and dots
SERIES_100 = (ROOT + "77.012." + "2" * 99)[:100]  # a leading zero, 100 characters
SOP_LETTER = ROOT + "77.3a"
SOP_LEADING_ZERO = ROOT + "77.04"  # (DCMTK cuts a longer Affected SOP Instance UID to 64 characters)
REFUSED = {
    "path separator": ROOT + "9/1",
    "backslash": ROOT + "9\\1",
    "129 characters": (ROOT + "3" * 128)[:129],
    "control character": ROOT + "9\x071",
    "space": ROOT + "9 1",
    "wildcard": ROOT + "9*",
}


@pytest.mark.parametrize("uid", [STUDY_65, SERIES_100, SOP_LETTER, SOP_LEADING_ZERO])
def test_harmless_deviations_are_accepted_unless_strict(uid: str) -> None:
    from pacskit.store.index.extract import check_uid, is_usable_uid, uid_deviation

    assert uid_deviation(uid) is not None and is_usable_uid(uid)
    assert check_uid(uid, 0x00080018) == uid
    with pytest.raises(InvalidInstance):
        check_uid(uid, 0x00080018, strict=True)


@pytest.mark.parametrize("uid", ["", *REFUSED.values()], ids=["empty", *REFUSED])
def test_unsafe_values_are_always_refused(uid: str) -> None:
    from pacskit.store.index.extract import check_uid, is_usable_uid

    assert not is_usable_uid(uid)
    with pytest.raises(InvalidInstance):
        check_uid(uid, 0x00080018)


def _settings(tmp_path: Path, db_url: URL | str, **storage: object):
    folder = tmp_path / "srv"
    folder.mkdir()
    url = db_url.render_as_string(hide_password=False) if isinstance(db_url, URL) else db_url
    lines = [f'ae_title = "{AE}"', "port = 0", 'data_dir = "data"', "[database]", f"url = {url!r}", "[addins.storage]"]
    lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}" for k, v in storage.items()]
    (folder / "server.toml").write_text("\n".join(lines) + "\n")
    return load_settings(folder)


def _instances(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(accepted: SOP UID -> file, refused: reason -> file); one study, one series."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid UIs it writes
        good = {
            uid: make_instance(folder / f"good{n}.dcm", patient_id="UIDS", study_uid=STUDY_65,
                               series_uid=SERIES_100, sop_uid=uid, instance_number=n + 1)
            for n, uid in enumerate([SOP_LETTER, SOP_LEADING_ZERO])
        }
        bad = {
            reason: make_instance(folder / f"bad{n}.dcm", patient_id="UIDS", study_uid=generate_uid(), sop_uid=uid)
            for n, (reason, uid) in enumerate(REFUSED.items())
            if reason != "space"  # DCMTK storescu removes spaces from a UI value before sending it
        }
    return good, bad


async def _storescu(port: int, *files: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        dcmtk_tool("storescu"), "-v", "--no-halt", "-aec", AE, "-aet", "LEGACY", "127.0.0.1", str(port), *map(str, files),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dcmtk_env(),
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return out.decode(errors="replace")


def test_storescu_legacy_uids_stored_found_and_retrieved(tmp_path: Path, db_url: URL | str, caplog) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    good, bad = _instances(tmp_path / "in")
    settings = _settings(tmp_path, db_url)

    async def run():
        async with Server(settings) as server:
            out = await _storescu(server.port, *good.values(), *bad.values())
            scu = QueryRetrieveScu(f"{AE}@127.0.0.1:{server.port}", calling_ae="VIEWER")
            studies = await scu.find({"PatientID": "UIDS"}, level="STUDY")
            images = await scu.find({"StudyInstanceUID": STUDY_65, "SeriesInstanceUID": SERIES_100}, level="IMAGE")
            one = await scu.find({"StudyInstanceUID": STUDY_65, "SeriesInstanceUID": SERIES_100,
                                  "SOPInstanceUID": SOP_LETTER}, level="IMAGE")
            got = await scu.get({"StudyInstanceUID": STUDY_65}, level="STUDY", into=tmp_path / "got")
            got_one = await scu.get({"StudyInstanceUID": STUDY_65, "SeriesInstanceUID": SERIES_100,
                                     "SOPInstanceUID": SOP_LEADING_ZERO}, level="IMAGE", into=tmp_path / "got-one")
            blobs = [Path(server.store.instance_path(uid)) for uid in good]
            return out, studies, images, one, got, got_one, blobs

    with caplog.at_level(logging.WARNING, logger="pacskit.store"):
        out, studies, images, one, got, got_one, blobs = asyncio.run(run())
    assert count_store_successes(out) == len(good), out
    assert out.count("Error: CannotUnderstand") == len(bad), out
    assert [s.study_instance_uid for s in studies.records if s.patient_id == "UIDS"] == [STUDY_65]
    assert sorted(r.sop_instance_uid for r in images.records) == sorted(good)
    assert [r.sop_instance_uid for r in one.records] == [SOP_LETTER]
    assert got.ok and got.completed == 2, got
    received = {str(dcmread(r.path).SOPInstanceUID): r.path for r in got.received}
    assert set(received) == set(good)
    for uid, source in good.items():
        assert dataset_bytes(received[uid]) == dataset_bytes(source)
    assert got_one.ok and [r.sop_instance_uid for r in got_one.received] == [SOP_LEADING_ZERO]
    for blob in blobs:  # blob paths never come from UIDs
        assert not any(part in str(blob) for part in (SOP_LETTER, SOP_LEADING_ZERO, "77.3a", "77.04", "77.012"))
    warned = [r.getMessage() for r in caplog.records if "breaks PS3.5 9.1" in r.getMessage()]
    assert any("leading zero" in w for w in warned) and any("other than digits" in w for w in warned)
    assert any("longer than 64" in w for w in warned)


def test_strict_uids_refuses_them(tmp_path: Path, db_url: URL | str) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    good, _ = _instances(tmp_path / "in")
    settings = _settings(tmp_path, db_url, strict_uids=True)

    async def run():
        async with Server(settings) as server:
            out = await _storescu(server.port, *good.values())
            left = set(os.listdir(server.store.temp_dir))
            spares = {os.path.basename(p) for p in temp_files(server.store.temp_dir).spare_paths()}
            return out, server.store.counts().instances, sorted(left - spares)

    out, count, leftovers = asyncio.run(run())
    assert count_store_successes(out) == 0 and out.count("Error: CannotUnderstand") == len(good), out
    assert count == 0 and leftovers == []
