"""DCMTK as the peer: echoscu / storescu -> pacskit acceptor, pacskit requestor -> storescp / dcmqrscp."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest
from pydicom import dcmread

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import AssociationRejected, NetConfig, RequestedContext, SupportedContext, connect
from pacskit.dicom.part10 import read_part10_header

from ._util import (
    AE,
    LOCALHOST,
    StoreLog,
    dataset_bytes,
    dcmtk,
    free_port,
    leftover_files,
    run_tool,
    serving,
    spawned,
    dcmtk_env,
    store_successes,
    sample_file,
)

pytestmark = pytest.mark.dcmtk

# pydicom test files DCMTK sends without re-encoding (no undefined-length sequences, no trailing
# padding), with the storescu option that proposes exactly their transfer syntax first.
BYTE_STABLE_FILES = {
    "SC_rgb_small_odd.dcm": "-xe",  # Explicit VR Little Endian, odd-sized pixel data
    "test-SR.dcm": "-xe",  # Explicit VR Little Endian, nested sequences
    "ExplVR_BigEnd.dcm": "-xb",  # Explicit VR Big Endian
    "MR_small_implicit.dcm": "-xi",  # Implicit VR Little Endian
    "rtplan.dcm": "-xi",  # Implicit VR Little Endian, RT Plan
    "MR_small_bigendian.dcm": "-xb",  # Explicit VR Big Endian
    "SC_rgb_jpeg_dcmtk.dcm": "-xy",  # JPEG Baseline (encapsulated)
    "SC_rgb_jpeg_gdcm.dcm": "-xs",  # JPEG Lossless SV1
    "SC_rgb_rle.dcm": "-xr",  # RLE Lossless
    "GDCMJ2K_TextGBR.dcm": "-xv",  # JPEG 2000 Lossless
    "JPEGLSNearLossless_08.dcm": "-xu",  # JPEG-LS near-lossless
}


def test_echoscu_success():
    async def main():
        log = StoreLog()
        async with serving(log.services()) as acceptor:
            rc, out = await run_tool(dcmtk("echoscu"), "-v", "-aec", AE, "-aet", "ECHOER", LOCALHOST, str(acceptor.port))
        return rc, out, log.echoes

    rc, out, echoes = asyncio.run(main())
    assert rc == 0, out
    assert "Received Echo Response (Success)" in out
    assert echoes == 1


def test_echoscu_wrong_called_ae_is_rejected(caplog):
    caplog.set_level(logging.WARNING, logger="pacskit.net")

    async def main():
        log = StoreLog()
        async with serving(log.services()) as acceptor:
            rc, out = await run_tool(dcmtk("echoscu"), "-v", "-aec", "NOT_PACSKIT", LOCALHOST, str(acceptor.port))
            # still serving afterwards
            rc2, out2 = await run_tool(dcmtk("echoscu"), "-v", "-aec", AE, LOCALHOST, str(acceptor.port))
        return rc, out, rc2, out2, log.echoes

    rc, out, rc2, out2, echoes = asyncio.run(main())
    assert rc != 0
    assert "Association Rejected" in out
    assert "Called AE Title Not Recognized" in out
    assert rc2 == 0, out2
    assert echoes == 1
    assert any("called AE title not recognized" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", sorted(BYTE_STABLE_FILES))
def test_storescu_dataset_arrives_byte_identical(name, tmp_path):
    source = sample_file(name)
    option = BYTE_STABLE_FILES[name]
    info = read_part10_header(source)

    async def main():
        log = StoreLog(tmp_path)
        async with serving(log.services(), config=NetConfig(temp_dir=str(tmp_path))) as acceptor:
            rc, out = await run_tool(dcmtk("storescu"), "-v", option, "-aec", AE, LOCALHOST, str(acceptor.port), source)
        return rc, out, log

    rc, out, log = asyncio.run(main())
    assert rc == 0, out
    assert store_successes(out) == 1, out
    ts_name_lines = [line for line in out.splitlines() if "Converting transfer syntax" in line]
    assert len(ts_name_lines) == 1
    before, after = ts_name_lines[0].split(":", 2)[-1].split("->")
    assert before.strip() == after.strip(), f"storescu converted: {ts_name_lines[0]}"
    [stored] = log.stored
    assert stored["transfer_syntax"] == info.transfer_syntax
    assert stored["sop_class"] == info.sop_class_uid
    # (rtplan.dcm's meta and dataset disagree on the instance UID; storescu sends the dataset's)
    assert stored["sop_instance"] == dcmread(source, stop_before_pixels=True).SOPInstanceUID
    assert stored["calling_ae"] == "STORESCU"
    assert dataset_bytes(stored["path"]) == dataset_bytes(source)
    # the received file is a valid Part 10 file whose meta matches what was negotiated
    ds = dcmread(stored["path"])
    assert ds.file_meta.TransferSyntaxUID == info.transfer_syntax
    assert ds.file_meta.MediaStorageSOPInstanceUID == stored["sop_instance"]
    assert ds.SOPInstanceUID == stored["sop_instance"]
    # nothing but the claimed file in the temp dir
    assert leftover_files(tmp_path) == [stored["path"].name]


def _strip_trailing_padding(data: bytes) -> bytes:
    """Remove a final Data Set Trailing Padding (FFFC,FFFC) element, Explicit VR Little Endian."""
    pos = 0
    last = None
    while pos < len(data):
        group, elem, vr = struct.unpack_from("<HH2s", data, pos)
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
            (length,) = struct.unpack_from("<L", data, pos + 8)
            header = 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            header = 8
        if length == 0xFFFFFFFF:
            raise AssertionError("undefined length in test file")
        last = (group, elem, pos)
        pos += header + length
    assert last is not None and (last[0], last[1]) == (0xFFFC, 0xFFFC)
    return data[: last[2]]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_storescu_padded_files_arrive_as_sent(name, tmp_path):
    """DCMTK drops Data Set Trailing Padding when it sends; everything before it arrives byte for byte."""
    source = sample_file(name)

    async def main():
        log = StoreLog(tmp_path)
        async with serving(log.services(), config=NetConfig(temp_dir=str(tmp_path))) as acceptor:
            rc, out = await run_tool(dcmtk("storescu"), "-v", "-xe", "-aec", AE, LOCALHOST, str(acceptor.port), source)
        return rc, out, log

    rc, out, log = asyncio.run(main())
    assert store_successes(out) == 1, out
    [stored] = log.stored
    assert dataset_bytes(stored["path"]) == _strip_trailing_padding(dataset_bytes(source))


def test_storescu_several_files_on_one_association(tmp_path):
    names = ["MR_small_implicit.dcm", "rtplan.dcm", "rtdose.dcm"]
    sources = [sample_file(n) for n in names]

    async def main():
        log = StoreLog(tmp_path)
        async with serving(log.services(), config=NetConfig(temp_dir=str(tmp_path))) as acceptor:
            rc, out = await run_tool(dcmtk("storescu"), "-v", "-xi", "-aec", AE, LOCALHOST, str(acceptor.port), *sources)
        return rc, out, log

    rc, out, log = asyncio.run(main())
    assert rc == 0, out
    assert store_successes(out) == 3, out
    assert out.count("Requesting Association") == 1
    by_uid = {s["sop_instance"]: s for s in log.stored}
    for source in sources:
        uid = dcmread(source, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(by_uid[uid]["path"]) == dataset_bytes(source)


def test_no_acceptable_presentation_context(caplog, tmp_path):
    caplog.set_level(logging.WARNING, logger="pacskit.net")
    source = sample_file("MR_small.dcm")

    async def main():
        log = StoreLog(tmp_path)
        contexts = [SupportedContext(VERIFICATION_SOP_CLASS), SupportedContext("1.2.840.10008.5.1.4.1.1.2")]  # CT only
        async with serving(log.services(), contexts, config=NetConfig(temp_dir=str(tmp_path))) as acceptor:
            rc, out = await run_tool(dcmtk("storescu"), "-v", "-R", "-aec", AE, LOCALHOST, str(acceptor.port), source)
            rc2, out2 = await run_tool(dcmtk("echoscu"), "-v", "-aec", AE, LOCALHOST, str(acceptor.port))
            alive = len(acceptor.associations)
        return rc, out, rc2, out2, log, alive

    rc, out, rc2, out2, log, alive = asyncio.run(main())
    assert store_successes(out) == 0
    assert "No Acceptable Presentation Contexts" in out or "No presentation context" in out, out
    assert log.calls == 0
    assert rc2 == 0 and "Received Echo Response (Success)" in out2, out2
    assert log.echoes == 1
    assert any("no acceptable presentation context" in r.getMessage() for r in caplog.records)
    assert leftover_files(tmp_path) == []


# --------------------------------------------------------------------------- pacskit requestor -> DCMTK


def test_requestor_to_storescp(tmp_path):
    names = ["CT_small.dcm", "MR_small_implicit.dcm", "ExplVR_BigEnd.dcm", "SC_rgb_jpeg_dcmtk.dcm", "test-SR.dcm"]
    sources = [sample_file(n) for n in names]
    out_dir = tmp_path / "received"
    out_dir.mkdir()
    port = free_port()
    argv = [dcmtk("storescp"), "-aet", "STORESCP", "-od", str(out_dir), "+xa", "-dhl", str(port)]

    async def main():
        contexts = [RequestedContext(VERIFICATION_SOP_CLASS)]
        for source in sources:
            info = read_part10_header(source)
            contexts.append(RequestedContext(info.sop_class_uid, (info.transfer_syntax,)))
        statuses = []
        async with await connect(LOCALHOST, port, called_ae="STORESCP", calling_ae="PKSCU", contexts=contexts) as assoc:
            echo = await assoc.echo()
            for source in sources:
                rsp = await assoc.store(source)
                statuses.append(rsp.status)
        return echo, statuses

    with spawned(argv, port, env=dcmtk_env(), log=tmp_path / "storescp.log"):
        echo, statuses = asyncio.run(main())
    assert echo == 0
    assert statuses == [0] * len(sources)
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out_dir.iterdir()}
    assert len(received) == len(sources)
    for source in sources:
        original = dcmread(source)
        path = received[original.SOPInstanceUID]
        got = dcmread(path)
        assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        expected = {e.tag: e.value for e in original if e.tag != 0xFFFCFFFC}
        assert {e.tag: e.value for e in got} == expected
        assert got.file_meta.SourceApplicationEntityTitle.strip() == "PKSCU"


def test_storescp_refusal_raises_association_rejected(tmp_path):
    port = free_port()
    argv = [dcmtk("storescp"), "-aet", "STORESCP", "-od", str(tmp_path), "--refuse", str(port)]

    async def main():
        with pytest.raises(AssociationRejected) as err:
            await connect(LOCALHOST, port, called_ae="STORESCP", contexts=[RequestedContext(VERIFICATION_SOP_CLASS)])
        return err.value

    with spawned(argv, port, env=dcmtk_env(), log=tmp_path / "storescp.log"):
        exc = asyncio.run(main())
    assert (exc.result, exc.source, exc.reason) == (1, 1, 1)
    assert "no reason given" in str(exc)


def test_dcmqrscp_rejects_unknown_called_ae(tmp_path):
    """storescp does not check the called AE title; dcmqrscp does (from its configuration file)."""
    port = free_port()
    db = tmp_path / "db"
    db.mkdir()
    config = tmp_path / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 4\n"
        "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nQRSCP {db} RW (10, 64mb) ANY\nAETable END\n"
    )
    argv = [dcmtk("dcmqrscp"), "-c", str(config), str(port)]

    async def main():
        with pytest.raises(AssociationRejected) as err:
            await connect(LOCALHOST, port, called_ae="WRONG_AE", contexts=[RequestedContext(VERIFICATION_SOP_CLASS)])
        async with await connect(LOCALHOST, port, called_ae="QRSCP", contexts=[RequestedContext(VERIFICATION_SOP_CLASS)]) as assoc:
            status = await assoc.echo()
        return err.value, status

    with spawned(argv, port, env=dcmtk_env(), log=tmp_path / "dcmqrscp.log"):
        exc, status = asyncio.run(main())
    assert (exc.result, exc.source, exc.reason) == (1, 1, 7)
    assert "called AE title not recognized" in exc.description
    assert status == 0
