"""StoreScu against DCMTK storescp and Orthanc: folders, datasets, conversion, parallel associations,
events, statuses and failures."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from pacskit.client import AssociationRequest, StoreScu, user_identity
from pacskit.net import AssociationAborted, AssociationRejected, ConnectionFailed, NetConfig
from pacskit.testing import free_port, have_orthanc, make_dataset, make_instance, make_series, orthanc, storescp

from ._peers import dcmqrscp, tool
from .conftest import address


@pytest.fixture
def scp(tmp_path):
    tool("storescp")
    with storescp(tmp_path / "out", extra_args=["-v"]) as peer:
        yield peer


def _received(peer) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in sorted(peer.out_dir.glob("*.dcm")))}


def test_folder_recursive_one_association_with_skips_and_events(tmp_path, scp):
    files = make_series(tmp_path / "in", 5)
    files.append(make_instance(tmp_path / "in" / "deeper" / "more" / "mr.dcm", modality="MR"))
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    scu = StoreScu(address(scp), calling_ae="PKSTORE")
    seen: dict[str, list] = {"before-associate": [], "sent": [], "response": [], "progress": []}
    for kind in seen:
        scu.on(kind, seen[kind].append)
    report = scu.store_sync(tmp_path / "in")
    assert report.ok, report.summary()
    assert len(report.succeeded) == 6 and not report.failed and not report.warnings
    assert [p.name for p, _ in report.skipped] == ["notes.txt"]
    received = _received(scp)
    for f in files:  # every instance arrived intact
        sent = pydicom.dcmread(f)
        assert received[str(sent.SOPInstanceUID)].PixelData == sent.PixelData
    assert scp.log_text().count("Association Acknowledged") == 1
    assert len(seen["before-associate"]) == 1 and isinstance(seen["before-associate"][0], AssociationRequest)
    assert len(seen["sent"]) == len(seen["response"]) == 6
    assert [p.done for p in seen["progress"]] == [1, 2, 3, 4, 5, 6]
    assert seen["progress"][-1].bytes_done == seen["progress"][-1].bytes_total > 6 * 8192
    assert all(e.result.status == 0 for e in seen["response"])


def test_kept_read_ahead_and_streamed_files_arrive_intact(tmp_path, scp, monkeypatch):
    """The three ways a file's bytes are sent: kept from the read of its File Meta (while the budget
    lasts), read ahead while the previous C-STORE is answered (past the budget), streamed (above
    256 KiB). Every instance arrives identical to what was sent, and none keeps its bytes after."""
    import pacskit.client.store as store_module

    small = make_series(tmp_path / "in", 6)
    big = make_instance(tmp_path / "in" / "zz-big.dcm", rows=512, cols=512)  # 512 KiB: streamed
    assert big.stat().st_size > store_module.WHOLE_FILE_LIMIT
    monkeypatch.setattr(store_module, "KEEP_READ_BYTES", 2 * small[0].stat().st_size)  # two are kept
    scu = StoreScu(address(scp))
    sent: list = []
    scu.on("sent", lambda e: sent.append(e.instance))
    report = scu.store_sync(tmp_path / "in")
    assert report.ok and len(report.succeeded) == 7, report.summary()
    received = _received(scp)
    for f in [*small, big]:
        original = pydicom.dcmread(f)
        assert received[str(original.SOPInstanceUID)] == original  # every element, pixel data included
    assert all(inst.data is None for inst in sent)


def test_datasets_and_parallel_associations(tmp_path):
    """Datasets over 3 associations at once (storescp --fork serves them concurrently)."""
    tool("storescp")
    datasets = [make_dataset(instance_number=n) for n in range(1, 9)]
    opened: list[AssociationRequest] = []
    with storescp(tmp_path / "out", extra_args=["--fork", "-v"]) as peer:
        scu = StoreScu(address(peer), associations=3)
        scu.on("before-associate", opened.append)
        report = asyncio.run(scu.store(datasets))
        assert len(report.succeeded) == 8, report.summary()
        assert set(_received(peer)) == {str(ds.SOPInstanceUID) for ds in datasets}
    assert len(opened) == 3


def test_converts_when_only_the_fallback_is_accepted(tmp_path):
    """storescp +xi accepts Implicit VR LE only: Explicit VR and RLE instances are re-encoded (RLE
    decompressed), same SOP Instance UID, same pixels."""
    tool("storescp")
    explicit = make_instance(tmp_path / "in" / "explicit.dcm", transfer_syntax=ExplicitVRLittleEndian)
    rle = make_instance(tmp_path / "in" / "rle.dcm", transfer_syntax=RLELossless)
    implicit = make_instance(tmp_path / "in" / "implicit.dcm", transfer_syntax=ImplicitVRLittleEndian)
    big_endian = make_instance(tmp_path / "in" / "big.dcm", transfer_syntax=ExplicitVRBigEndian)
    with storescp(tmp_path / "out", extra_args=["+xi"]) as peer:
        report = StoreScu(address(peer)).store_sync(tmp_path / "in")
        assert report.ok, [r.describe() for r in report.results]
        by_name = {r.instance.path.name: r for r in report.results}
        assert by_name["explicit.dcm"].converted and by_name["rle.dcm"].converted and by_name["big.dcm"].converted
        assert not by_name["implicit.dcm"].converted
        received = _received(peer)
    for path in (explicit, rle, implicit, big_endian):
        original = pydicom.dcmread(path)
        got = received[str(original.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert (got.pixel_array == original.pixel_array).all(), path.name  # same pixel values
    assert not list(Path(tempfile.gettempdir()).glob("pacskit-scu-*.dcm"))  # temporary files removed


def test_compressed_dataset_is_decompressed_when_only_the_fallback_is_accepted(tmp_path):
    tool("storescp")
    ds = pydicom.dcmread(make_instance(tmp_path / "rle.dcm", transfer_syntax=RLELossless))
    with storescp(tmp_path / "out", extra_args=["+xi"]) as peer:
        report = StoreScu(address(peer)).store_sync(ds)
        received = _received(peer)
    assert report.ok and report.results[0].converted
    assert ds.file_meta.TransferSyntaxUID == RLELossless  # the caller's dataset is untouched
    got = received[str(ds.SOPInstanceUID)]
    assert (got.pixel_array == ds.pixel_array).all()


def test_compressed_instance_goes_as_stored_when_accepted(tmp_path, scp):
    rle = make_instance(tmp_path / "rle.dcm", transfer_syntax=RLELossless)
    report = StoreScu(address(scp)).store_sync(rle)
    assert report.ok and report.results[0].sent_transfer_syntax == RLELossless and not report.results[0].converted
    received = pydicom.dcmread(next(scp.out_dir.glob("*.dcm")))
    assert received.file_meta.TransferSyntaxUID == RLELossless


def test_failure_status_is_reported_per_instance(tmp_path):
    """dcmqrscp with a 4 kB per-study quota: a header-only dataset is stored, an image is refused
    with 0xA700 (out of resources), and the report says which."""
    small, big = make_dataset(pixel_data=b""), make_dataset()
    with dcmqrscp(tmp_path / "qr", quota="4kb") as peer:
        report = StoreScu(address(peer)).store_sync([small, big])
    assert [r.instance.sop_instance_uid for r in report.succeeded] == [small.SOPInstanceUID]
    assert [(r.instance.sop_instance_uid, r.status) for r in report.failed] == [(big.SOPInstanceUID, 0xA700)]
    assert not report.ok and report.error is None and "1 failed" in report.summary()


def test_peer_abort_mid_transfer_marks_the_rest_unsent(tmp_path):
    tool("storescp")
    files = make_series(tmp_path / "in", 4)
    with storescp(tmp_path / "out", extra_args=["--abort-after"]) as peer:
        report = StoreScu(address(peer)).store_sync(files)
    assert isinstance(report.error, AssociationAborted)
    assert len(report.results) == 4 and all(r.status is None for r in report.results)
    assert "aborted" in report.results[0].message and not report.ok


def test_no_acceptable_context_is_reported_not_raised(tmp_path):
    """A read-only dcmqrscp storage area accepts no storage context."""
    path = make_instance(tmp_path / "x.dcm")
    with dcmqrscp(tmp_path / "qr", access="R") as peer:
        report = StoreScu(address(peer)).store_sync(path)
    assert report.results[0].status is None and "no presentation context" in report.results[0].message


def test_before_associate_edits_the_request(tmp_path, scp):
    """The hook changes our AE title, adds a user identity and drops the contexts: storescp logs the
    first two; the instance cannot be sent for want of a context."""
    path = make_instance(tmp_path / "x.dcm")
    with storescp(tmp_path / "out2", extra_args=["-d"]) as peer:
        scu = StoreScu(address(peer))

        def edit(request: AssociationRequest) -> None:
            request.calling_ae = "EDITED_AE"
            request.user_identity = user_identity("alice", "secret")

        scu.on("before-associate", edit)
        assert scu.store_sync(path).ok
        log = peer.log_text()
        assert "EDITED_AE" in log and "alice" in log

        scu2 = StoreScu(address(peer))
        scu2.on("before-associate", lambda rq: setattr(rq, "contexts", [c for c in rq.contexts if c.transfer_syntaxes == [ImplicitVRLittleEndian]]))
        report = scu2.store_sync(path)  # only the Implicit fallback was proposed: converted
        assert report.ok and report.results[0].converted


def test_connection_refused_and_rejected(tmp_path):
    tool("storescp")
    path = make_instance(tmp_path / "x.dcm")
    with pytest.raises(ConnectionFailed, match="refused"):
        StoreScu(f"NOBODY@127.0.0.1:{free_port()}", config=NetConfig(acse_timeout=5)).store_sync(path)
    with storescp(tmp_path / "out", extra_args=["--refuse"]) as peer:
        with pytest.raises(AssociationRejected) as info:
            StoreScu(address(peer)).store_sync(path)
    assert "rejected" in str(info.value)


def test_named_files_that_cannot_be_sent_are_failures(tmp_path, scp):
    good = make_instance(tmp_path / "good.dcm")
    (tmp_path / "notes.txt").write_text("not DICOM")
    report = StoreScu(address(scp)).store_sync([good, tmp_path / "notes.txt", tmp_path / "typo.dcm"])
    assert len(report.succeeded) == 1 and not report.skipped and not report.ok
    assert sorted(r.instance.path.name for r in report.failed) == ["notes.txt", "typo.dcm"]
    assert all(r.status is None and r.message for r in report.failed)


def test_sync_wrapper_refuses_a_running_loop(tmp_path, scp):
    async def inside() -> None:
        StoreScu(address(scp)).store_sync(tmp_path)

    with pytest.raises(RuntimeError, match="await"):
        asyncio.run(inside())


@pytest.mark.orthanc
@pytest.mark.skipif(not have_orthanc(), reason="Orthanc is not installed")
def test_store_to_orthanc_in_parallel(tmp_path):
    files = make_series(tmp_path / "in", 12)
    with orthanc(tmp_path / "orthanc") as peer:
        report = StoreScu(f"ORTHANC@127.0.0.1:{peer.port}", associations=2).store_sync(files)
        assert len(report.succeeded) == 12, report.summary()
        assert peer.instance_count() == 12
        again = StoreScu(f"ORTHANC@127.0.0.1:{peer.port}").store_sync(files[:1])  # duplicate: Orthanc accepts
        assert again.ok


def test_big_file_is_streamed_not_loaded(tmp_path, scp):
    """A 48 MB instance goes out in PDU-sized pieces: Python allocations stay far below its size."""
    import tracemalloc

    from pacskit.testing import make_large_instance

    big = make_large_instance(tmp_path / "big.dcm", 48 * 1024 * 1024)
    tracemalloc.start()
    try:
        report = StoreScu(address(scp)).store_sync(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok, report.summary()
    assert peak < 8 * 1024 * 1024, f"peak Python allocations {peak} bytes"
    received = next(scp.out_dir.glob("*.dcm"))
    assert received.stat().st_size >= big.stat().st_size - 1024


def test_more_than_128_contexts_are_split_over_associations(tmp_path):
    """70 SOP classes need 140 contexts: two consecutive associations, grouped by SOP class."""
    tool("storescp")
    datasets = [make_dataset(sop_class_uid=f"1.2.826.0.1.3680043.8.498.999.{n}", pixel_data=b"") for n in range(70)]
    opened: list[AssociationRequest] = []
    with storescp(tmp_path / "out", extra_args=["--promiscuous"]) as peer:
        scu = StoreScu(address(peer))
        scu.on("before-associate", opened.append)
        report = scu.store_sync(datasets)
    assert len(report.succeeded) == 70, [r.describe() for r in report.failed][:3]
    assert [len(rq.contexts) for rq in opened] == [128, 12]


def test_tls_to_storescp(tmp_path):
    """DCMTK storescp +tls with pynetdicom's test certificate; we verify it (CA file, host name)."""
    import ssl
    from pathlib import Path

    import pynetdicom

    tool("storescp")
    certs = Path(pynetdicom.__file__).parent / "tests" / "cert_files"
    path = make_instance(tmp_path / "x.dcm")
    context = ssl.create_default_context(cafile=str(certs / "server.crt"))
    with storescp(tmp_path / "out", extra_args=["+tls", str(certs / "server.key"), str(certs / "server.crt"), "-ic"]) as peer:
        report = StoreScu(address(peer), ssl=context, server_hostname="pynetdicom.test").store_sync(path)
        assert report.ok
        with pytest.raises(ConnectionFailed):  # the certificate is not for 127.0.0.1
            StoreScu(address(peer), ssl=context).store_sync(path)
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 1
