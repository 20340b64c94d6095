"""MediaCreationScu: ask a Media Creation Management SCP (PS3.4 Annex S) for CDs, DVDs or USB images.

::

    async with MediaCreationScu("BURNER@10.0.0.5:11112") as mcm:
        uid, created = await mcm.create(references, profile="STD-GEN-CD", label="CT head")
        await mcm.initiate(uid, copies=2, priority="HIGH")
        status = await mcm.wait(uid)          # N-GET until DONE or FAILURE
        status.state, status.media_count, status.failed

``references`` are (SOP Class UID, SOP Instance UID) pairs of instances the SCP holds (send them
first with C-STORE when it does not). Statuses are returned in :class:`NResult` (``result.ok``), not
raised; :meth:`MediaCreationScu.status` raises :class:`MediaStatusError` when the N-GET fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from pacskit.client.nservices import NResult, NServiceScu

MEDIA_CREATION_MANAGEMENT = "1.2.840.10008.5.1.1.33"
ACTION_INITIATE = 1
ACTION_CANCEL = 2
FINAL_STATES = ("DONE", "FAILURE")

__all__ = ["MEDIA_CREATION_MANAGEMENT", "MediaCreationScu", "MediaStatus", "MediaStatusError", "media_request"]


class MediaStatusError(Exception):
    """The N-GET of a request failed (``status``: the DIMSE status, e.g. 0x0112 no such request)."""

    def __init__(self, status: int, comment: str = "") -> None:
        super().__init__(f"N-GET failed with status 0x{status:04X}" + (f": {comment}" if comment else ""))
        self.status = status


@dataclass(slots=True)
class MediaStatus:
    """What N-GET says about a request."""

    uid: str
    state: str
    info: str
    media_count: int
    #: (SOP Class UID, SOP Instance UID, Failure Reason)
    failed: list[tuple[str, str, int]] = field(default_factory=list)
    #: (File-set ID, File-set UID) of each piece of media
    media: list[tuple[str, str]] = field(default_factory=list)
    dataset: Dataset | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


def media_request(
    references: Sequence[tuple[str, str]],
    *,
    profile: str = "STD-GEN-CD",
    label: str = "",
    fileset_id: str = "",
    allow_split: bool = True,
    include_non_dicom: str = "NO",
    include_display_application: str = "NO",
) -> Dataset:
    """The N-CREATE attribute list of a media creation request (PS3.4 Table S.3.2.1.1-1)."""
    ds = Dataset()
    items = []
    for cls, inst in references:
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = inst
        item.RequestedMediaApplicationProfile = profile
        items.append(item)
    ds.ReferencedSOPSequence = DicomSequence(items)
    if label:
        ds.LabelText = label
        ds.LabelUsingInformationExtractedFromInstances = "NO"
    if fileset_id:
        ds.StorageMediaFileSetID = fileset_id[:16]
    ds.AllowMediaSplitting = "YES" if allow_split else "NO"
    ds.IncludeNonDICOMObjects = include_non_dicom
    ds.IncludeDisplayApplication = include_display_application
    return ds


class MediaCreationScu(NServiceScu):
    """One association with a Media Creation Management SCP; use as ``async with``."""

    def __init__(self, remote: Any, **kwargs: Any) -> None:
        super().__init__(remote, [MEDIA_CREATION_MANAGEMENT], **kwargs)

    async def __aenter__(self) -> MediaCreationScu:
        await super().__aenter__()
        return self

    async def create(self, references: Sequence[tuple[str, str]], *, uid: str | None = None,
                     **options: Any) -> tuple[str, NResult]:
        """N-CREATE a request for ``references`` (options: see :func:`media_request`). Returns the
        request's UID (``uid``, or one generated here, or the one the SCP chose) and the answer."""
        uid = uid or generate_uid()
        result = await self.n_create(MEDIA_CREATION_MANAGEMENT, media_request(references, **options), uid)
        return result.affected_sop_instance_uid or uid, result

    async def initiate(self, uid: str, *, copies: int = 1, priority: str = "MED") -> NResult:
        """N-ACTION Initiate Media Creation (Number of Copies, Request Priority HIGH / MED / LOW)."""
        ds = Dataset()
        ds.NumberOfCopies = copies
        ds.RequestPriority = priority
        return await self.n_action(MEDIA_CREATION_MANAGEMENT, uid, ACTION_INITIATE, ds)

    async def cancel(self, uid: str) -> NResult:
        """N-ACTION Cancel Media Creation: success means the request is stopped and deleted."""
        return await self.n_action(MEDIA_CREATION_MANAGEMENT, uid, ACTION_CANCEL)

    async def status(self, uid: str) -> MediaStatus:
        """N-GET of the request's state (raises :class:`MediaStatusError` on a failure status)."""
        result = await self.n_get(MEDIA_CREATION_MANAGEMENT, uid)
        if not result.ok or result.dataset is None:
            raise MediaStatusError(result.status, result.error_comment)
        ds = result.dataset
        failed = [(str(i.get("ReferencedSOPClassUID", "")), str(i.get("ReferencedSOPInstanceUID", "")),
                   int(i.get("FailureReason", 0) or 0)) for i in ds.get("FailedSOPSequence", [])]
        media = [(str(i.get("StorageMediaFileSetID", "")), str(i.get("StorageMediaFileSetUID", "")))
                 for i in ds.get("ReferencedStorageMediaSequence", [])]
        return MediaStatus(uid, str(ds.get("ExecutionStatus", "")), str(ds.get("ExecutionStatusInfo", "")),
                           int(ds.get("TotalNumberOfPiecesOfMediaCreated", 0) or 0), failed, media, ds)

    async def wait(self, uid: str, *, timeout: float = 3600.0, interval: float = 1.0) -> MediaStatus:
        """N-GET every ``interval`` seconds until the request is DONE or FAILURE (``TimeoutError``
        after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status(uid)
            if status.finished:
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"media creation request {uid} still {status.state} after {timeout:g} s")
            await asyncio.sleep(interval)
