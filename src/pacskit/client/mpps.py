"""MppsScu: the modality side of Modality Performed Procedure Step (PS3.4 F.7), on :class:`NServiceScu`.

::

    wl = await QueryRetrieveScu(ris, model="worklist").find({"ScheduledProcedureStepSequence[0].Modality": "CT"})
    async with MppsScu(ris) as mpps:
        started = await mpps.start(in_progress_attributes(wl.records[0].dataset, station_ae="CT1"))
        ...  # acquire and C-STORE the images
        await mpps.complete(started.affected_sop_instance_uid, performed_series=[series_item])

Statuses are returned in :class:`~pacskit.client.nservices.NResult` (``result.ok``), not raised.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from pacskit.client.nservices import NResult, NServiceScu

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"

__all__ = ["MPPS_SOP_CLASS", "MppsScu", "in_progress_attributes", "performed_series_item"]

#: attributes an N-CREATE copies from the worklist answer (PS3.4 Table F.7.2-1)
_PATIENT_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")
_SCHEDULED_KEYS = ("StudyInstanceUID", "AccessionNumber", "RequestedProcedureID", "RequestedProcedureDescription")
_SPS_KEYS = ("ScheduledProcedureStepID", "ScheduledProcedureStepDescription")


def _now() -> tuple[str, str]:
    now = dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def in_progress_attributes(
    worklist_item: Dataset | None,
    *,
    station_ae: str,
    pps_id: str | None = None,
    modality: str | None = None,
    description: str = "",
) -> Dataset:
    """The N-CREATE attribute list of a step starting now, for a worklist answer (``None``: an
    unscheduled step, with an empty Scheduled Step Attributes Sequence item and a new Study UID)."""
    item = worklist_item if worklist_item is not None else Dataset()
    seq = item.get("ScheduledProcedureStepSequence")
    sps = seq[0] if seq else Dataset()
    ds = Dataset()
    for keyword in _PATIENT_KEYS:
        if keyword in item:
            ds[keyword] = item[keyword]
    scheduled = Dataset()
    for keyword in _SCHEDULED_KEYS:
        scheduled.add_new(keyword, _vr(keyword), item.get(keyword, ""))
    if not scheduled.StudyInstanceUID:
        scheduled.StudyInstanceUID = generate_uid()
    for keyword in _SPS_KEYS:
        scheduled.add_new(keyword, _vr(keyword), sps.get(keyword, ""))
    ds.ScheduledStepAttributesSequence = DicomSequence([scheduled])
    date, time = _now()
    ds.PerformedProcedureStepID = pps_id or date + time
    ds.PerformedStationAETitle = station_ae
    ds.PerformedProcedureStepStartDate = date
    ds.PerformedProcedureStepStartTime = time
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = description or str(sps.get("ScheduledProcedureStepDescription", ""))
    ds.Modality = modality or str(sps.get("Modality", "")) or "OT"
    ds.StudyID = ""
    ds.PerformedSeriesSequence = DicomSequence([])
    return ds


def _vr(keyword: str) -> str:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None
    return dictionary_VR(tag)


def performed_series_item(
    series_instance_uid: str,
    instances: Sequence[tuple[str, str]],
    *,
    performing_physician: str = "",
    protocol_name: str = "",
    retrieve_ae_title: str = "",
    series_description: str = "",
) -> Dataset:
    """One Performed Series Sequence item: the series and its (SOP Class UID, SOP Instance UID)s."""
    item = Dataset()
    item.PerformingPhysicianName = performing_physician
    item.ProtocolName = protocol_name or "unspecified"
    item.OperatorsName = ""
    item.SeriesInstanceUID = series_instance_uid
    item.SeriesDescription = series_description
    item.RetrieveAETitle = retrieve_ae_title
    refs = []
    for sop_class, sop_instance in instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = sop_instance
        refs.append(ref)
    item.ReferencedImageSequence = DicomSequence(refs)
    item.ReferencedNonImageCompositeSOPInstanceSequence = DicomSequence([])
    return item


class MppsScu(NServiceScu):
    """N-CREATE and N-SET of Modality Performed Procedure Steps on one association (``async with``)."""

    def __init__(self, remote: Any, **kwargs: Any) -> None:
        super().__init__(remote, [MPPS_SOP_CLASS], **kwargs)

    async def start(self, attributes: Dataset, instance_uid: str | None = None) -> NResult:
        """N-CREATE the step (status IN PROGRESS); the UID is ours (generated unless given) and is in
        ``result.affected_sop_instance_uid``."""
        return await self.n_create(MPPS_SOP_CLASS, attributes, instance_uid or generate_uid())

    async def update(self, instance_uid: str, modifications: Dataset) -> NResult:
        """N-SET any attributes (still IN PROGRESS, or the final state)."""
        return await self.n_set(MPPS_SOP_CLASS, instance_uid, modifications)

    async def complete(self, instance_uid: str, performed_series: Sequence[Dataset], **extra: Any) -> NResult:
        """N-SET COMPLETED with the end date/time now and the Performed Series Sequence."""
        return await self.update(instance_uid, self._final("COMPLETED", performed_series, extra))

    async def discontinue(self, instance_uid: str, performed_series: Sequence[Dataset] = (), **extra: Any) -> NResult:
        """N-SET DISCONTINUED (the series acquired so far, possibly none)."""
        return await self.update(instance_uid, self._final("DISCONTINUED", performed_series, extra))

    @staticmethod
    def _final(state: str, performed_series: Sequence[Dataset], extra: dict[str, Any]) -> Dataset:
        ds = Dataset()
        date, time = _now()
        ds.PerformedProcedureStepStatus = state
        ds.PerformedProcedureStepEndDate = date
        ds.PerformedProcedureStepEndTime = time
        ds.PerformedSeriesSequence = DicomSequence(list(performed_series))
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
        return ds
