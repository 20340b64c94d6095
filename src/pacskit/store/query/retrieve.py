"""What a C-MOVE / C-GET identifier selects: unique keys -> stored instances.

A retrieve identifier carries only the Query/Retrieve Level and *unique keys* at and above that level
(PS3.4 C.4.2.2.1, C.4.3.2.1, C.6.1.1 and C.6.2.1): PatientID at PATIENT level (Patient Root only),
StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, each of the UID keys possibly a list of UIDs at
the retrieve level. So retrieve needs no wildcard matching: :func:`parse_identifier` checks the
identifier and :class:`RetrieveSelection` turns it into one indexed SQL statement (bound parameters,
unique-key equality or ``IN`` lists, SQLAlchemy Core), read a page at a time.

Rules, and the status a violation gets (the add-in answers it with an Error Comment):

* QueryRetrieveLevel missing, or not one the information model has (PATIENT in Study Root, unless
  ``patient_level_in_study_root``: Orthanc sends it) -> 0xA900;
* the unique key of the retrieve level missing or empty -> 0xA900;
* a non-empty attribute that is not a unique key at or above the level (a key of a lower level,
  PatientName, a wildcard...) -> 0xA900; empty attributes are ignored, since they constrain nothing
  and some SCUs send a return-key template out of habit;
* more than one value where one is required (PatientID; UID keys above the retrieve level) -> 0xA900;
* a UID that cannot be one (:func:`~pacskit.store.index.extract.is_usable_uid`: empty, spaces, wildcards,
  path separators, over 128 characters; harmless PS3.5 9.1 deviations such as a leading zero are
  stored, so they are retrieved) or a list longer than :data:`MAX_UIDS` -> 0xC000.

Keys above the retrieve level are optional (they only narrow the selection), which is what relational
retrieve allows and costs nothing for a hierarchical one. PatientID matches every patient with that
ID, whatever the IssuerOfPatientID.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import Select, and_, bindparam, func, select

from pacskit.dicom.status import Status
from pacskit.store.index.database import Index
from pacskit.store.index.extract import is_usable_uid
from pacskit.store.index.models import Instance, Patient, Series, Study

Model = Literal["PATIENT", "STUDY"]
Level = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]

#: Most UIDs accepted in one list-of-UIDs key (keeps every statement within every backend's limits).
MAX_UIDS = 1000
#: Rows read per page (one short read transaction each).
PAGE_SIZE = 500

_LEVELS: dict[str, tuple[str, ...]] = {
    "PATIENT": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    "STUDY": ("STUDY", "SERIES", "IMAGE"),
}
_LEVEL_KEY = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
_ORDER = ("PATIENT", "STUDY", "SERIES", "IMAGE")
#: Attributes allowed besides the unique keys.
_ALWAYS_ALLOWED = {"QueryRetrieveLevel", "SpecificCharacterSet"}


class InvalidIdentifier(ValueError):
    """The identifier cannot select instances; ``status`` is the DIMSE status to answer."""

    def __init__(self, message: str, status: int = Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, tag: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.tag = tag


@dataclass(frozen=True, slots=True)
class RetrieveKeys:
    """The unique keys of a checked identifier. Empty tuples mean "not constrained"."""

    level: Level
    patient_id: str | None = None
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RetrieveItem:
    """One instance to send: where its file is and how it is encoded."""

    pk: int
    blob_key: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    return [text] if text else []


def parse_identifier(ds: Dataset, model: Model, *, patient_level_in_study_root: bool = False) -> RetrieveKeys:
    """Check a C-MOVE/C-GET identifier against ``model`` ("PATIENT" or "STUDY" root).

    ``patient_level_in_study_root`` accepts QueryRetrieveLevel PATIENT (key PatientID) on the Study
    Root SOP classes, which the standard does not define but some SCUs send (Orthanc's REST ``/move``
    at Patient level does); it is then read as in Patient Root.

    Raises :class:`InvalidIdentifier` (see the module docstring for the rules and statuses).
    """
    raw_level = ds.get("QueryRetrieveLevel", None)
    level = str(raw_level or "").strip().upper()
    if not level:
        raise InvalidIdentifier("QueryRetrieveLevel is missing", tag=0x00080052)
    if level == "PATIENT" and model == "STUDY" and patient_level_in_study_root:
        model = "PATIENT"
    if level not in _LEVELS[model]:
        root = "Patient" if model == "PATIENT" else "Study"
        raise InvalidIdentifier(f"level {level[:16]} is not in {root} Root", tag=0x00080052)
    depth = _ORDER.index(level)
    first = _ORDER.index("PATIENT" if model == "PATIENT" else "STUDY")
    allowed = {_LEVEL_KEY[lv] for lv in _ORDER[first : depth + 1]}

    for elem in ds:
        if elem.tag.group in (0x0000, 0x0002) or elem.tag.element == 0x0000:
            continue  # group lengths; file meta never belongs here but is harmless
        keyword = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if keyword in _ALWAYS_ALLOWED or keyword in allowed:
            continue
        if elem.VR == "SQ":
            if elem.value:
                raise InvalidIdentifier(f"{keyword} is not a unique key", tag=int(elem.tag))
            continue
        if elem.value not in (None, "", b"") and _values(elem.value):
            raise InvalidIdentifier(f"{keyword[:30]} is not a unique key at {level}", tag=int(elem.tag))

    def uids(keyword: str, *, many: bool) -> tuple[str, ...]:
        tag = _TAGS[keyword]
        values = _values(ds.get(keyword, None))
        if len(values) > 1 and not many:
            raise InvalidIdentifier(f"{keyword} above the retrieve level must be one UID", tag=tag)
        if len(values) > MAX_UIDS:
            raise InvalidIdentifier(f"more than {MAX_UIDS} UIDs in {keyword}", Status.UNABLE_TO_PROCESS, tag)
        for v in values:
            if not is_usable_uid(v):
                raise InvalidIdentifier(f"invalid UID in {keyword}", Status.UNABLE_TO_PROCESS, tag)
        return tuple(dict.fromkeys(values))  # drop repeats, keep order

    patient_id: str | None = None
    if "PatientID" in allowed:
        ids = _values(ds.get("PatientID", None))
        if len(ids) > 1:
            raise InvalidIdentifier("PatientID must be a single value", tag=0x00100020)
        if ids and any(c in ids[0] for c in "*?"):
            raise InvalidIdentifier("PatientID must not contain wildcards", tag=0x00100020)
        patient_id = ids[0] if ids else None
    keys = RetrieveKeys(
        level=level,  # type: ignore[arg-type]
        patient_id=patient_id,
        study_uids=uids("StudyInstanceUID", many=level == "STUDY") if "StudyInstanceUID" in allowed else (),
        series_uids=uids("SeriesInstanceUID", many=level == "SERIES") if "SeriesInstanceUID" in allowed else (),
        sop_uids=uids("SOPInstanceUID", many=level == "IMAGE") if "SOPInstanceUID" in allowed else (),
    )
    required = _LEVEL_KEY[level]
    present = {
        "PatientID": patient_id is not None,
        "StudyInstanceUID": bool(keys.study_uids),
        "SeriesInstanceUID": bool(keys.series_uids),
        "SOPInstanceUID": bool(keys.sop_uids),
    }[required]
    if not present:
        raise InvalidIdentifier(f"{required} is required at {level} level", tag=_TAGS[required])
    return keys


_TAGS = {
    "PatientID": 0x00100020,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SOPInstanceUID": 0x00080018,
}


def _match(column: Any, values: Sequence[str]) -> Any:
    return column == values[0] if len(values) == 1 else column.in_(list(values))


@dataclass(frozen=True, slots=True)
class _ShapeKeys:
    """:class:`RetrieveKeys`' shape with bound parameters for values (:meth:`RetrieveSelection._prefetch`)."""

    patient_id: Any = None
    study_uids: tuple[Any, ...] = ()
    series_uids: tuple[Any, ...] = ()
    sop_uids: tuple[Any, ...] = ()


#: :meth:`RetrieveSelection._prefetch`'s compiled statements, by (backend, driver, parameter style,
#: keys present..., limit, server version)
_PREFETCH_SQL: dict[tuple[Any, ...], Any] = {}


class RetrieveSelection:
    """The instances ``keys`` select in ``index``, counted once and then read a page at a time.

    The selection is frozen at construction (:attr:`count` and the highest row id are read in one
    transaction), so instances received while a retrieve runs are not sent by it. Instances deleted
    meanwhile are simply not returned by :meth:`__iter__`.

    One statement per page: instances joined to series, study and patient only as far as the keys
    need, filtered by unique-key equality / ``IN`` lists (all indexed: the UID columns are unique, the
    foreign keys indexed, (PatientID, Issuer) unique), ordered by row id for keyset paging.

    ``prefetch``: for a caller that reads every item at once anyway (WADO-RS lists the whole
    selection before it sends a byte). The first page is read at construction; a selection that fits
    in it (an instance, a series of up to ``page_size``) is then counted, classified and listed by
    that one statement, and :meth:`page` answers from the rows kept: one query in one transaction
    instead of four in three (count, classes, the page, the empty page that ends the listing). A
    larger selection is counted as without ``prefetch``.
    """

    def __init__(self, index: Index, keys: RetrieveKeys, *, page_size: int = PAGE_SIZE, prefetch: bool = False) -> None:
        self.index = index
        self.keys = keys
        self.page_size = page_size
        #: every item of the selection, when ``prefetch`` found it fits in one page (else None)
        self._rows: list[RetrieveItem] | None = None
        self.count: int
        self._max_pk: int
        self.sop_classes: list[tuple[str, str]]
        with index.reading() as s:
            if prefetch:
                rows = self._prefetch(s, page_size + 1)
                if len(rows) <= page_size:
                    self._rows = rows
                    self.count = len(rows)
                    self._max_pk = rows[-1].pk if rows else 0
                    self.sop_classes = list(
                        dict.fromkeys((r.sop_class_uid, r.transfer_syntax_uid) for r in rows))
                    return
            row = s.execute(self._statement(select(func.count(Instance.pk), func.max(Instance.pk)))).one()
            self.count = int(row[0] or 0)
            self._max_pk = int(row[1] or 0)
            self.sop_classes = [
                (str(c), str(t or ""))
                for c, t in s.execute(
                    self._statement(select(Instance.sop_class_uid, Instance.transfer_syntax_uid).distinct())
                ).all()
            ]

    def _statement(self, stmt: Select[Any], keys: Any = None) -> Select[Any]:
        """``stmt`` joined and filtered by the keys (``keys``: the same shape with bound parameters
        in place of the values, for :meth:`_prefetch`'s compiled statements)."""
        k = self.keys if keys is None else keys
        conditions = []
        if k.sop_uids:
            conditions.append(_match(Instance.sop_instance_uid, k.sop_uids))
        need_series = bool(k.series_uids or k.study_uids or k.patient_id is not None)
        need_study = bool(k.study_uids or k.patient_id is not None)
        stmt = stmt.select_from(Instance)
        if need_series:
            stmt = stmt.join(Series, Series.pk == Instance.series_fk)
            if k.series_uids:
                conditions.append(_match(Series.series_instance_uid, k.series_uids))
        if need_study:
            stmt = stmt.join(Study, Study.pk == Series.study_fk)
            if k.study_uids:
                conditions.append(_match(Study.study_instance_uid, k.study_uids))
        if k.patient_id is not None:
            stmt = stmt.join(Patient, Patient.pk == Study.patient_fk)
            conditions.append(Patient.patient_id == k.patient_id)
        return stmt.where(and_(*conditions))

    def _prefetch(self, session: Any, limit: int) -> list[RetrieveItem]:
        """The first ``limit`` items. For keys of one value each (what WADO-RS sends: a study, a
        series, an instance) by a statement compiled once per shape and run on the DBAPI: the ORM
        would generate the statement's cache key again on every call (a third of a WADO-RS
        retrieve's index time, py-spy), for the same SQL."""
        k = self.keys
        conn = session.connection()
        dialect = conn.dialect
        shape = (dialect.name, dialect.driver, dialect.paramstyle, bool(k.sop_uids), bool(k.series_uids),
                 bool(k.study_uids), k.patient_id is not None, limit, getattr(dialect, "server_version_info", None))
        compiled = _PREFETCH_SQL.get(shape)
        if compiled is None and max(len(k.sop_uids), len(k.series_uids), len(k.study_uids)) <= 1:
            params = _ShapeKeys(
                patient_id=bindparam("patient_id") if k.patient_id is not None else None,
                study_uids=(bindparam("study_uid"),) if k.study_uids else (),
                series_uids=(bindparam("series_uid"),) if k.series_uids else (),
                sop_uids=(bindparam("sop_uid"),) if k.sop_uids else ())
            compiled = self._page_statement(0, None, limit, params).compile(dialect=dialect)
            if "POSTCOMPILE" not in compiled.string:  # nothing expanded at run time: the SQL is final
                _PREFETCH_SQL[shape] = compiled
            else:
                compiled = None
        if compiled is None or max(len(k.sop_uids), len(k.series_uids), len(k.study_uids)) > 1:
            return self._items(session, self._page_statement(0, None, limit))
        given = {"patient_id": k.patient_id, "study_uid": k.study_uids[0] if k.study_uids else None,
                 "series_uid": k.series_uids[0] if k.series_uids else None,
                 "sop_uid": k.sop_uids[0] if k.sop_uids else None}
        values = compiled.construct_params({name: v for name, v in given.items() if v is not None})
        args: Any = tuple(values[n] for n in compiled.positiontup or ()) if compiled.positional else values
        return [
            RetrieveItem(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4] or ""), int(r[5]))
            for r in conn.exec_driver_sql(compiled.string, args).all()
        ]

    def _page_statement(self, after_pk: int, max_pk: int | None, limit: int, keys: Any = None) -> Select[Any]:
        stmt = self._statement(
            select(
                Instance.pk,
                Instance.blob_key,
                Instance.sop_class_uid,
                Instance.sop_instance_uid,
                Instance.transfer_syntax_uid,
                Instance.size,
            ),
            keys,
        ).where(Instance.pk > after_pk)
        if max_pk is not None:
            stmt = stmt.where(Instance.pk <= max_pk)
        return stmt.order_by(Instance.pk).limit(limit)

    @staticmethod
    def _items(session: Any, stmt: Select[Any]) -> list[RetrieveItem]:
        return [
            RetrieveItem(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4] or ""), int(r[5]))
            for r in session.execute(stmt).all()
        ]

    def page(self, after_pk: int) -> list[RetrieveItem]:
        """Up to ``page_size`` items with a row id above ``after_pk`` (within the frozen selection)."""
        if self._rows is not None:
            return [r for r in self._rows if r.pk > after_pk][: self.page_size]
        with self.index.reading() as s:
            return self._items(s, self._page_statement(after_pk, self._max_pk, self.page_size))

    def __iter__(self) -> Iterator[RetrieveItem]:
        if self._rows is not None:
            yield from self._rows
            return
        last = 0
        while True:
            rows = self.page(last)
            if not rows:
                return
            yield from rows
            last = rows[-1].pk
