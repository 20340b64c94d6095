"""Study search for the workstation: the local index (SQL: one query for the page, one for the total)
and remote AEs (C-FIND through ``base.dicom_request``, sorted and paged on the collected answers).

The filters are C-FIND matching keys, matched as C-FIND matches them (:mod:`pacskit.store.query`):
wildcards ``*`` / ``?``, case-insensitive person names, date ranges.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from pacskit.dicom.status import Status
from pacskit.net import RequestedContext
from pacskit.store.query import STUDY_ROOT, STUDY_ROOT_FIND, InvalidQuery, compile_find
from pacskit.store.query.encode import build_response

#: the filters of GET /api/studies, in the order of the form
FILTERS: tuple[str, ...] = (
    "PatientName", "PatientID", "AccessionNumber", "StudyDate", "ModalitiesInStudy", "StudyDescription",
    "StudyInstanceUID",
)
#: what every study item has (and what may be sorted on)
STUDY_KEYS: tuple[str, ...] = (
    "StudyInstanceUID", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyDate", "StudyTime", "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_KEYS: tuple[str, ...] = (
    "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
)
MAX_LIMIT = 1000


class SearchError(Exception):
    """A search that cannot be answered: ``status`` is the HTTP status, ``detail`` the sentence."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class StudyQuery:
    filters: Mapping[str, str]
    sort: str = "StudyDate"
    descending: bool = True
    limit: int = 50
    offset: int = 0

    def __post_init__(self) -> None:
        if self.sort not in STUDY_KEYS:
            raise SearchError(400, f"cannot sort on {self.sort!r}: one of {', '.join(STUDY_KEYS)}")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise SearchError(400, f"limit must be 1..{MAX_LIMIT}")
        if self.offset < 0:
            raise SearchError(400, "offset must be >= 0")
        unknown = set(self.filters) - set(FILTERS)
        if unknown:
            raise SearchError(400, f"unknown filter {sorted(unknown)[0]!r}")


def identifier(level: str, keys: Sequence[str], filters: Mapping[str, str]) -> Dataset:
    """A Study Root C-FIND identifier: ``keys`` returned, ``filters`` matched."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in (*keys, *(k for k in filters if k not in keys)):
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        # matching values (C*, 2024-) are not valid values of their VR: the query engine checks them
        ds[tag] = DataElement(tag, dictionary_VR(tag), filters.get(keyword, "") or "", validation_mode=config.IGNORE)
    return ds


def _json(ds: Dataset) -> dict[str, Any]:
    if "QueryRetrieveLevel" in ds:
        del ds.QueryRetrieveLevel
    return ds.to_json_dict(bulk_data_threshold=1 << 20, bulk_data_element_handler=lambda _e: "")


def _column(find: Any, tag: int | None) -> Any:
    """The SELECT column that returns ``tag`` (to sort on)."""
    label = next(rk.label for rk in find.returns if rk.source == "column" and rk.tag == tag)
    return find.statement.selected_columns[label]


def search_local(store: Any, query: StudyQuery) -> tuple[int, list[dict[str, Any]]]:
    """(total, items of the page) from the index. Blocking: run it in a thread."""
    try:
        find = compile_find(identifier("STUDY", STUDY_KEYS, query.filters), STUDY_ROOT)
    except InvalidQuery as exc:
        raise SearchError(400, f"bad filter: {exc}") from exc
    column = _column(find, tag_for_keyword(query.sort))
    pk = find.statement.selected_columns["_pk"]
    order = [column.desc(), pk.desc()] if query.descending else [column.asc(), pk.asc()]
    page = find.statement.order_by(*order).limit(query.limit).offset(query.offset)
    count = select(func.count()).select_from(find.statement.subquery())
    with store.index.engine.connect() as conn:
        total = int(conn.execute(count).scalar_one())
        rows = conn.execute(page).fetchall()
    return total, [_json(build_response(store, find, row)) for row in rows]


def series_local(store: Any, study_uid: str) -> list[dict[str, Any]]:
    find = compile_find(identifier("SERIES", SERIES_KEYS, {"StudyInstanceUID": study_uid}), STUDY_ROOT)
    number = _column(find, 0x00200011)
    with store.index.engine.connect() as conn:
        rows = conn.execute(find.statement.order_by(number)).fetchall()
    return [_json(build_response(store, find, row)) for row in rows]


async def find_remote(dicom_request: Any, ae_title: str, ds: Dataset, timeout: float,
                      limit: int = 10000) -> list[Dataset]:
    """C-FIND (Study Root) ``ds`` at ``ae_title`` through the server's ``dicom_request``.

    Raises :class:`SearchError`: 404 for an AE not in the registry, 502 when it cannot be reached or
    answers a failure, 504 when it takes longer than ``timeout`` seconds."""
    from pacskit.net import NetError
    from pacskit.services.dicom_request import UnknownAE

    answers: list[Dataset] = []

    async def run() -> None:
        async with await dicom_request.associate(ae_title, [RequestedContext(STUDY_ROOT_FIND)]) as assoc:
            async for status, answer in assoc.find(STUDY_ROOT_FIND, ds):
                if status in (Status.PENDING, Status.PENDING_WARNING) and answer is not None:
                    if len(answers) < limit:
                        answers.append(answer)
                elif status != Status.SUCCESS:
                    raise SearchError(502, f"{ae_title} answered the C-FIND with status 0x{status:04X}")

    try:
        await asyncio.wait_for(run(), timeout)
    except UnknownAE as exc:
        raise SearchError(404, str(exc)) from None
    except TimeoutError:
        raise SearchError(504, f"{ae_title} did not answer the C-FIND within {timeout:g} s") from None
    except (NetError, OSError) as exc:
        raise SearchError(502, f"{ae_title} cannot be queried: {exc}") from None
    return answers


def _sort_value(ds: Dataset, keyword: str) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        return (0, "")
    if keyword.startswith("NumberOf"):
        try:
            return (1, int(value))
        except (TypeError, ValueError):
            return (0, "")
    return (1, str(value))


async def search_remote(dicom_request: Any, ae_title: str, query: StudyQuery,
                        timeout: float) -> tuple[int, list[dict[str, Any]]]:
    answers = await find_remote(dicom_request, ae_title, identifier("STUDY", STUDY_KEYS, query.filters), timeout)
    answers.sort(key=lambda ds: _sort_value(ds, query.sort), reverse=query.descending)
    page = answers[query.offset: query.offset + query.limit]
    return len(answers), [_json(_only(ds, STUDY_KEYS)) for ds in page]


async def series_remote(dicom_request: Any, ae_title: str, study_uid: str, timeout: float) -> list[dict[str, Any]]:
    answers = await find_remote(dicom_request, ae_title,
                                identifier("SERIES", SERIES_KEYS, {"StudyInstanceUID": study_uid}), timeout)
    answers.sort(key=lambda ds: _sort_value(ds, "SeriesNumber"))
    return [_json(_only(ds, SERIES_KEYS)) for ds in answers]


def _only(ds: Dataset, keys: Sequence[str]) -> Dataset:
    """The answer without QueryRetrieveLevel / RetrieveAETitle noise, every key present."""
    out = Dataset()
    for keyword in keys:
        setattr(out, keyword, ds.get(keyword, "") if keyword in ds else "")
    if "SpecificCharacterSet" in ds:
        out.SpecificCharacterSet = ds.SpecificCharacterSet
    return out
