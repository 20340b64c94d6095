"""NServiceScu against a pynetdicom SCP (real pynetdicom, in a thread of the test process): N-ACTION
(Storage Commitment), N-CREATE and N-SET (MPPS), N-GET, N-DELETE, N-EVENT-REPORT, and the
N-EVENT-REPORT the SCP sends back on the same association."""

from __future__ import annotations

import asyncio

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacskit.client import EventReport, NServiceScu

from ._peers import (
    FILM_SESSION,
    MPPS,
    MPPS_NOTIFICATION,
    PRINTER,
    STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    pynetdicom_n_scp,
)


@pytest.fixture
def scp():
    with pynetdicom_n_scp() as (target, calls):
        yield target, calls


def test_storage_commitment_action_and_event_report_back(scp):
    target, calls = scp
    reports: list[EventReport] = []

    async def go():
        request = Dataset()
        request.TransactionUID = generate_uid()
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ref.ReferencedSOPInstanceUID = generate_uid()
        request.ReferencedSOPSequence = [ref]
        async with NServiceScu(target, [STORAGE_COMMITMENT], on_event_report=reports.append) as scu:
            result = await scu.n_action(STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, 1, request)
            for _ in range(100):
                if reports:
                    break
                await asyncio.sleep(0.05)
        return request, result

    request, result = asyncio.run(go())
    assert result.ok and result.status == 0
    assert ("N-ACTION", 1) in calls
    assert len(reports) == 1
    assert reports[0].event_type_id == 1 and reports[0].sop_instance_uid == STORAGE_COMMITMENT_INSTANCE
    assert reports[0].dataset.TransactionUID == request.TransactionUID
    assert ("report-answered", 0) in calls


def test_mpps_create_set_and_errors(scp):
    target, calls = scp

    async def go():
        async with NServiceScu(target, [MPPS, FILM_SESSION, MPPS_NOTIFICATION]) as scu:
            ds = Dataset()
            ds.PerformedProcedureStepStatus = "IN PROGRESS"
            ds.PatientID = "PK1"
            uid = generate_uid()
            created = await scu.n_create(MPPS, ds, instance_uid=uid)
            change = Dataset()
            change.PerformedProcedureStepStatus = "COMPLETED"
            updated = await scu.n_set(MPPS, uid, change)
            missing = await scu.n_set(MPPS, generate_uid(), change)
            deleted = await scu.n_delete(FILM_SESSION, uid)
            reported = await scu.n_event_report(MPPS_NOTIFICATION, uid, 1)
            return uid, created, updated, missing, deleted, reported

    uid, created, updated, missing, deleted, reported = asyncio.run(go())
    assert created.ok and created.dataset.PatientID == "PK1"
    assert updated.ok and updated.dataset.PerformedProcedureStepStatus == "COMPLETED"
    assert missing.status == 0x0112 and not missing.ok
    assert deleted.ok and reported.ok
    assert [c for c in calls if c[0] in ("N-CREATE", "N-SET", "N-DELETE")] == [("N-CREATE", uid), ("N-SET", uid), ("N-DELETE", uid)]
    assert ("N-EVENT-REPORT", 1) in calls


def test_n_get_with_attribute_list(scp):
    target, calls = scp

    async def go():
        async with NServiceScu(target, [PRINTER]) as scu:
            return await scu.n_get(PRINTER, "1.2.840.10008.5.1.1.17", [0x21100010, 0x21100030])

    result = asyncio.run(go())
    assert result.ok and result.dataset.PrinterName == "PK-PRINTER"
    assert ("N-GET", [0x21100010, 0x21100030]) in calls
