"""Helpers: build identifiers, run the query engine, name what came back."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from pacskit.store import DataStore
from pacskit.store.query import compile_find, find

from ._corpus import Corpus

UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
          "IMAGE": "SOPInstanceUID"}


def identifier(level: str, keys: Mapping[str, Any], charset: str | list[str] | None = None) -> Dataset:
    """A C-FIND identifier: the level, ``keys`` (keyword -> value, '' = return key) and the unique key."""
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        if isinstance(value, bytes):  # as received, not validated by pydicom (invalid on purpose)
            tag = tag_for_keyword(keyword)
            ds[tag] = RawDataElement(Tag(tag), dictionary_VR(tag), len(value), value, 0, False, True)
        else:
            setattr(ds, keyword, value)
    if UNIQUE[level] not in ds:
        setattr(ds, UNIQUE[level], "")
    return ds


def encoded(ds: Dataset) -> Dataset:
    """``ds`` as a peer would send it: encoded in its Specific Character Set, read back undecoded."""
    fp = io.BytesIO()
    from pydicom.filebase import DicomFileLike

    out = DicomFileLike(fp)
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    fp.seek(0)
    return read_dataset(fp, is_implicit_VR=False, is_little_endian=True)


def run(store: DataStore, model: str, level: str, keys: Mapping[str, Any] | Dataset, *,
        relational: bool = False, combined_datetime: bool = False, **find_options: Any) -> list[Dataset]:
    ds = keys if isinstance(keys, Dataset) else identifier(level, keys)
    query = compile_find(ds, model, relational=relational, combined_datetime=combined_datetime)
    return list(find(store, query, **find_options))


def names(corpus: Corpus, level: str, answers: list[Dataset]) -> set[str]:
    key = UNIQUE[level]
    return {corpus.name(level, str(ds.get(key))) for ds in answers}
