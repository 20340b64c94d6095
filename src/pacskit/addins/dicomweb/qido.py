"""QIDO-RS (PS3.18 10.6): a search's query parameters -> a C-FIND identifier -> the C-FIND engine.

There is one matching implementation: the parameters become a pydicom identifier (Study Root, the
level of the resource, relational since QIDO-RS never needs the unique keys of the levels above),
compiled by :func:`pacskit.store.query.compile_find` exactly as a C-FIND identifier is, so wildcards,
ranges, UID lists, PN rules, combined StudyDate + StudyTime matching, ModalitiesInStudy and sequence
matching behave the same on both interfaces. What QIDO-RS adds is done here: the default and
``includefield`` attributes, ``limit``/``offset`` (stable: ordered by the index's row id), the
RetrieveURL of each match, ``fuzzymatching`` (not supported: a Warning says so) and the Warning
headers (PS3.18 8.3.3 / 10.6.3.2).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from sqlalchemy import func, select

from pacskit.addins.dicomweb.common import DicomWebError
from pacskit.addins.dicomweb.model import to_json
from pacskit.store import Instance, Series, Study
from pacskit.dicom.codec import encode_dataset
from pacskit.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN
from pacskit.store.query import KEYS, STUDY_ROOT, STUDY_ROOT_FIND, InvalidQuery, compile_find, matching_rows
from pacskit.store.query.compile import LEVEL_ORDER, key_level
from pacskit.store.query.encode import build_response

if TYPE_CHECKING:
    from pacskit.store import DataStore

_IGNORE = pydicom_config.IGNORE

#: resource level -> C-FIND level
LEVELS = {"studies": "STUDY", "series": "SERIES", "instances": "IMAGE"}
_PK = {"STUDY": Study.pk, "SERIES": Series.pk, "IMAGE": Instance.pk}

# PS3.18 Table 10.6.3-3/-4/-5: the attributes every match carries (when available)
STUDY_DEFAULTS = (
    "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
    "ModalitiesInStudy", "ReferringPhysicianName", "RetrieveURL", "PatientName", "PatientID",
    "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_DEFAULTS = (
    "SpecificCharacterSet", "Modality", "SeriesDescription", "RetrieveURL", "SeriesInstanceUID",
    "SeriesNumber", "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "RequestAttributesSequence",
)
INSTANCE_DEFAULTS = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "RetrieveURL",
    "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
)
#: attributes we fill ourselves rather than from the index or the files
_OURS = {"RetrieveURL", "InstanceAvailability", "SpecificCharacterSet"}
_RESERVED = {"limit", "offset", "fuzzymatching", "includefield", "orderby"}
_TAG_RE = re.compile(r"\A[0-9A-Fa-f]{8}\Z")
#: separators of multiple values in a query parameter (PS3.18 8.3.4.1: comma; backslash as in DICOM)
_MULTI_VRS = {"UI", "CS", "AE", "SH", "LO"}


@dataclass(slots=True)
class Search:
    """A parsed QIDO-RS request."""

    level: str  # STUDY / SERIES / IMAGE
    identifier: Dataset
    returned: list[int]  # tags requested for the answer (defaults + includefield), in order
    limit: int | None
    offset: int
    fuzzy: bool
    warnings: list[str] = field(default_factory=list)


def _tag_of(name: str) -> int:
    """A keyword or an 8-hex-digit tag -> tag; a 400 for anything else."""
    if _TAG_RE.match(name):
        return int(name, 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise DicomWebError(400, f"unknown attribute {name[:64]!r} (a DICOM keyword or 8 hex digits)")
    return int(tag)


def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _int_param(params: Sequence[tuple[str, str]], name: str) -> int | None:
    values = [v for k, v in params if k == name]
    if not values:
        return None
    try:
        value = int(values[-1])
    except ValueError:
        raise DicomWebError(400, f"{name} must be a non-negative integer, not {values[-1][:20]!r}") from None
    if value < 0:
        raise DicomWebError(400, f"{name} must be a non-negative integer")
    return value


def parse_search(resource: str, params: Sequence[tuple[str, str]], path_keys: dict[str, str], *,
                 max_results: int | None) -> Search:
    """The search for ``resource`` (``studies`` / ``series`` / ``instances``) with query ``params``
    and the UIDs of the path (``StudyInstanceUID``, ``SeriesInstanceUID``)."""
    level = LEVELS[resource]
    depth = LEVEL_ORDER[level]
    ds = Dataset()
    ds.add(DataElement(0x00080052, "CS", level, validation_mode=_IGNORE))
    warnings: list[str] = []
    returned: list[int] = []

    def want(tag: int) -> None:
        if tag not in returned:
            returned.append(tag)

    # defaults: the level's own, and those of the levels above that the path does not fix
    defaults: list[str] = []
    if level == "STUDY" or "StudyInstanceUID" not in path_keys:
        defaults += STUDY_DEFAULTS
    if level == "SERIES" or (level == "IMAGE" and "SeriesInstanceUID" not in path_keys):
        defaults += SERIES_DEFAULTS
    if level == "IMAGE":
        defaults += INSTANCE_DEFAULTS
    for keyword in defaults:
        want(int(tag_for_keyword(keyword)))  # type: ignore[arg-type]

    include_all = False
    for key, value in params:
        if key == "includefield":
            for name in (v.strip() for v in value.split(",")):
                if not name:
                    continue
                if name == "all":
                    include_all = True
                    continue
                want(_tag_of(name.split(".")[0]))
    if include_all:
        for k in KEYS.values():
            if LEVEL_ORDER[key_level(k, STUDY_ROOT)] <= depth:
                want(k.tag)
        for keyword in STUDY_DEFAULTS + (SERIES_DEFAULTS if depth >= 2 else ()) + (INSTANCE_DEFAULTS if depth >= 3 else ()):
            want(int(tag_for_keyword(keyword)))  # type: ignore[arg-type]

    fuzzy = False
    for key, value in params:
        if key == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise DicomWebError(400, "fuzzymatching must be true or false")
            fuzzy = value.lower() == "true"
    if fuzzy:
        warnings.append('299 pacskit "The fuzzymatching parameter is not supported. Only literal matching has been performed."')

    # matching keys: the path's UIDs, then the query parameters
    matches: list[tuple[str, str]] = list(path_keys.items())
    for key, value in params:
        if key in _RESERVED:
            continue
        matches.append((key, value))
    seen: set[int] = set()
    for key, value in matches:
        if "." in key:
            seq_name, _, inner_name = key.partition(".")
            tag, inner = _tag_of(seq_name), _tag_of(inner_name)
            if _vr(tag) != "SQ" or "." in inner_name:
                raise DicomWebError(400, f"{key[:64]!r}: only one level of sequence matching is supported")
            item = Dataset()
            item.add(DataElement(inner, _vr(inner), _value(inner, value), validation_mode=_IGNORE))
            if tag in ds:
                raise DicomWebError(400, f"{seq_name} given twice")
            ds.add(DataElement(tag, "SQ", DicomSequence([item]), validation_mode=_IGNORE))
            seen.add(tag)
            continue
        tag = _tag_of(key)
        if tag in seen:
            raise DicomWebError(400, f"{key[:64]} given more than once (use a list of values)")
        seen.add(tag)
        vr = _vr(tag)
        if vr == "SQ":
            raise DicomWebError(400, f"{key[:64]} is a sequence: match its items with {key}.<keyword>")
        known = KEYS.get(keyword_for_tag(tag) or "")
        if known is None or LEVEL_ORDER[key_level(known, STUDY_ROOT)] > depth:
            warnings.append(f'299 pacskit "{keyword_for_tag(tag) or key} is not matched at {level} level (returned, not filtered)"')
        ds.add(DataElement(tag, vr, _value(tag, value), validation_mode=_IGNORE))
        want(tag)
    for tag in returned:
        if tag not in ds and keyword_for_tag(tag) not in _OURS:
            vr = _vr(tag)
            ds.add(DataElement(tag, vr, DicomSequence() if vr == "SQ" else None, validation_mode=_IGNORE))
    # the UIDs that RetrieveURL needs
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")[: depth]:
        tag = int(tag_for_keyword(keyword))  # type: ignore[arg-type]
        if tag not in ds:
            ds.add(DataElement(tag, "UI", None, validation_mode=_IGNORE))

    limit = _int_param(params, "limit")
    offset = _int_param(params, "offset") or 0
    if max_results is not None and (limit is None or limit > max_results):
        limit = max_results
    return Search(level, ds, returned, limit, offset, fuzzy, warnings)


def encoded(search: Search) -> bytes:
    """The search's identifier in Explicit VR Little Endian (for the audit trail's Query message)."""
    try:
        return encode_dataset(search.identifier, EXPLICIT_VR_LITTLE_ENDIAN)
    except Exception:  # noqa: BLE001 - a value pydicom will not encode: the audit keeps an empty query
        return b""


__all__ = ["EXPLICIT_VR_LITTLE_ENDIAN", "STUDY_ROOT_FIND", "Search", "encoded", "parse_search", "run_search"]


def _value(tag: int, text: str) -> str:
    """The identifier value of a query parameter: a list of values is comma (or backslash) separated
    for the VRs that are lists of codes or UIDs."""
    if _vr(tag) in _MULTI_VRS:
        return "\\".join(v.strip() for v in text.split(","))
    return text


@dataclass(slots=True)
class SearchResult:
    items: list[dict[str, Any]]
    remaining: int  # matches after the answered ones (0: none)


def run_search(store: DataStore, search: Search, base_url: str, *, page_size: int = 500,
               fast: bool = True) -> SearchResult:
    """Compile and run ``search`` (in a worker thread); the DICOM JSON objects of the answer.

    Answers made only of index values are written as DICOM JSON straight from the row (``fast``; the
    same objects as through a pydicom dataset, tested); answers with attributes from the files go
    through pydicom."""
    try:
        query = compile_find(search.identifier, STUDY_ROOT, relational=True)
    except InvalidQuery as exc:
        raise DicomWebError(400, exc.comment) from None
    statement = query.statement.order_by(_PK[search.level])
    engine = store.index.engine
    limited = statement
    if search.limit is not None:
        limited = limited.limit(search.limit + 1)
    if search.offset:
        limited = limited.offset(search.offset)
    query.statement = limited
    rows = list(matching_rows(engine, limited, page_size=page_size)) if search.limit is not None else None
    remaining = 0
    if rows is not None and search.limit is not None and len(rows) > search.limit:
        rows = rows[: search.limit]
        with engine.connect() as conn:
            # only the row ids: the answer's columns (some are correlated subqueries) are not needed
            ids = statement.with_only_columns(_PK[search.level], maintain_column_froms=True).order_by(None)
            total = conn.execute(select(func.count()).select_from(ids.subquery())).scalar_one()
        remaining = int(total) - search.offset - len(rows)
    wanted = set(search.returned)
    direct = fast and not query.header_tags and all(rk.source != "sop_classes" for rk in query.returns)
    items = []
    for row in rows if rows is not None else matching_rows(engine, limited, page_size=page_size):
        if direct:
            items.append(_row_json(query.returns, row._mapping, search.level, base_url, wanted))
            continue
        ds = build_response(store, query, row)
        _complete(ds, search, base_url, wanted)
        items.append(to_json(ds, None))
    return SearchResult(items, remaining)


_NOT_SPLIT = {"LT", "ST", "UT", "UR"}  # text VRs whose backslash is not a value separator
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _json_value(value: Any, kind: str, vr: str) -> dict[str, Any]:
    if value is None or value == "":
        return {"vr": vr}
    if kind == "modalities":
        values: list[Any] = [v for v in str(value).split("\\") if v]
    elif kind in ("int", "count"):
        values = [int(value)]
    elif vr == "PN":
        values = []
        for name in str(value).split("\\"):
            groups = name.split("=")
            values.append({g: text for g, text in zip(_PN_GROUPS, groups) if text} if name else None)
    elif vr in _NOT_SPLIT:
        values = [str(value)]
    else:
        values = list(str(value).split("\\"))
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _row_json(returns: Sequence[Any], mapping: Any, level: str, base: str, wanted: set[int]) -> dict[str, Any]:
    """The DICOM JSON object of one row of an index-only answer (see :func:`run_search`)."""
    out: dict[int, dict[str, Any]] = {}
    for rk in returns:
        if rk.tag not in wanted:
            continue
        if rk.source == "column":
            out[rk.tag] = _json_value(mapping[rk.label], rk.kind, rk.vr)
        else:  # requested, not known: present and empty
            out[rk.tag] = {"vr": rk.vr}
    if _AVAILABILITY in wanted:
        out[_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
    if _RETRIEVE_URL in wanted:
        def uid(tag: int) -> str:
            v = out.get(tag, {}).get("Value")
            return str(v[0]) if v else ""
        out[_RETRIEVE_URL] = {"vr": "UR", "Value": [retrieve_url(base, level, uid(_STUDY_UID), uid(_SERIES_UID), uid(_SOP_UID))]}
    return {f"{tag:08X}": out[tag] for tag in sorted(out)}


_RETRIEVE_URL = 0x00081190
_AVAILABILITY = 0x00080056
_STUDY_UID, _SERIES_UID, _SOP_UID = 0x0020000D, 0x0020000E, 0x00080018


def _complete(ds: Dataset, search: Search, base: str, wanted: set[int]) -> None:
    """Our own attributes (RetrieveURL, InstanceAvailability), and nothing that was not asked for."""
    url = retrieve_url(base, search.level, _text(ds, _STUDY_UID), _text(ds, _SERIES_UID), _text(ds, _SOP_UID))
    for tag in list(ds.keys()):
        if int(tag) not in wanted:
            del ds[tag]
    if _AVAILABILITY in wanted:
        ds.add(DataElement(_AVAILABILITY, "CS", "ONLINE", validation_mode=_IGNORE))
    if _RETRIEVE_URL in wanted:
        ds.add(DataElement(_RETRIEVE_URL, "UR", url, validation_mode=_IGNORE))


def _text(ds: Dataset, tag: int) -> str:
    elem = ds.get(tag)
    return str(elem.value) if elem is not None and elem.value else ""


def retrieve_url(base: str, level: str, study: str, series: str = "", instance: str = "") -> str:
    url = f"{base}/studies/{study}"
    if level in ("SERIES", "IMAGE"):
        url += f"/series/{series}"
    if level == "IMAGE":
        url += f"/instances/{instance}"
    return url


def iter_defaults(level: str) -> Iterable[str]:
    return {"STUDY": STUDY_DEFAULTS, "SERIES": SERIES_DEFAULTS, "IMAGE": INSTANCE_DEFAULTS}[level]
