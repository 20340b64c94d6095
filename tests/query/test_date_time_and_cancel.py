"""Date and time matching (issue 15 item 8) and an early C-CANCEL (item 9), each against the peers.

Item 8: ``StudyDate=20191231-20200101`` with ``StudyTime=1200-1300`` matches the time range within each
day (PS3.4 C.2.2.2.5.1): DCMTK's dcmqrscp and Orthanc return the 12:xx studies only, and so must we,
unless the peer negotiated combined date-time matching (SOP Class Extended Negotiation byte 2): then
the two are one range, from 31 December 12:00 to 1 January 13:00.

Item 9: a C-CANCEL sent right behind its C-FIND (in the same write, before the SCP has started the
request) must end it with 0xFE00, as dcmqrscp answers; it used to be dropped and every match was
sent with a final Success.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from pacskit.net import CommandField, EventBus, RequestedContext, connect, dimse
from pacskit.dicom.codec import encode_dataset
from pacskit.net import events as ev
from pacskit.config.aetitles import AE_FILE, FileAeRegistry, RemoteAE
from pacskit.server.server import Server
from pacskit.testing.peers import (
    Peer,
    count_store_successes,
    have_dcmtk,
    run_storescu,
    storescp,
)
from pacskit.testing.synth import make_instance
from pacskit.testing.server import running_server

from ._server import AE, findscu, write_settings
from .test_differential import QRSCP, dcmqrscp

pytestmark = pytest.mark.dcmtk

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
ROOT = "1.2.826.0.1.3680043.9.7778."
#: name -> (StudyDate, StudyTime)
STUDIES = {
    "dec31-0800": ("20191231", "080000"),
    "dec31-1230": ("20191231", "123000"),
    "dec31-2359": ("20191231", "235900"),
    "jan01-0000": ("20200101", "000000"),
    "jan01-1200": ("20200101", "120000"),
    "jan01-1330": ("20200101", "133000"),
    "jan02-1230": ("20200102", "123000"),
}
UIDS = {name: f"{ROOT}{n + 1}" for n, name in enumerate(STUDIES)}
NAMES = {uid: name for name, uid in UIDS.items()}
QUERY = ["QueryRetrieveLevel=STUDY", "PatientID=DT*", "StudyDate=20191231-20200101", "StudyTime=1200-1300",
         "StudyInstanceUID"]
EACH_DAY = {"dec31-1230", "jan01-1200"}
COMBINED = {"dec31-1230", "dec31-2359", "jan01-0000", "jan01-1200"}
CANCEL_STUDIES = 40  # matches of the cancelled query: more than one page of answers


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("datetime")
    out = [
        make_instance(folder / f"{name}.dcm", patient_id=f"DT{n}", study_uid=UIDS[name],
                      attrs={"StudyDate": date, "StudyTime": time})
        for n, (name, (date, time)) in enumerate(STUDIES.items())
    ]
    out += [make_instance(folder / f"cancel{n}.dcm", patient_id=f"CX{n:03d}") for n in range(CANCEL_STUDIES)]
    return out


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """A DCMTK storescp: the C-MOVE destination DEST of the pacskit server."""
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    with storescp(tmp_path_factory.mktemp("dest"), ae_title="DEST") as peer:
        yield peer


@pytest.fixture(scope="module")
def peers(files: list[Path], receiver: Peer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int]]:
    """pacskit and dcmqrscp holding the same instances (stored with DCMTK storescu)."""
    folder = tmp_path_factory.mktemp("peers")
    settings = write_settings(folder / "pacskit")
    FileAeRegistry(settings / AE_FILE).add(RemoteAE(title="DEST", host="127.0.0.1", port=receiver.port))
    with running_server(settings) as server, dcmqrscp(folder / "dcmqrscp") as qr:
        for port, called in ((server.port, AE), (qr, QRSCP)):
            out = run_storescu("127.0.0.1", port, files, called=called, calling="MODALITY")
            assert count_store_successes(out) == len(files), out.stdout[-3000:]
        yield server, qr


def _names(port: int, called: str, out: Path) -> tuple[set[str], str]:
    answers, output = findscu(port, "-S", QUERY, out, called=called)
    return {NAMES.get(str(ds.StudyInstanceUID), "?") for ds in answers}, output


def test_date_and_time_match_within_each_day_as_dcmqrscp(peers: tuple[Server, int], tmp_path: Path) -> None:
    server, qr = peers
    ours, out = _names(server.port, AE, tmp_path / "pacskit")
    theirs, out_theirs = _names(qr, QRSCP, tmp_path / "dcmqrscp")
    assert "Received Final Find Response (Success)" in out_theirs, out_theirs[-2000:]
    assert theirs == EACH_DAY
    assert ours == theirs, out[-2000:]


@pytest.mark.orthanc
def test_date_and_time_match_within_each_day_as_orthanc(files: list[Path], peers: tuple[Server, int],
                                                        tmp_path: Path) -> None:
    from pacskit.testing.peers import have_orthanc, orthanc

    if not have_orthanc():
        pytest.skip("Orthanc is not installed")
    server, _ = peers
    with orthanc(tmp_path / "orthanc") as peer:
        out = run_storescu("127.0.0.1", peer.dicom_port, files, called=peer.ae_title, calling="MODALITY")
        assert count_store_successes(out) == len(files), out.stdout[-3000:]
        theirs, _ = _names(peer.dicom_port, peer.ae_title, tmp_path / "orthanc")
    ours, _ = _names(server.port, AE, tmp_path / "pacskit")
    assert theirs == EACH_DAY and ours == theirs


def _identifier(keys: list[str]) -> Dataset:
    ds = Dataset()
    for key in keys:
        keyword, _, value = key.partition("=")
        setattr(ds, keyword, value)
    return ds


async def _find(port: int, called: str, keys: list[str], *, combined: bool) -> tuple[set[str], int]:
    """C-FIND with pacskit's engine, asking for combined date-time matching when ``combined``;
    returns (names, final status) and checks the negotiation answer."""
    negotiation = {STUDY_ROOT_FIND: b"\x00\x01"} if combined else None
    assoc = await connect("127.0.0.1", port, called_ae=called, calling_ae="DTSCU",
                          contexts=[RequestedContext(STUDY_ROOT_FIND)], extended_negotiation=negotiation)
    async with assoc:
        if combined:
            assert assoc.extended_negotiation_response.get(STUDY_ROOT_FIND, b"")[1:2] == b"\x01"
        names: set[str] = set()
        status = -1
        async for status, ds in assoc.find(STUDY_ROOT_FIND, _identifier(keys)):
            if ds is not None:
                names.add(NAMES.get(str(ds.StudyInstanceUID), "?"))
    return names, status


def test_combined_date_time_only_when_negotiated(peers: tuple[Server, int]) -> None:
    server, _ = peers
    plain = asyncio.run(_find(server.port, AE, QUERY, combined=False))
    combined = asyncio.run(_find(server.port, AE, QUERY, combined=True))
    assert plain == (EACH_DAY, 0x0000)
    assert combined == (COMBINED, 0x0000)


async def _request_then_cancel(port: int, called: str, sop_class: str, rsp_field: int, message_id: int,
                               request: dimse.Command, identifier: Dataset) -> list[dimse.Command]:
    """``request`` (message ``message_id``) and its C-CANCEL in one write; the response command sets."""
    bus = EventBus()
    responses: list[dimse.Command] = []
    final = asyncio.Event()

    def on_received(event: ev.SpyEvent) -> None:
        command = event.detail["command"]
        if command.command_field == rsp_field:
            responses.append(command)
            if command.status not in (0xFF00, 0xFF01):
                final.set()

    bus.subscribe(ev.DIMSE_RECEIVED, on_received)
    assoc = await connect("127.0.0.1", port, called_ae=called, calling_ae="CANCELSCU",
                          contexts=[RequestedContext(sop_class)], bus=bus)
    async with assoc:
        ctx = assoc.find_context(sop_class)
        # both are corked until the end of this event-loop turn, so they leave in one write
        await assoc.send_message(ctx.id, request, encode_dataset(identifier, ctx.transfer_syntax))
        await assoc.cancel(message_id, ctx)
        await asyncio.wait_for(final.wait(), 60)
    return responses


async def _find_then_cancel(port: int, called: str) -> list[tuple[int, bool]]:
    """C-FIND of every CX* study and its C-CANCEL in one write; the responses as (status, has dataset)."""
    identifier = _identifier(["QueryRetrieveLevel=STUDY", "PatientID=CX*", "StudyInstanceUID"])
    request = dimse.request_command(CommandField.C_FIND_RQ, 7, STUDY_ROOT_FIND, has_dataset=True, Priority=0)
    responses = await _request_then_cancel(port, called, STUDY_ROOT_FIND, CommandField.C_FIND_RSP, 7,
                                           request, identifier)
    return [(command.status, command.has_dataset) for command in responses]


def test_c_cancel_right_behind_its_c_find_is_honoured_as_dcmqrscp(peers: tuple[Server, int]) -> None:
    server, qr = peers
    theirs = asyncio.run(_find_then_cancel(qr, QRSCP))
    ours = asyncio.run(_find_then_cancel(server.port, AE))
    assert theirs[-1][0] == 0xFE00, theirs
    assert ours[-1][0] == 0xFE00, ours
    assert len(ours) - 1 < CANCEL_STUDIES  # not every match delivered


async def _move_then_cancel(port: int, called: str, studies: list[str]) -> list[dimse.Command]:
    """C-MOVE of every CX* study to DEST and its C-CANCEL in one write; the response command sets."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = studies
    request = dimse.request_command(CommandField.C_MOVE_RQ, 9, STUDY_ROOT_MOVE, has_dataset=True, Priority=0,
                                    MoveDestination="DEST")
    return await _request_then_cancel(port, called, STUDY_ROOT_MOVE, CommandField.C_MOVE_RSP, 9,
                                      request, identifier)


def test_c_cancel_right_behind_its_c_move_is_honoured(peers: tuple[Server, int], receiver: Peer,
                                                      tmp_path: Path) -> None:
    """Nothing is moved, the final status is Cancel with every sub-operation remaining."""
    server, _ = peers
    answers, _ = findscu(server.port, "-S", ["QueryRetrieveLevel=STUDY", "PatientID=CX*", "StudyInstanceUID"],
                         tmp_path / "find")
    studies = [str(ds.StudyInstanceUID) for ds in answers]
    assert len(studies) == CANCEL_STUDIES
    before = len(list(receiver.out_dir.glob("*.dcm")))  # type: ignore[union-attr]
    responses = asyncio.run(_move_then_cancel(server.port, AE, studies))
    final = responses[-1]
    assert final.status == 0xFE00, final
    assert final.get("NumberOfCompletedSuboperations", 0) == 0
    assert final.get("NumberOfRemainingSuboperations") == CANCEL_STUDIES
    assert len(list(receiver.out_dir.glob("*.dcm"))) == before  # type: ignore[union-attr]
