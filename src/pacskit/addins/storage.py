"""Storage add-in: the C-STORE SCP of the PACS (PS3.4 Annex B).

Every storage SOP class pydicom knows (200+, including retired ones peers still send), or any
abstract syntax with ``accept_any_sop_class``; every common transfer syntax, stored exactly as received.
The handler runs in the server's thread pool: the data store validates the header, hashes, moves the
file durably into blob storage and commits the index row *before* Success is returned.

Statuses (PS3.4 B.2.3, PS3.7 C):

========  ==================================================================================
0x0000    stored (or a duplicate kept as first received, with ``duplicate_policy = "keep-first"``)
0x0111    duplicate SOP Instance refused (``duplicate_policy = "reject"``)
0xA700    out of resources (disk full, dataset above the size cap, deflated dataset inflating
          beyond 256 MiB)
0xA900    dataset does not match the command (SOP Class / Instance UID differ)
0xC000    cannot understand: the dataset does not parse to its last byte in the negotiated transfer
          syntax (cut short, e.g. inside Pixel Data; Implicit VR bytes on an Explicit VR context;
          an item or sequence left open), unparseable header, missing or invalid UIDs, nesting
          too deep. Nothing is kept; the association goes on.
========  ==================================================================================

UIDs that break PS3.5 9.1 harmlessly (a component with a leading zero, a letter, 65 to 128
characters), as legacy modalities send, are stored with a warning in the log, as Orthanc and DCMTK do;
``strict_uids = true`` refuses them with 0xC000. Unsafe values (empty, anything but digits, dots and
letters, over 128 characters) are always refused (docs/store.md).
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field

from pacskit.services import AddIn, AddInOptions, Handler, Request, Response, SupportedContext
from pacskit.dicom.uids import ALL_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from pacskit.dicom.status import Status


class StorageOptions(AddInOptions):
    duplicate_policy: Literal["reject", "keep-first", "overwrite"] = Field(
        "keep-first", description="what to do when a SOP Instance UID is already stored"
    )
    accept_any_sop_class: bool = Field(False, description="accept C-STORE of SOP classes not in the storage list")
    strict_uids: bool = Field(
        False,
        description="refuse (0xC000) UIDs that break PS3.5 9.1 (a leading zero, a letter, over 64 characters); "
        "by default they are stored with a warning, as Orthanc and DCMTK do",
    )
    transfer_syntaxes: list[str] = Field(
        default_factory=lambda: list(ALL_TRANSFER_SYNTAXES),
        description="accepted transfer syntaxes, most preferred first",
    )


class StorageAddIn(AddIn):
    name = "storage"
    description = "Storage SCP (C-STORE): keeps instances as received, indexed"
    Options = StorageOptions
    options: StorageOptions

    def presentation_contexts(self) -> Sequence[SupportedContext]:
        syntaxes = tuple(self.options.transfer_syntaxes)
        uids = ("*",) if self.options.accept_any_sop_class else STORAGE_SOP_CLASSES
        # scp_role: a C-GET requestor asks to be Storage SCP on these contexts; the Retrieve add-in
        # needs that, and agreeing costs nothing when nobody asks.
        return [SupportedContext(uid, syntaxes, scu_role=True, scp_role=True) for uid in uids]

    def handlers(self) -> Mapping[str, Handler]:
        return {"C-STORE": self.on_store}

    def on_store(self, request: Request) -> Response:
        from pacskit.store import IngestStatus, InstanceMismatch, InstanceTooLarge, InvalidInstance

        store = self.base.store
        received = request.received
        if store is None or received is None or received.path is None:
            return Response(Status.OUT_OF_RESOURCES, elements={"ErrorComment": "no data store configured"})
        try:
            result = store.ingest(  # takes the file over, whatever the outcome
                received,
                expected_sop_instance_uid=request.sop_instance_uid,
                expected_sop_class_uid=request.sop_class_uid,
                duplicate_policy=self.options.duplicate_policy,
                strict_uids=self.options.strict_uids,
            )
        except InvalidInstance as exc:
            status = (Status.DATASET_DOES_NOT_MATCH_SOP_CLASS if isinstance(exc, InstanceMismatch)
                      else Status.OUT_OF_RESOURCES if isinstance(exc, InstanceTooLarge) else Status.CANNOT_UNDERSTAND)
            self.base.log.warning(
                "C-STORE %s from %s refused (0x%04X): %s",
                request.sop_instance_uid,
                request.assoc.remote_ae_title,
                status,
                getattr(exc, "detail", None) or exc,  # UnparseableDataset: where and what, in bytes
            )
            # Error Comment is an LO (64 characters): say the essential first; the log has the details.
            comment = "dataset UID differs from the C-STORE command" if status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS else str(exc)
            elements: dict[str, object] = {"ErrorComment": comment[:64]}
            if exc.tag is not None:
                elements["OffendingElement"] = [exc.tag]
            return Response(status, elements=elements)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.base.log.error("C-STORE %s refused: disk full", request.sop_instance_uid)
                return Response(Status.OUT_OF_RESOURCES, elements={"ErrorComment": "out of resources: disk full"})
            raise
        if result.status == IngestStatus.DUPLICATE_REJECTED:
            return Response(Status.DUPLICATE_SOP_INSTANCE, elements={"ErrorComment": "duplicate SOP Instance UID refused"})
        return Response(Status.SUCCESS)
