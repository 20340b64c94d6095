"""The transaction log recorder on every backend: rows as the events say, drops counted when the queue
is full (deterministic: the writer is not running while the queue fills), retention purge."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select

from pacskit.addins.txlog import TransactionLog
from pacskit.net import Command, SpyEvent
from pacskit.net import events as ev
from pacskit.records.background import BatchWriter
from pacskit.store import Index, TransactionLogEntry


def completed(n: int, *, service: str = "C-ECHO", status: int | None = 0, started: float | None = None,
              identifier: bytes | None = None, **command: Any) -> SpyEvent:
    assoc = SimpleNamespace(id=n, remote_ae_title="CALLER", local_ae_title="PACS", peer_address=("127.0.0.1", 4000 + n))
    return SpyEvent(ev.OPERATION_COMPLETED, assoc, {  # type: ignore[arg-type]
        "service": service, "command": Command({"MessageID": n, **command}), "abstract_syntax": "1.2.840.10008.1.1",
        "transfer_syntax": "1.2.840.10008.1.2", "status": status, "final_elements": {}, "duration": 0.002,
        "started": started if started is not None else time.time(), "bytes_received": 10, "bytes_sent": 20,
        "identifier": identifier,
    })


@pytest.fixture
def index(db_url: Any) -> Any:
    idx = Index.open(db_url)
    idx.migrate()
    with idx.engine.begin() as conn:
        conn.execute(TransactionLogEntry.__table__.delete())
    yield idx
    idx.close()


def _count(index: Index) -> int:
    with index.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(TransactionLogEntry)).scalar_one())


def test_full_queue_drops_and_counts(index: Index) -> None:
    recorder = TransactionLog(index.engine, "PACS", queue_size=3, start_writer=False)
    try:
        accepted = [recorder.writer.submit(completed(n)) for n in range(5)]
        assert accepted == [True, True, True, False, False]
        assert recorder.dropped == 2 and recorder.writer.pending == 3
        recorder.start()
        assert recorder.flush()
        assert _count(index) == 3
        assert recorder.observe(completed(9)) is None and recorder.flush()  # room again
        assert _count(index) == 4 and recorder.dropped == 2
    finally:
        recorder.close()


def test_rows_hold_what_the_event_says(index: Index) -> None:
    from pydicom.dataset import Dataset

    from pacskit.dicom.codec import encode_dataset

    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.PatientID = "P'; DROP TABLE x; --"
    ident.StudyInstanceUID = "1.2.3\\1.2.4"  # two studies: not one study UID
    data = encode_dataset(ident, "1.2.840.10008.1.2")
    recorder = TransactionLog(index.engine, "PACS")
    try:
        recorder.observe(completed(1, service="C-FIND", status=0xC000, identifier=data,
                                   AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1"))
        recorder.observe(completed(2, service="C-STORE", status=None, AffectedSOPClassUID="1.2.840.10008.5.1.4.1.1.2",
                                   AffectedSOPInstanceUID="1.2.3.4.5"))
        assert recorder.flush()
    finally:
        recorder.close()
    with index.engine.connect() as conn:
        rows = conn.execute(select(TransactionLogEntry.__table__).order_by(TransactionLogEntry.pk)).all()
    find, store = rows
    assert (find.service, find.status, find.patient_id, find.study_instance_uid) == ("C-FIND", 0xC000, "P'; DROP TABLE x; --", None)
    assert find.sop_class_uid == "1.2.840.10008.5.1.4.1.2.2.1" and find.calling_ae == "CALLER"
    assert find.peer_address == "127.0.0.1:4001" and find.bytes_received == 10 and find.bytes_sent == 20
    assert (store.service, store.status, store.sop_instance_uid, store.study_instance_uid) == ("C-STORE", None, "1.2.3.4.5", None)


def test_retention_purge(index: Index) -> None:
    now = dt.datetime.now(dt.UTC)
    recorder = TransactionLog(index.engine, "PACS", retention_days=7, purge_interval=3600)
    try:
        for n, age_days in enumerate([30, 8, 6.9, 1, 0]):
            recorder.observe(completed(n, started=(now - dt.timedelta(days=age_days)).timestamp()))
        assert recorder.flush()
        assert _count(index) == 5
        assert recorder.purge(now) == 2
        assert _count(index) == 3
        assert recorder.purge(now) == 0
        assert recorder.purge(now + dt.timedelta(days=7)) == 2  # the 6.9 and 1 day old rows, a week later
        with index.engine.connect() as conn:
            left = conn.execute(select(TransactionLogEntry.message_id)).scalars().all()
        assert left == [4]
    finally:
        recorder.close()


def test_the_writer_purges_periodically() -> None:
    """The writer thread runs the purge as its idle task (at start, then every purge_interval)."""
    calls: list[float] = []
    writer: BatchWriter[int] = BatchWriter("t", lambda batch: None, idle=lambda: calls.append(time.monotonic()),
                                           idle_interval=0.05)
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) >= 3
    finally:
        writer.close()


def test_retention_zero_keeps_everything(index: Index) -> None:
    recorder = TransactionLog(index.engine, "PACS", retention_days=0)
    try:
        recorder.observe(completed(1, started=0.0))  # 1970
        assert recorder.flush()
        assert recorder.purge() == 0 and _count(index) == 1
    finally:
        recorder.close()


def test_a_failing_write_is_counted_and_the_writer_goes_on() -> None:
    batches: list[list[int]] = []

    def write(batch: list[int]) -> None:
        if 13 in batch:
            raise RuntimeError("database gone")
        batches.append(list(batch))

    writer: BatchWriter[int] = BatchWriter("t", write, batch_size=1)
    writer.start()
    try:
        for n in (1, 13, 2):
            writer.submit(n)
        assert writer.flush()
        assert batches == [[1], [2]] and writer.failed == 1 and writer.written == 2
    finally:
        writer.close()


def test_flush_cuts_a_lingering_batch_short() -> None:
    """A writer that lingers 30 s to fill its batch still writes what it holds when flushed (the audit
    trail's and transaction log's ``flush`` must not wait out the linger)."""
    batches: list[list[int]] = []
    writer: BatchWriter[int] = BatchWriter("t", lambda batch: batches.append(list(batch)), linger=30.0)
    writer.start()
    try:
        for n in (1, 2, 3):
            writer.submit(n)
        assert writer.flush(timeout=10)
        assert batches == [[1, 2, 3]] and writer.written == 3
        writer.submit(4)  # the next batch lingers again, and is cut short again
        assert writer.flush(timeout=10)
        assert batches == [[1, 2, 3], [4]]
    finally:
        writer.close()


def test_a_full_batch_ends_the_linger() -> None:
    """While it lingers the writer sleeps (records do not wake it one by one), but a whole batch
    waiting is written at once, not after the linger: the queue never fills up behind a linger."""
    batches: list[list[int]] = []
    wrote = threading.Event()

    def write(batch: Sequence[int]) -> None:
        batches.append(list(batch))
        wrote.set()

    writer: BatchWriter[int] = BatchWriter("t", write, batch_size=3, linger=60.0)
    writer.start()
    try:
        for n in (1, 2, 3, 4):
            writer.submit(n)
        assert wrote.wait(timeout=20)  # a 60 s linger would not have ended yet
        assert batches[0] == [1, 2, 3]
        writer.flush(timeout=10)
        assert batches == [[1, 2, 3], [4]]
    finally:
        writer.close()
