"""DataStore.ingest takes what the engine received (a ReceivedDataset) and takes its file over in one step."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import select

from pacskit.dicom.part10 import read_part10_header
from pacskit.net import ReceivedDataset
from pacskit.store import DataStore, IngestStatus, InvalidInstance
from pacskit.store.index.models import Instance

from ._util import make_instance, stage


def _received(store: DataStore, path: str, **changes: object) -> ReceivedDataset:
    info = read_part10_header(path)
    staged = stage(store, path)
    fields = dict(transfer_syntax=info.transfer_syntax, path=staged, offset=info.dataset_offset,
                  size=os.path.getsize(staged) - info.dataset_offset, source_ae="MODALITY7")
    fields.update(changes)
    return ReceivedDataset(**fields)  # type: ignore[arg-type]


def test_ingest_takes_the_received_dataset(store: DataStore, tmp_path) -> None:
    received = _received(store, make_instance(tmp_path))
    result = store.ingest(received)
    assert result.status == IngestStatus.STORED
    assert received.claimed  # the engine will not delete what became the blob
    with store.index.reading() as s:
        assert s.execute(select(Instance.source_ae)).scalar_one() == "MODALITY7"  # the caller came with it


def test_a_refused_dataset_is_taken_over_too(store: DataStore, tmp_path) -> None:
    path = make_instance(tmp_path)
    received = _received(store, path)
    with open(received.path, "r+b") as fh:  # type: ignore[arg-type]
        fh.truncate(received.offset + 40)  # cut inside the dataset: it does not parse to its end
    with pytest.raises(InvalidInstance):
        store.ingest(received)
    assert received.claimed and not os.path.exists(received.path)  # type: ignore[arg-type]
    assert store.count("instances") == 0


def test_the_received_transfer_syntax_and_offset_are_used(store: DataStore, tmp_path) -> None:
    """What the engine knows is not read again from the File Meta it wrote: a wrong meta is not consulted."""
    path = make_instance(tmp_path)
    info = read_part10_header(path)
    received = _received(store, path)
    with open(received.path, "r+b") as fh:  # type: ignore[arg-type]
        data = fh.read()
        fh.seek(0)
        fh.write(data.replace(info.transfer_syntax.encode(), b"9" * len(info.transfer_syntax), 1))
    assert read_part10_header(received.path).transfer_syntax != info.transfer_syntax  # type: ignore[arg-type]
    assert store.ingest(received).status == IngestStatus.STORED
