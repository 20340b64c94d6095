"""C-MOVE from a running pacskit server (SQLite): DCMTK movescu to DCMTK storescp and to Orthanc, and
pacskit's own SCU / acceptor where the test must see command elements (counts, Move Originator,
Failed SOP Instance UID List), at every level of both information models."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000, ImplicitVRLittleEndian, JPEGLSLossless

from pacskit.net import CommandField
from pacskit.net.negotiation import REJECT_CONGESTION
from pacskit.dicom.part10 import read_part10_header
from pacskit.server.server import Server
from pacskit.testing.peers import free_port, have_orthanc, orthanc, storescp
from pacskit.testing.synth import dataset_bytes

from ._util import (
    CT,
    PATIENT_ROOT_MOVE,
    SC,
    CapturingDestination,
    counts,
    failed_list,
    identifier,
    ingest,
    movescu,
    populate,
    register,
    scu_move,
    server_settings,
    study_of,
)

pytestmark = [pytest.mark.dcmtk, pytest.mark.usefixtures("need_dcmtk")]


def _received_uids(folder: Path) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.glob("*.dcm")}



def test_movescu_to_storescp_at_every_level(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)

    async def run() -> None:
        async with Server(settings) as server:
            archive = populate(server.store, tmp_path / "src")
            with storescp(tmp_path / "scp") as scp:
                register(settings, "STORESCP", scp.port)
                a, c = study_of(archive, 0), study_of(archive, 2)
                series = list(archive.studies[a])[1]
                sops = sorted(archive.sops(study=c))
                cases = [
                    ("-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={a}"], archive.sops(study=a)),
                    ("-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={a}\\{c}"],
                     archive.sops(study=a) | archive.sops(study=c)),
                    ("-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={a}", f"SeriesInstanceUID={series}"],
                     archive.sops(series=series)),
                    ("-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={c}",
                            f"SeriesInstanceUID={list(archive.studies[c])[0]}", f"SOPInstanceUID={sops[0]}\\{sops[1]}"],
                     set(sops[:2])),
                    ("-P", ["QueryRetrieveLevel=PATIENT", "PatientID=P1"], archive.sops(patient="P1")),
                    ("-P", ["QueryRetrieveLevel=STUDY", "PatientID=P2", f"StudyInstanceUID={c}"], archive.sops(study=c)),
                    ("-P", ["QueryRetrieveLevel=SERIES", "PatientID=P1", f"StudyInstanceUID={a}",
                            f"SeriesInstanceUID={series}"], archive.sops(series=series)),
                ]
                for model, keys, expected in cases:
                    for f in Path(scp.out_dir).glob("*.dcm"):
                        f.unlink()
                    out = await movescu(server.port, "STORESCP", keys, model=model)
                    assert "Received Final Move Response (Success)" in out, (keys, out)
                    received = list(Path(scp.out_dir).glob("*.dcm"))
                    assert _received_uids(Path(scp.out_dir)) == expected, (keys, out)
                    assert len(received) == len(expected)
                    for f in received:
                        uid = str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                        assert dataset_bytes(f) == dataset_bytes(archive.files[uid])

    asyncio.run(run())


def test_movescu_unknown_destination_is_refused_a801(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)

    async def run() -> tuple[str, list]:
        async with Server(settings) as server:
            archive = populate(server.store, tmp_path / "src", per_series=1)
            out = await movescu(server.port, "NOWHERE", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_of(archive, 0)}"])
            rsps = await scu_move(server.port, "NOWHERE", identifier("STUDY", StudyInstanceUID=study_of(archive, 0)))
            return out, rsps

    out, rsps = asyncio.run(run())
    assert "Received Final Move Response (Refused: MoveDestinationUnknown)" in out, out
    assert len(rsps) == 1 and rsps[0][0].status == 0xA801
    assert "NOWHERE" in rsps[0][0]["ErrorComment"]


def test_sub_operations_carry_move_originator_and_pending_counts(tmp_path: Path) -> None:
    settings = server_settings(tmp_path, pending_interval=0)

    async def run() -> None:
        async with Server(settings) as server, CapturingDestination(tmp_path / "dest") as dest:
            archive = populate(server.store, tmp_path / "src")
            register(settings, dest.ae_title, dest.port)
            a = study_of(archive, 0)
            rsps = await scu_move(server.port, dest.ae_title, identifier("STUDY", StudyInstanceUID=a))
            n = len(archive.sops(study=a))
            assert [r.status for r, _ in rsps] == [0xFF00] * (n - 1) + [0x0000]
            # Pending: remaining goes down, completed goes up; final: no remaining, no identifier
            for i, (r, ds) in enumerate(rsps[:-1]):
                assert counts(r) == (n - 1 - i, i + 1, 0, 0)
                assert ds is None
            final, ds = rsps[-1]
            assert counts(final)[1:] == (n, 0, 0) and ds is None
            assert set(dest.files) == archive.sops(study=a)
            for cmd in dest.commands:
                assert cmd["MoveOriginatorApplicationEntityTitle"].strip() == "MOVESCU"
                assert cmd["MoveOriginatorMessageID"] == 1
            for uid, f in dest.files.items():
                assert dataset_bytes(f) == dataset_bytes(archive.files[uid])

            # With a long interval there is no Pending at all (the retrieve takes far less).
            server_addin = next(x for x in server.addins if x.name == "retrieve")
            server_addin.options.pending_interval = 3600
            rsps = await scu_move(server.port, dest.ae_title, identifier("STUDY", StudyInstanceUID=a))
            assert [r.status for r, _ in rsps] == [0x0000]

    asyncio.run(run())


def test_failures_and_warnings_are_counted_and_listed(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)

    async def run() -> None:
        async with Server(settings) as server, CapturingDestination(tmp_path / "dest") as dest:
            archive = populate(server.store, tmp_path / "src")
            register(settings, dest.ae_title, dest.port)
            a = study_of(archive, 0)
            uids = sorted(archive.sops(study=a))
            dest.statuses = {uids[0]: 0xA700, uids[1]: 0xB000}
            rsps = await scu_move(server.port, dest.ae_title, identifier("STUDY", StudyInstanceUID=a))
            final, ds = rsps[-1]
            assert final.status == 0xB000
            assert counts(final)[1:] == (len(uids) - 2, 1, 1)
            assert failed_list(ds) == [uids[0]]
            assert "0xA700" in final["ErrorComment"]

            dest.statuses = dict.fromkeys(uids, 49152)
            rsps = await scu_move(server.port, dest.ae_title, identifier("STUDY", StudyInstanceUID=a))
            final, ds = rsps[-1]
            assert final.status == 0xA702
            assert counts(final)[1:] == (0, len(uids), 0)
            assert sorted(failed_list(ds)) == uids

    asyncio.run(run())


def test_transfer_syntax_conversion_and_impossible_conversion(tmp_path: Path) -> None:
    """The destination takes Implicit VR LE only: Explicit LE, RLE and JPEG stored instances are
    converted (pixels equal for the lossless ones); a destination taking only JPEG-LS Lossless gets
    every instance encoded in JPEG-LS on the fly (pixels equal to the decoded source); one taking only
    lossy JPEG 2000 gets nothing (never degraded on the fly: each sub-operation fails, the retrieve
    goes on)."""
    settings = server_settings(tmp_path)
    rle = get_testdata_file("SC_rgb_rle.dcm")
    jpeg = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")
    j2k = get_testdata_file("GDCMJ2K_TextGBR.dcm")

    async def run() -> None:
        async with Server(settings) as server, \
                CapturingDestination(tmp_path / "impl", ae_title="IMPLICIT", transfer_syntaxes=[ImplicitVRLittleEndian],
                                     sop_classes=[CT, SC]) as implicit, \
                CapturingDestination(tmp_path / "jls", ae_title="JLSONLY", transfer_syntaxes=[JPEGLSLossless],
                                     sop_classes=[CT, SC]) as jls, \
                CapturingDestination(tmp_path / "lossy", ae_title="LOSSYONLY", transfer_syntaxes=[JPEG2000],
                                     sop_classes=[CT, SC]) as lossy:
            archive = populate(server.store, tmp_path / "src", per_series=1)
            register(settings, implicit.ae_title, implicit.port)
            register(settings, jls.ae_title, jls.port)
            register(settings, lossy.ae_title, lossy.port)
            compressed = {}
            for f in (rle, jpeg, j2k):
                ingest(server.store, f)
                ds = dcmread(f)
                compressed[str(ds.SOPInstanceUID)] = (f, ds)
            ct_uid = sorted(archive.sops(study=study_of(archive, 0)))[0]
            sops = [ct_uid, *compressed]
            ident = identifier("IMAGE", SOPInstanceUID=sops)
            # IMAGE level with SOP UIDs only: upper keys are optional (relational-style), see store.retrieve
            rsps = await scu_move(server.port, implicit.ae_title, ident)
            assert rsps[-1][0].status == 0x0000, rsps[-1]
            assert set(implicit.files) == set(sops)
            for uid, path in implicit.files.items():
                got = dcmread(path)
                assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
                source = dcmread(archive.files[uid]) if uid == ct_uid else compressed[uid][1]
                if uid == ct_uid or "jpeg_dcmtk" not in compressed[uid][0]:
                    assert np.array_equal(got.pixel_array, source.pixel_array), uid
                else:  # lossy JPEG: decoded once by us; same geometry, now native RGB
                    assert got.pixel_array.shape == source.pixel_array.shape
                    assert got.PhotometricInterpretation == "RGB"

            rsps = await scu_move(server.port, jls.ae_title, ident)
            assert rsps[-1][0].status == 0x0000, rsps[-1]
            assert set(jls.files) == set(sops)
            for uid, path in jls.files.items():
                got = dcmread(path)
                assert got.file_meta.TransferSyntaxUID == JPEGLSLossless and got.SOPInstanceUID == uid
                source = dcmread(archive.files[uid]) if uid == ct_uid else compressed[uid][1]
                assert np.array_equal(got.pixel_array, source.pixel_array), uid  # the decoded source, exactly

            rsps = await scu_move(server.port, lossy.ae_title, ident)
            final, ds = rsps[-1]
            assert final.status == 0xA702
            assert counts(final)[1:] == (0, len(sops), 0)
            assert sorted(failed_list(ds)) == sorted(sops)
            assert lossy.files == {}

    asyncio.run(run())


def test_compressed_instance_sent_as_stored_when_accepted(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)
    jpeg = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")

    async def run() -> None:
        async with Server(settings) as server:
            ingest(server.store, jpeg)
            with storescp(tmp_path / "scp") as scp:
                register(settings, "STORESCP", scp.port)
                ds = dcmread(jpeg, stop_before_pixels=True)
                out = await movescu(server.port, "STORESCP", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={ds.StudyInstanceUID}"])
                assert "Received Final Move Response (Success)" in out, out
                (got,) = list(Path(scp.out_dir).glob("*.dcm"))
                assert read_part10_header(got).transfer_syntax == read_part10_header(jpeg).transfer_syntax
                assert dataset_bytes(got) == dataset_bytes(jpeg)

    asyncio.run(run())


def test_unreachable_destination_is_retried_then_fails_a702(tmp_path: Path) -> None:
    settings = server_settings(tmp_path, connect_attempts=3, retry_backoff=0.01)

    async def run() -> None:
        async with Server(settings) as server:
            archive = populate(server.store, tmp_path / "src", per_series=2)
            register(settings, "DOWN", free_port())  # nothing listens there
            a = study_of(archive, 0)
            rsps = await scu_move(server.port, "DOWN", identifier("STUDY", StudyInstanceUID=a))
            (final, ds), = rsps
            assert final.status == 0xA702
            assert "DOWN" in final["ErrorComment"]
            assert counts(final)[1:] == (0, len(archive.sops(study=a)), 0)
            assert sorted(failed_list(ds)) == sorted(archive.sops(study=a))

    asyncio.run(run())


def test_transient_rejection_is_retried(tmp_path: Path) -> None:
    settings = server_settings(tmp_path, connect_attempts=3, retry_backoff=0.01)
    attempts: list[str] = []

    def busy_once(assoc: object) -> object:
        attempts.append("x")
        return REJECT_CONGESTION if len(attempts) == 1 else None

    async def run() -> None:
        async with Server(settings) as server, CapturingDestination(tmp_path / "dest", on_associate=busy_once) as dest:
            archive = populate(server.store, tmp_path / "src", per_series=1)
            register(settings, dest.ae_title, dest.port)
            a = study_of(archive, 0)
            rsps = await scu_move(server.port, dest.ae_title, identifier("STUDY", StudyInstanceUID=a))
            assert rsps[-1][0].status == 0x0000
            assert set(dest.files) == archive.sops(study=a)

    asyncio.run(run())
    assert len(attempts) == 2


def test_cancel_stops_after_the_current_sub_operation(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)

    async def run() -> None:
        async with Server(settings) as server, CapturingDestination(tmp_path / "dest") as dest:
            archive = populate(server.store, tmp_path / "src", per_series=3)
            register(settings, dest.ae_title, dest.port)
            a = study_of(archive, 0)
            n = len(archive.sops(study=a))
            dest.gate = asyncio.Event()
            cancel = asyncio.Event()

            # Hold the first C-STORE until the server has received the C-CANCEL (seen on its spy bus),
            # so the outcome does not depend on timing.
            def on_dimse(event: object) -> None:
                if event.detail["command"].command_field == CommandField.C_CANCEL_RQ:  # type: ignore[attr-defined]
                    dest.gate.set()  # type: ignore[union-attr]

            server.bus.subscribe("dimse-received", on_dimse)

            async def release_after_cancel() -> None:
                await dest.stored.wait()  # first C-STORE arrived and is held
                cancel.set()

            releaser = asyncio.ensure_future(release_after_cancel())
            rsps = await scu_move(server.port, dest.ae_title, identifier("STUDY", StudyInstanceUID=a), cancel_after=cancel)
            await releaser
            final, _ = rsps[-1]
            assert final.status == 0xFE00
            remaining, completed, failed, warning = counts(final)
            assert completed == 1 and failed == 0 and remaining == n - 1
            assert len(dest.files) == 1

    asyncio.run(run())


@pytest.mark.parametrize(
    ("sop_class", "keys", "status"),
    [
        ("study", {"StudyInstanceUID": "1.2.3"}, 0xA900),  # no level
        ("study", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3/4"}, 0xC000),  # unusable UID ("1.2.03" is stored, so retrievable)
        ("study", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3", "PatientName": "DOE*"}, 0xA900),
        ("study", {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2.3"}, 0xA900),  # series key missing
        ("patient", {"QueryRetrieveLevel": "PATIENT", "PatientID": "P*"}, 0xA900),  # no wildcards
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom, decoding the identifier we made bad
def test_invalid_identifiers(tmp_path: Path, sop_class: str, keys: dict, status: int) -> None:
    from pydicom.dataset import Dataset

    settings = server_settings(tmp_path)
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID we send on purpose
        for k, v in keys.items():
            setattr(ds, k, v)

    async def run() -> list:
        async with Server(settings) as server, CapturingDestination(tmp_path / "dest") as dest:
            register(settings, dest.ae_title, dest.port)
            uid = PATIENT_ROOT_MOVE if sop_class == "patient" else "1.2.840.10008.5.1.4.1.2.2.2"
            first = await scu_move(server.port, dest.ae_title, ds, sop_class=uid)
            # the server goes on serving
            again = await scu_move(server.port, dest.ae_title, identifier("STUDY", StudyInstanceUID="1.2.3"))
            return first + again

    rsps = asyncio.run(run())
    assert rsps[0][0].status == status and rsps[0][0]["ErrorComment"]
    assert rsps[1][0].status == 0x0000 and counts(rsps[1][0])[1:] == (0, 0, 0)  # nothing matched


def test_retrieve_timeout_fails_what_is_left(tmp_path: Path) -> None:
    settings = server_settings(tmp_path, retrieve_timeout=1e-6)

    async def run() -> None:
        async with Server(settings) as server, CapturingDestination(tmp_path / "dest") as dest:
            archive = populate(server.store, tmp_path / "src", per_series=2)
            register(settings, dest.ae_title, dest.port)
            a = study_of(archive, 0)
            rsps = await scu_move(server.port, dest.ae_title, identifier("STUDY", StudyInstanceUID=a))
            final, ds = rsps[-1]
            assert final.status == 0xA702
            assert "timed out" in final["ErrorComment"]
            assert sorted(failed_list(ds)) == sorted(archive.sops(study=a))

    asyncio.run(run())


@pytest.mark.orthanc
def test_movescu_to_orthanc_and_orthanc_rest_move(tmp_path: Path) -> None:
    if not have_orthanc():
        pytest.skip("Orthanc is not installed")
    settings = server_settings(tmp_path)

    async def run() -> None:
        async with Server(settings) as server:
            archive = populate(server.store, tmp_path / "src")
            a, b = study_of(archive, 0), study_of(archive, 1)
            with orthanc(tmp_path / "orthanc", modalities={"pacs": ["RTPACS", "127.0.0.1", server.port]}) as peer:
                register(settings, "ORTHANC", peer.dicom_port)
                out = await movescu(server.port, "ORTHANC", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={a}"])
                assert "Received Final Move Response (Success)" in out, out
                assert peer.instance_count() == len(archive.sops(study=a))
                # Orthanc asks pacskit to move study B to Orthanc itself, through its REST API
                await asyncio.to_thread(peer.post, "/modalities/pacs/move", {
                    "Level": "Study", "Resources": [{"StudyInstanceUID": b}], "TargetAet": "ORTHANC"})
                assert peer.instance_count() == len(archive.sops(study=a)) + len(archive.sops(study=b))
                # ... and patient P2 (Orthanc sends QueryRetrieveLevel PATIENT on Study Root: accepted)
                await asyncio.to_thread(peer.post, "/modalities/pacs/move", {
                    "Level": "Patient", "Resources": [{"PatientID": "P2"}], "TargetAet": "ORTHANC"})
                assert peer.instance_count() == len(archive.sops())
                uids = set()
                for iid in await asyncio.to_thread(peer.get, "/instances"):
                    tags = await asyncio.to_thread(peer.get, f"/instances/{iid}/simplified-tags")
                    uids.add(tags["SOPInstanceUID"])
                assert uids == archive.sops()

    asyncio.run(run())


def test_missing_stored_file_fails_only_its_sub_operation(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)

    async def run() -> None:
        async with Server(settings) as server, CapturingDestination(tmp_path / "dest") as dest:
            archive = populate(server.store, tmp_path / "src", per_series=2)
            register(settings, dest.ae_title, dest.port)
            a = study_of(archive, 0)
            uids = sorted(archive.sops(study=a))
            Path(server.store.instance_path(uids[0])).unlink()  # lost behind the server's back
            rsps = await scu_move(server.port, dest.ae_title, identifier("STUDY", StudyInstanceUID=a))
            final, ds = rsps[-1]
            assert final.status == 0xB000
            assert counts(final)[1:] == (len(uids) - 1, 1, 0)
            assert failed_list(ds) == [uids[0]]
            assert "stored file missing" in final["ErrorComment"]
            assert set(dest.files) == set(uids[1:])

    asyncio.run(run())


def test_patient_id_in_the_identifier_character_set(tmp_path: Path) -> None:
    """A Latin-1 PatientID (ISO_IR 100 identifier) and a UTF-8 one (ISO_IR 192) select the patient
    whose instances carried the same name in their own character set."""
    from pacskit.testing.synth import make_instance

    settings = server_settings(tmp_path, pending_interval=3600)

    async def run() -> None:
        async with Server(settings) as server, CapturingDestination(tmp_path / "dest") as dest:
            register(settings, dest.ae_title, dest.port)
            latin = make_instance(tmp_path / "latin.dcm", patient_id="MÜLLER-7", attrs={"SpecificCharacterSet": "ISO_IR 100"})
            ingest(server.store, latin)
            other = make_instance(tmp_path / "other.dcm", patient_id="MULLER-7")
            ingest(server.store, other)
            for charset in ("ISO_IR 100", "ISO_IR 192"):
                ds = identifier("PATIENT", PatientID="MÜLLER-7", SpecificCharacterSet=charset)
                rsps = await scu_move(server.port, dest.ae_title, ds, sop_class=PATIENT_ROOT_MOVE)
                assert rsps[-1][0].status == 0x0000
                assert counts(rsps[-1][0])[1] == 1
            assert set(dest.files) == {str(dcmread(latin, stop_before_pixels=True).SOPInstanceUID)}

    asyncio.run(run())


def test_movescu_as_its_own_destination(tmp_path: Path) -> None:
    """movescu -aem MOVESCU +P <port>: the requestor receives the sub-operations itself, on a second
    association, while its C-MOVE is outstanding."""
    settings = server_settings(tmp_path)

    async def run() -> None:
        async with Server(settings) as server:
            archive = populate(server.store, tmp_path / "src", per_series=2)
            own_port = free_port()
            register(settings, "MOVESCU", own_port)
            a = study_of(archive, 0)
            out_dir = tmp_path / "own"
            out_dir.mkdir()
            text = await movescu(server.port, "MOVESCU", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={a}"],
                                 extra=["+P", str(own_port), "-od", str(out_dir)])
            assert "Received Final Move Response (Success)" in text, text
            got = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in out_dir.iterdir()}
            assert got == archive.sops(study=a)

    asyncio.run(run())


def test_patient_level_in_study_root_can_be_refused(tmp_path: Path) -> None:
    settings = server_settings(tmp_path, patient_level_in_study_root=False)

    async def run() -> list:
        async with Server(settings) as server, CapturingDestination(tmp_path / "dest") as dest:
            register(settings, dest.ae_title, dest.port)
            return await scu_move(server.port, dest.ae_title, identifier("PATIENT", PatientID="P1"))

    (final, _), = asyncio.run(run())
    assert final.status == 0xA900 and "Study Root" in final["ErrorComment"]


def test_concurrent_moves(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)

    async def run() -> None:
        async with Server(settings) as server, CapturingDestination(tmp_path / "dest") as dest:
            archive = populate(server.store, tmp_path / "src", per_series=3)
            register(settings, dest.ae_title, dest.port)
            studies = list(archive.studies)
            results = await asyncio.gather(*[
                scu_move(server.port, dest.ae_title, identifier("STUDY", StudyInstanceUID=s)) for s in studies])
            for s, rsps in zip(studies, results):
                assert rsps[-1][0].status == 0x0000
                assert counts(rsps[-1][0])[1] == len(archive.sops(study=s))
            assert set(dest.files) == archive.sops()
            assert len(dest.commands) == len(archive.sops())

    asyncio.run(run())
