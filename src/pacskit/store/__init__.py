"""pacskit.store: the data access layer of the PACS (database index + blob storage).

>>> from pacskit.store import DataStore, FilesystemBlobStore
>>> store = DataStore.open("sqlite:///pacs-data/index.db", blobs=FilesystemBlobStore("pacs-data/blobs"))
>>> result = store.ingest(received,
...                       expected_sop_instance_uid=request.sop_instance_uid)

See docs/store.md.
"""

from pacskit.store.blobs import (
    KEY_PATTERN,
    BlobNotFound,
    BLOB_STORE_GROUP,
    BlobStore,
    DurablePut,
    FilesystemBlobStore,
    InvalidBlobKey,
    MemoryBlobStore,
    PendingPut,
    open_blob_store,
    validate_key,
)
from pacskit.store.datastore import CheckReport, DataStore, IngestResult, PendingIngest, Problem, ReindexReport, VerifiedCopy
from pacskit.store.engine import make_engine, make_url
from pacskit.store.index.extract import (
    InstanceAttributes,
    InstanceMismatch,
    InstanceTooLarge,
    InvalidInstance,
    UnparseableDataset,
    is_valid_uid,
    read_index_attributes,
    sha256_file,
)
from pacskit.store.index.database import Counts, DuplicatePolicy, Index, IngestStatus
from pacskit.store.index.models import (
    Base,
    Instance,
    Patient,
    Series,
    Study,
    normalise_person_name,
    starts_with,
)
from pacskit.store.records import AuditRecord, LogRecord, TransactionLogEntry
from pacskit.store import cluster as _cluster  # noqa: E402,F401 - its tables on Base (migration 0008)
from pacskit.store.workflow.commitment_models import CommitmentItem, CommitmentRequest  # noqa: E402 - tables on Base
from pacskit.store.workflow.models import (
    PerformedProcedureStep,
    PerformedStepLink,
    WorklistItem,
    WorklistStationAE,
)

__all__ = [
    "KEY_PATTERN",
    "AuditRecord",
    "LogRecord",
    "TransactionLogEntry",
    "Base",
    "BlobNotFound",
    "BLOB_STORE_GROUP",
    "BlobStore",
    "CheckReport",
    "Counts",
    "DataStore",
    "DuplicatePolicy",
    "DurablePut",
    "FilesystemBlobStore",
    "Index",
    "IngestResult",
    "IngestStatus",
    "Instance",
    "InstanceAttributes",
    "InstanceMismatch",
    "InstanceTooLarge",
    "InvalidBlobKey",
    "InvalidInstance",
    "MemoryBlobStore",
    "open_blob_store",
    "Patient",
    "PerformedProcedureStep",
    "PendingIngest",
    "PendingPut",
    "PerformedStepLink",
    "Problem",
    "ReindexReport",
    "Series",
    "Study",
    "UnparseableDataset",
    "is_valid_uid",
    "make_engine",
    "make_url",
    "normalise_person_name",
    "read_index_attributes",
    "sha256_file",
    "starts_with",
    "validate_key",
    "VerifiedCopy",
    "CommitmentItem",
    "CommitmentRequest",
    "WorklistItem",
    "WorklistStationAE",
]
