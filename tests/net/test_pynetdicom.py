"""pynetdicom as the peer, both ways: pynetdicom SCU -> pacskit acceptor, pacskit requestor -> pynetdicom SCP.

pynetdicom runs in this process: its SCU calls in a worker thread (``asyncio.to_thread``), its SCP as a
threaded server on 127.0.0.1 port 0. Includes the peer maximum PDU cases (4,096 and 0 = unlimited).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES as PND_ALL_TS, _config as pnd_config, evt
from pynetdicom.pdu_primitives import AsynchronousOperationsWindowNegotiation, UserIdentityNegotiation

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import (
    AssociationRejected,
    CommandField,
    EventBus,
    NetConfig,
    RequestedContext,
    Services,
    connect,
)
from pacskit.net import events as ev
from pacskit.net import pdu
from pacskit.dicom.part10 import read_part10_header

from ._util import (
    AE as PACSKIT_AE,
    LOCALHOST,
    SECONDARY_CAPTURE,
    StoreLog,
    dataset_bytes,
    leftover_files,
    make_instance,
    sample_file,
    serving,
)

pytestmark = pytest.mark.pynetdicom

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


@contextlib.contextmanager
def chunked_pynetdicom_store() -> Iterator[None]:
    """Make pynetdicom send a file's dataset bytes as they are on disk (no decode / re-encode)."""
    old = pnd_config.STORE_SEND_CHUNKED_DATASET
    pnd_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        pnd_config.STORE_SEND_CHUNKED_DATASET = old


# --------------------------------------------------------------------------- pynetdicom SCU -> pacskit


def _pynd_scu(
    port: int,
    work: Any,
    *,
    max_pdu: int = 16382,
    contexts: list[tuple[str, list[str]]] | None = None,
    ext_neg: list[Any] | None = None,
    evt_handlers: list[Any] | None = None,
) -> Any:
    """Associate with pynetdicom and run ``work(assoc)``; returns (work result, acceptor-side info)."""
    ae = AE(ae_title="PYND_SCU")
    ae.maximum_pdu_size = max_pdu
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for abstract, syntaxes in contexts or [(VERIFICATION_SOP_CLASS, [ImplicitVRLittleEndian])]:
        ae.add_requested_context(abstract, syntaxes)
    assoc = ae.associate(LOCALHOST, port, ae_title=PACSKIT_AE, ext_neg=ext_neg, evt_handlers=evt_handlers)
    try:
        if not assoc.is_established:
            return None, assoc
        result = work(assoc)
        assoc.release()
        return result, assoc
    finally:
        if assoc.is_alive():
            assoc.abort()
        ae.shutdown()


def test_pynetdicom_echo_and_store_to_acceptor(tmp_path):
    source = sample_file("CT_small.dcm")
    info = read_part10_header(source)

    def work(assoc):
        echo = assoc.send_c_echo()
        with chunked_pynetdicom_store():
            store = assoc.send_c_store(source)
        return echo.Status, store.Status

    async def main():
        log = StoreLog(tmp_path)
        async with serving(log.services(), config=NetConfig(temp_dir=str(tmp_path))) as acceptor:
            result, _ = await asyncio.to_thread(
                _pynd_scu, acceptor.port, work, contexts=[(VERIFICATION_SOP_CLASS, [ImplicitVRLittleEndian]), (CT, [info.transfer_syntax])]
            )
        return result, log

    result, log = asyncio.run(main())
    assert result == (0x0000, 0x0000)
    assert log.echoes == 1
    [stored] = log.stored
    assert stored["calling_ae"] == "PYND_SCU"
    assert stored["sop_instance"] == info.sop_instance_uid
    assert dataset_bytes(stored["path"]) == dataset_bytes(source)
    assert leftover_files(tmp_path) == [stored["path"].name]


def test_pynetdicom_user_identity_and_async_ops_negotiation():
    seen: dict[str, Any] = {}

    def on_associate(assoc):
        seen["user_identity"] = assoc.user_identity
        seen["async_ops"] = assoc.requested.user_info.async_ops
        return None

    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.primary_field = b"alice"
    identity.secondary_field = b"s3cret"
    identity.positive_response_requested = True
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 5
    window.maximum_number_operations_performed = 5

    def work(assoc):
        return assoc.send_c_echo().Status

    async def main():
        log = StoreLog()
        async with serving(log.services(), on_associate=on_associate) as acceptor:
            return await asyncio.to_thread(_pynd_scu, acceptor.port, work, ext_neg=[identity, window])

    status, assoc = asyncio.run(main())
    assert status == 0x0000
    assert seen["user_identity"] == pdu.UserIdentityRQ(2, True, b"alice", b"s3cret")
    assert seen["async_ops"] == (5, 5)
    # our A-ASSOCIATE-AC answered both: an (empty) user identity response and a 1/1 window
    acceptor_info = assoc.acceptor
    assert acceptor_info.asynchronous_operations == (1, 1)
    assert acceptor_info.user_identity is not None
    assert acceptor_info.user_identity.server_response == b""


def test_pynetdicom_user_identity_refused_by_hook():
    from pacskit.net import Reject

    def on_associate(assoc):
        if assoc.user_identity is None or assoc.user_identity.primary != b"alice":
            return Reject(1, 1, 1)
        return None

    identity = UserIdentityNegotiation()
    identity.user_identity_type = 1
    identity.primary_field = b"mallory"
    received: list[Any] = []

    def on_pdu_recv(event):
        received.append(event.pdu)

    async def main():
        async with serving(StoreLog().services(), on_associate=on_associate) as acceptor:
            return await asyncio.to_thread(
                _pynd_scu, acceptor.port, lambda a: None, ext_neg=[identity], evt_handlers=[(evt.EVT_PDU_RECV, on_pdu_recv)]
            )

    result, assoc = asyncio.run(main())
    assert result is None
    assert not assoc.is_established
    # What pynetdicom received is checked at the PDU level: when the A-ASSOCIATE-RJ comes back very
    # fast, pynetdicom 3.0 sometimes sees its own socket closed (after the RJ) before its ACSE code looks
    # at it, and reports "aborted" instead of "rejected" (a race inside pynetdicom).
    [rj] = [p for p in received if type(p).__name__ == "A_ASSOCIATE_RJ"]
    assert (rj.result, rj.source, rj.reason_diagnostic) == (1, 1, 1)
    assert assoc.is_rejected or assoc.is_aborted


@pytest.mark.parametrize("max_pdu", [4096, 0])
def test_pynetdicom_scu_with_small_or_unlimited_max_pdu(max_pdu, tmp_path):
    """pynetdicom SCU advertises max PDU 4,096 / 0 (unlimited) and stores a ~1 MB instance to us."""
    source = make_instance(tmp_path / "big.dcm", rows=512, cols=1024)
    received_dir = tmp_path / "rx"
    received_dir.mkdir()
    bus = EventBus()
    sent_lengths: list[int] = []
    bus.subscribe(ev.PDU_SENT, lambda e: sent_lengths.append(e.detail["length"]) if e.detail["pdu_type"] == pdu.P_DATA_TF else None)

    def work(assoc):
        with chunked_pynetdicom_store():
            return assoc.send_c_store(str(source)).Status

    async def main():
        log = StoreLog(received_dir)
        async with serving(log.services(), config=NetConfig(temp_dir=str(received_dir)), bus=bus) as acceptor:
            result, _ = await asyncio.to_thread(
                _pynd_scu, acceptor.port, work, max_pdu=max_pdu, contexts=[(SECONDARY_CAPTURE, [ExplicitVRLittleEndian])]
            )
        return result, log

    status, log = asyncio.run(main())
    assert status == 0x0000
    [stored] = log.stored
    assert dataset_bytes(stored["path"]) == dataset_bytes(source)
    assert sent_lengths, "the C-STORE-RSP went out as P-DATA"
    if max_pdu:
        assert max(sent_lengths) <= max_pdu


# --------------------------------------------------------------------------- pacskit -> pynetdicom SCP


class PyndSCP:
    """An in-process pynetdicom SCP (threaded server) on 127.0.0.1, a free port."""

    def __init__(self, *, max_pdu: int = 16382, require_called_aet: bool = False) -> None:
        self.ae = AE(ae_title="PYND_SCP")
        self.ae.maximum_pdu_size = max_pdu
        self.ae.require_called_aet = require_called_aet
        self.ae.network_timeout = self.ae.acse_timeout = self.ae.dimse_timeout = 30
        for abstract in (VERIFICATION_SOP_CLASS, CT, MR, SECONDARY_CAPTURE, PATIENT_ROOT_FIND, STORAGE_COMMITMENT):
            self.ae.add_supported_context(abstract, PND_ALL_TS)
        self.stored: list[tuple[str, str, bytes]] = []
        self.find_requests: list[Dataset] = []
        self.actions: list[tuple[int, Dataset]] = []
        self.event_report_status: list[int] = []
        self.server: Any = None
        self.report_done = threading.Event()

    def on_store(self, event):
        self.stored.append((event.request.AffectedSOPInstanceUID, event.context.transfer_syntax, bytes(event.request.DataSet.getvalue())))
        return 0x0000

    def on_find(self, event):
        self.find_requests.append(event.identifier)
        for name in ("DOE^JOHN", "DOE^JANE"):
            match = Dataset()
            match.PatientName = name
            match.PatientID = name[-4:]
            match.QueryRetrieveLevel = "PATIENT"
            yield 0xFF00, match

    def on_action(self, event):
        request = event.request
        info = event.action_information
        self.actions.append((request.ActionTypeID, info))
        assoc = event.assoc

        def report():
            # Storage commitment result (Event Type 1: all instances committed) on the same association
            result = Dataset()
            result.TransactionUID = info.TransactionUID
            result.ReferencedSOPSequence = info.ReferencedSOPSequence
            try:
                rsp, _ = assoc.send_n_event_report(result, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
                self.event_report_status.append(int(rsp.Status) if rsp else -1)
            finally:
                self.report_done.set()

        threading.Timer(0.05, report).start()
        return 0x0000, None

    def __enter__(self) -> PyndSCP:
        handlers = [(evt.EVT_C_STORE, self.on_store), (evt.EVT_C_FIND, self.on_find), (evt.EVT_N_ACTION, self.on_action)]
        self.server = self.ae.start_server((LOCALHOST, 0), block=False, evt_handlers=handlers)
        return self

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.ae.shutdown()


def test_requestor_echo_and_store_to_pynetdicom():
    sources = [sample_file("CT_small.dcm"), sample_file("MR_small_implicit.dcm")]
    infos = [read_part10_header(s) for s in sources]

    async def main(port):
        contexts = [RequestedContext(VERIFICATION_SOP_CLASS)] + [RequestedContext(i.sop_class_uid, (i.transfer_syntax,)) for i in infos]
        async with await connect(LOCALHOST, port, called_ae="PYND_SCP", contexts=contexts) as assoc:
            echo = await assoc.echo()
            statuses = [(await assoc.store(s)).status for s in sources]
        return echo, statuses, assoc

    with PyndSCP() as scp:
        echo, statuses, assoc = asyncio.run(main(scp.port))
    assert echo == 0 and statuses == [0, 0]
    assert assoc.is_released and not assoc.is_aborted
    assert assoc.peer_max_pdu == 16382
    got = {uid: (ts, data) for uid, ts, data in scp.stored}
    for source, info in zip(sources, infos):
        ts, data = got[info.sop_instance_uid]
        assert ts == info.transfer_syntax
        assert data == dataset_bytes(source)


def test_requestor_store_pydicom_dataset_to_pynetdicom():
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7777.1"
    ds.PatientName = "ENCODED^IN^MEMORY"

    async def main(port):
        async with await connect(LOCALHOST, port, called_ae="PYND_SCP", contexts=[RequestedContext(CT, (ImplicitVRLittleEndian,))]) as assoc:
            return (await assoc.store(ds)).status

    with PyndSCP() as scp:
        status = asyncio.run(main(scp.port))
    assert status == 0
    [(uid, ts, data)] = scp.stored
    assert (uid, ts) == (ds.SOPInstanceUID, ImplicitVRLittleEndian)
    assert b"ENCODED^IN^MEMORY" in data


def test_requestor_find_against_pynetdicom():
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientName = "DOE*"
    query.PatientID = ""

    async def main(port):
        async with await connect(LOCALHOST, port, called_ae="PYND_SCP", contexts=[RequestedContext(PATIENT_ROOT_FIND)]) as assoc:
            return [(status, ds) async for status, ds in assoc.find(PATIENT_ROOT_FIND, query)]

    with PyndSCP() as scp:
        results = asyncio.run(main(scp.port))
    assert [status for status, _ in results] == [0xFF00, 0xFF00, 0x0000]
    assert [str(ds.PatientName) for _, ds in results[:2]] == ["DOE^JOHN", "DOE^JANE"]
    assert results[2][1] is None
    [received_query] = scp.find_requests
    assert received_query.PatientName == "DOE*"


def test_requestor_n_action_and_n_event_report_with_pynetdicom():
    """Storage Commitment Push Model: we send N-ACTION, pynetdicom answers, then sends N-EVENT-REPORT
    back on the same association, which our requestor-side services answer."""
    reports: list[tuple[int, str, Dataset | None]] = []

    async def on_event_report(req):
        reports.append((req.command["EventTypeID"], req.sop_instance_uid, req.dataset))
        return 0x0000

    services = Services()
    services.register("N-EVENT-REPORT", on_event_report)
    action = Dataset()
    action.TransactionUID = "1.2.826.0.1.3680043.9.7777.2"
    item = Dataset()
    item.ReferencedSOPClassUID = CT
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.9.7777.3"
    action.ReferencedSOPSequence = [item]

    async def main(port, scp):
        async with await connect(
            LOCALHOST, port, called_ae="PYND_SCP", contexts=[RequestedContext(STORAGE_COMMITMENT)], services=services
        ) as assoc:
            rsp, reply = await assoc.n_request(
                CommandField.N_ACTION_RQ,
                STORAGE_COMMITMENT,
                action,
                RequestedSOPInstanceUID=STORAGE_COMMITMENT_INSTANCE,
                ActionTypeID=1,
            )
            await asyncio.to_thread(scp.report_done.wait, 20)
        return rsp, reply

    with PyndSCP() as scp:
        rsp, reply = asyncio.run(main(scp.port, scp))
    assert rsp.command_field == CommandField.N_ACTION_RSP
    assert rsp.status == 0x0000
    assert reply is None
    [(action_type, info)] = scp.actions
    assert action_type == 1
    assert info.TransactionUID == action.TransactionUID
    assert scp.event_report_status == [0x0000]
    [(event_type, instance, data)] = reports
    assert event_type == 1
    assert instance == STORAGE_COMMITMENT_INSTANCE
    assert data.TransactionUID == action.TransactionUID
    assert data.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == item.ReferencedSOPInstanceUID


def test_pynetdicom_rejects_wrong_called_ae():
    async def main(port):
        with pytest.raises(AssociationRejected) as err:
            await connect(LOCALHOST, port, called_ae="SOMEONE_ELSE", contexts=[RequestedContext(VERIFICATION_SOP_CLASS)])
        return err.value

    with PyndSCP(require_called_aet=True) as scp:
        exc = asyncio.run(main(scp.port))
    assert (exc.result, exc.source, exc.reason) == (1, 1, 7)


@pytest.mark.parametrize("max_pdu", [4096, 0])
def test_requestor_to_pynetdicom_with_small_or_unlimited_max_pdu(max_pdu, tmp_path):
    source = make_instance(tmp_path / "big.dcm", rows=512, cols=1024)
    info = read_part10_header(source)
    bus = EventBus()
    sent: list[int] = []
    bus.subscribe(ev.PDU_SENT, lambda e: sent.append(e.detail["length"]) if e.detail["pdu_type"] == pdu.P_DATA_TF else None)

    async def main(port):
        async with await connect(
            LOCALHOST, port, called_ae="PYND_SCP", contexts=[RequestedContext(SECONDARY_CAPTURE, (ExplicitVRLittleEndian,))], bus=bus
        ) as assoc:
            status = (await assoc.store(source)).status
        return status, assoc.peer_max_pdu

    with PyndSCP(max_pdu=max_pdu) as scp:
        status, peer_max = asyncio.run(main(scp.port))
    assert status == 0
    assert peer_max == max_pdu
    [(uid, _, data)] = scp.stored
    assert uid == info.sop_instance_uid
    assert data == dataset_bytes(source)
    dataset_size = info.file_size - info.dataset_offset
    assert sum(sent) >= dataset_size
    if max_pdu:
        assert max(sent) <= max_pdu
        # the dataset went out in PDUs filled up to exactly the peer's maximum (one PDV each)
        assert sent.count(4096) >= dataset_size // (4096 - 6) - 1
    else:
        # nothing forced small PDUs: the engine's own send size (1 MiB of PDV data) applies
        assert max(sent) == NetConfig().unlimited_pdu_send_size + 6
