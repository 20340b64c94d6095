"""pacskit.client: ready-to-use service class users on the engine's requestor (:func:`pacskit.net.connect`).

- :class:`EchoScu`: C-ECHO
- :class:`StoreScu`: C-STORE of files, folders and datasets, with conversion and parallel associations
- :class:`QueryRetrieveScu`: C-FIND (Patient Root, Study Root, Modality Worklist), C-MOVE, C-GET
- :class:`NServiceScu`: N-EVENT-REPORT / N-GET / N-SET / N-ACTION / N-CREATE / N-DELETE plumbing
- :class:`StorageCommitmentScu`: Storage Commitment Push Model (N-ACTION, report on either association)
- :class:`MppsScu`: Modality Performed Procedure Step N-CREATE / N-SET (on :class:`NServiceScu`)
- :class:`MediaCreationScu`: Media Creation Management (CDs, DVDs, USB images from a burning station)
- :class:`PrintScu`: Basic Grayscale / Color Print Management (film session, film boxes, image boxes)

Every SCU takes its peer as a :class:`RemoteAE`, ``"AET@host:port"`` or a title from the AE registry
(:func:`resolve_remote`), offers ``async`` methods and a ``*_sync`` twin for plain scripts, and raises
the engine's :class:`~pacskit.net.NetError` family for connection, association and timeout failures.
See docs/client.md.
"""

from typing import TYPE_CHECKING

# Every name is imported on first use (PEP 562): a command imports only the SCU it runs. `pacskit echo`
# and `pacskit store` load neither pydicom (storing files, like DCMTK's storescu, only moves bytes;
# ~0.4 s) nor pydantic (the AE registry's models; ~0.15 s) nor the SCUs they do not use.
_LAZY = {
    "AssociationRequest": "_scu", "ClientEvents": "_scu", "Scu": "_scu", "run_sync": "_scu", "user_identity": "_scu",
    "CommitmentFailure": "commitment", "CommitmentResult": "commitment", "SopReference": "commitment",
    "StorageCommitmentScu": "commitment",
    "EchoScu": "echo",
    "Peer": "remote", "RemoteAE": "remote", "RemoteSpec": "remote", "UnknownRemote": "remote", "resolve_remote": "remote",
    "Instance": "store", "InstanceResult": "store", "StoreEvent": "store", "StoreProgress": "store", "StoreReport": "store",
    "StoreScu": "store",
    "KeyError_": "keys", "Keys": "keys", "apply_keys": "keys", "parse_key": "keys",
    "EventReport": "nservices", "NResult": "nservices", "NServiceScu": "nservices",
    "FindRequest": "query", "FindResult": "query", "InstanceRecord": "query", "PatientRecord": "query",
    "QueryFailed": "query", "QueryRetrieveScu": "query", "ReceivedInstance": "query", "Record": "query",
    "RetrieveProgress": "query", "RetrieveResult": "query", "SeriesRecord": "query", "StudyRecord": "query",
    "WorklistRecord": "query",
    "MppsScu": "mpps", "in_progress_attributes": "mpps", "performed_series_item": "mpps",
    "MediaCreationScu": "media", "MediaStatus": "media", "MediaStatusError": "media",
    "PrintScu": "print", "PrintFailed": "print", "PrintResult": "print",
}

if TYPE_CHECKING:
    from pacskit.client._scu import AssociationRequest, ClientEvents, Scu, run_sync, user_identity
    from pacskit.client.commitment import CommitmentFailure, CommitmentResult, SopReference, StorageCommitmentScu
    from pacskit.client.echo import EchoScu
    from pacskit.client.keys import KeyError_, Keys, apply_keys, parse_key
    from pacskit.client.media import MediaCreationScu, MediaStatus, MediaStatusError
    from pacskit.client.mpps import MppsScu, in_progress_attributes, performed_series_item
    from pacskit.client.nservices import EventReport, NResult, NServiceScu
    from pacskit.client.print import PrintFailed, PrintResult, PrintScu
    from pacskit.client.query import (
        FindRequest,
        FindResult,
        InstanceRecord,
        PatientRecord,
        QueryFailed,
        QueryRetrieveScu,
        ReceivedInstance,
        Record,
        RetrieveProgress,
        RetrieveResult,
        SeriesRecord,
        StudyRecord,
        WorklistRecord,
    )
    from pacskit.client.remote import Peer, RemoteAE, RemoteSpec, UnknownRemote, resolve_remote
    from pacskit.client.store import Instance, InstanceResult, StoreEvent, StoreProgress, StoreReport, StoreScu


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"pacskit.client.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AssociationRequest",
    "ClientEvents",
    "CommitmentFailure",
    "CommitmentResult",
    "EchoScu",
    "EventReport",
    "FindRequest",
    "FindResult",
    "Instance",
    "InstanceRecord",
    "InstanceResult",
    "KeyError_",
    "MediaCreationScu",
    "MediaStatus",
    "MediaStatusError",
    "MppsScu",
    "Keys",
    "NResult",
    "NServiceScu",
    "PatientRecord",
    "Peer",
    "PrintFailed",
    "PrintResult",
    "PrintScu",
    "QueryFailed",
    "QueryRetrieveScu",
    "ReceivedInstance",
    "Record",
    "RemoteAE",
    "RemoteSpec",
    "RetrieveProgress",
    "RetrieveResult",
    "Scu",
    "SeriesRecord",
    "SopReference",
    "StorageCommitmentScu",
    "StoreEvent",
    "StoreProgress",
    "StoreReport",
    "StoreScu",
    "StudyRecord",
    "UnknownRemote",
    "WorklistRecord",
    "apply_keys",
    "in_progress_attributes",
    "performed_series_item",
    "parse_key",
    "resolve_remote",
    "run_sync",
    "user_identity",
]
