"""pacskit.store: the data access layer of the PACS (database index + blob storage).

>>> from pacskit.store import DataStore, FilesystemBlobStore
>>> store = DataStore.open("sqlite:///pacs-data/index.db", blobs=FilesystemBlobStore("pacs-data/blobs"))
>>> result = store.ingest(received.path, source_ae="MODALITY1",
...                       expected_sop_instance_uid=request.sop_instance_uid)

See docs/store.md.
"""

from pacskit.store.blobs import (
    KEY_PATTERN,
    BlobNotFound,
    BlobStore,
    FilesystemBlobStore,
    InvalidBlobKey,
    MemoryBlobStore,
    validate_key,
)
from pacskit.store.datastore import CheckReport, DataStore, IngestResult, Problem, ReindexReport, VerifiedCopy
from pacskit.store.engine import make_engine, make_url
from pacskit.store.extract import (
    InstanceAttributes,
    InstanceMismatch,
    InstanceTooLarge,
    InvalidInstance,
    UnparseableDataset,
    is_valid_uid,
    read_index_attributes,
    sha256_file,
)
from pacskit.store.index import Counts, DuplicatePolicy, Index, IngestStatus
from pacskit.store.models import Base, Instance, Patient, Series, Study, normalise_person_name, starts_with
from pacskit.store.records import AuditRecord, LogRecord, TransactionLogEntry
from pacskit.store.commitment_models import CommitmentItem, CommitmentRequest  # noqa: E402 - tables on Base
from pacskit.store.workflow_models import (  # registered on Base.metadata with the index tables
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
    "BlobStore",
    "CheckReport",
    "Counts",
    "DataStore",
    "DuplicatePolicy",
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
    "Patient",
    "PerformedProcedureStep",
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
