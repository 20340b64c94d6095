"""pynetdicom as the storage commitment requester (SCU) of the pacskit server (DCMTK has no storage
commitment SCU): the report on the same association, on a new association after the requester
released its own, and after a server restart while the request was pending.

pynetdicom runs in this process: its SCU calls in a worker thread (``asyncio.to_thread``), its
report-receiving SCP as a threaded server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

from pacskit.client.commitment import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL, SopReference
from pacskit.server.server import Server
from pacskit.testing.peers import free_port

from ._util import (
    CT,
    PACS_AE,
    blob_path,
    corrupt,
    hold_checks_until_released,
    register,
    request_rows,
    server_settings,
    store_files,
    wait_for_states,
)

pytestmark = pytest.mark.pynetdicom

REQUESTER = "PYNDSCU"
REPORT_WAIT = 20.0


def _action_information(transaction: str, refs: list[SopReference]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    items = []
    for ref in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        items.append(item)
    ds.ReferencedSOPSequence = DicomSequence(items)
    return ds


class Reports:
    """N-EVENT-REPORTs pynetdicom received (same association or its SCP), with how they came."""

    def __init__(self) -> None:
        self.received: list[tuple[str, int, Dataset]] = []
        self.arrived = threading.Event()
        self.gate: threading.Event | None = None  # when set: each report is answered only once it opens

    def handler(self, how: str) -> Any:
        def on_report(event: Any) -> tuple[int, None]:
            ds = event.event_information
            self.received.append((how, int(event.request.EventTypeID), ds))
            self.arrived.set()
            if self.gate is not None:
                self.gate.wait(30)
            return 0x0000, None

        return on_report

    def wait(self) -> tuple[str, int, Dataset]:
        assert self.arrived.wait(REPORT_WAIT), "no N-EVENT-REPORT arrived"
        return self.received[0]


def _request(port: int, refs: list[SopReference], reports: Reports, *, keep_open: bool) -> tuple[int, Any]:
    """N-ACTION from pynetdicom; with ``keep_open``, wait on the association for the report."""
    ae = AE(REQUESTER)
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
    assoc = ae.associate("127.0.0.1", port, ae_title=PACS_AE,
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler("same"))])
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(
            _action_information(generate_uid(), refs), 1, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE
        )
        if keep_open and status.Status == 0:
            reports.arrived.wait(REPORT_WAIT)
        return int(status.Status), status
    finally:
        assoc.release()


def _report_scp(port: int, reports: Reports) -> Any:
    ae = AE(REQUESTER)
    # the reporting SCP proposes the SCP role (role selection); agree to it
    ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=False, scp_role=True)
    return ae.start_server(("127.0.0.1", port), block=False,
                           evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler("new"))])


def _sop_uids(ds: Dataset, keyword: str) -> dict[str, int | None]:
    return {str(i.ReferencedSOPInstanceUID): (int(i.FailureReason) if "FailureReason" in i else None)
            for i in ds.get(keyword, [])}


def test_pynetdicom_gets_the_report_on_its_association(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)

    async def run() -> None:
        async with Server(settings) as server:
            stored = store_files(server.store, tmp_path / "src", 3)
            corrupt(blob_path(server.store, stored[2][1].sop_instance_uid))
            refs = [ref for _, ref in stored] + [SopReference(CT, "1.2.826.0.1.3680043.8.498.4242")]
            reports = Reports()
            status, _ = await asyncio.to_thread(_request, server.port, refs, reports, keep_open=True)
            assert status == 0
            how, event_type, ds = reports.wait()
            assert (how, event_type) == ("same", 2)
            assert str(ds.TransactionUID)
            assert _sop_uids(ds, "ReferencedSOPSequence") == {stored[0][1].sop_instance_uid: None,
                                                              stored[1][1].sop_instance_uid: None}
            assert _sop_uids(ds, "FailedSOPSequence") == {stored[2][1].sop_instance_uid: 0x0110,
                                                          "1.2.826.0.1.3680043.8.498.4242": 0x0112}

    asyncio.run(run())


def test_pynetdicom_released_gets_the_report_on_a_new_association(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)
    port = free_port()
    register(settings, REQUESTER, port)

    async def run() -> None:
        reports = Reports()
        scp = _report_scp(port, reports)
        try:
            async with Server(settings) as server:
                stored = store_files(server.store, tmp_path / "src", 2)
                hold_checks_until_released(server)
                blob_path(server.store, stored[1][1].sop_instance_uid).unlink()
                status, _ = await asyncio.to_thread(_request, server.port, [r for _, r in stored], reports, keep_open=False)
                assert status == 0
                how, event_type, ds = await asyncio.to_thread(reports.wait)
                assert (how, event_type) == ("new", 2)
                assert _sop_uids(ds, "ReferencedSOPSequence") == {stored[0][1].sop_instance_uid: None}
                assert _sop_uids(ds, "FailedSOPSequence") == {stored[1][1].sop_instance_uid: 0x0110}
        finally:
            scp.shutdown()

    asyncio.run(run())


def test_a_pending_request_survives_a_restart(tmp_path: Path, fresh_db_url: Any) -> None:
    """The first server never gets to report (delay of an hour); the second resumes the request from
    the database at start-up and reports on a new association. On SQLite, PostgreSQL and MariaDB."""
    settings = server_settings(tmp_path, fresh_db_url, delay=3600)
    port = free_port()
    register(settings, REQUESTER, port)

    async def run() -> None:
        reports = Reports()
        async with Server(settings) as server:
            stored = store_files(server.store, tmp_path / "src", 2)
            status, _ = await asyncio.to_thread(_request, server.port, [r for _, r in stored], reports, keep_open=False)
            assert status == 0
            assert [r.state for r in request_rows(server.store)] == ["pending"]
        assert not reports.received
        scp = _report_scp(port, reports)
        try:
            async with Server(settings) as server:  # same folder, same database
                how, event_type, ds = await asyncio.to_thread(reports.wait)
                assert (how, event_type) == ("new", 1)
                assert set(_sop_uids(ds, "ReferencedSOPSequence")) == {r.sop_instance_uid for _, r in stored}
                rows = await wait_for_states(server.store, "reported")
                assert [(r.state, r.attempts) for r in rows] == [("reported", 1)]
        finally:
            scp.shutdown()

    asyncio.run(run())


def test_unreachable_requester_is_retried_then_reported(tmp_path: Path) -> None:
    """The requester's SCP is down at the first try; a retry (after retry_backoff) gets through."""
    settings = server_settings(tmp_path, retry_backoff=0.1, report_attempts=8)
    port = free_port()
    register(settings, REQUESTER, port)

    async def run() -> None:
        reports = Reports()
        async with Server(settings) as server:
            stored = store_files(server.store, tmp_path / "src", 1)
            hold_checks_until_released(server)
            status, _ = await asyncio.to_thread(_request, server.port, [stored[0][1]], reports, keep_open=False)
            assert status == 0
            for _ in range(200):  # wait for the first failed try (connection refused) to be recorded
                rows = request_rows(server.store)
                if rows[0].attempts >= 1:
                    break
                await asyncio.sleep(0.05)
            assert rows[0].state == "pending" and rows[0].last_error
            scp = _report_scp(port, reports)
            try:
                how, event_type, _ = await asyncio.to_thread(reports.wait)
                assert (how, event_type) == ("new", 1)
            finally:
                scp.shutdown()

    asyncio.run(run())


def test_unregistered_requester_fails_after_its_attempts(tmp_path: Path) -> None:
    settings = server_settings(tmp_path, report_attempts=2, retry_backoff=0.0)

    async def run() -> None:
        reports = Reports()
        async with Server(settings) as server:
            stored = store_files(server.store, tmp_path / "src", 1)
            hold_checks_until_released(server)
            status, _ = await asyncio.to_thread(_request, server.port, [stored[0][1]], reports, keep_open=False)
            assert status == 0
            rows = await wait_for_states(server.store, "failed")
            assert (rows[0].state, rows[0].attempts) == ("failed", 2)
            assert "not in the AE registry" in rows[0].last_error

    asyncio.run(run())


def test_with_two_workers_one_resumes_a_pending_request(tmp_path: Path) -> None:
    """``serve --workers 2`` after a restart: one worker resumes the pending request (one report), the
    other logs that another worker does; before, every worker sent its own report."""
    import subprocess
    import sys

    settings = server_settings(tmp_path, None, delay=3600)
    port = free_port()
    register(settings, REQUESTER, port)

    async def first() -> list[Any]:
        async with Server(settings) as server:
            stored = store_files(server.store, tmp_path / "src", 2)
            status, _ = await asyncio.to_thread(_request, server.port, [r for _, r in stored], Reports(), keep_open=False)
            assert status == 0
            return stored

    stored = asyncio.run(first())
    reports = Reports()
    # the report stays unanswered (so the request stays pending) until both workers have started:
    # each has then decided whether it resumes it
    reports.gate = threading.Event()
    scp = _report_scp(port, reports)
    proc = subprocess.Popen([sys.executable, "-m", "pacskit", "serve", "--data-dir", str(settings.folder),
                             "--port", str(free_port()), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()  # once every worker has started (its add-ins' start() done)
        assert "with 2 workers" in ready, ready
        reports.gate.set()
        how, event_type, ds = reports.wait()
        assert (how, event_type) == ("new", 1)
        assert set(_sop_uids(ds, "ReferencedSOPSequence")) == {r.sop_instance_uid for _, r in stored}
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=60)
        scp.shutdown()
    assert err.count("resuming 1 pending storage commitment reports") == 1, err
    assert err.count("another worker resumes them") == 1, err
    assert len(reports.received) == 1
