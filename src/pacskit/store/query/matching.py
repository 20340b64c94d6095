"""The matching rules of PS3.4 C.2.2.2 as SQL conditions: universal, single value, wildcard
(``LIKE ... ESCAPE`` or SQLite ``GLOB``), UID lists, DA/TM/DT ranges, combined date-time, PN on its
search form. Values the SCP cannot understand raise :class:`InvalidQuery` with the status to answer.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydicom.dataelem import DataElement
from pydicom.datadict import keyword_for_tag
from pydicom.multival import MultiValue
from sqlalchemy import (
    Boolean,
    ColumnElement,
    and_,
    literal,
    or_,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from pacskit.store.index.models import (
    datetime_key,
    normalise_person_name,
    starts_with,
)

if TYPE_CHECKING:
    pass

from pacskit.dicom.status import DimseRefusal, Status


_LIKE_ESCAPE = "!"


class InvalidQuery(DimseRefusal, ValueError):
    """The identifier cannot be answered: ``status`` is the C-FIND failure status, ``tag`` the culprit."""



class dicom_wildcard(FunctionElement[bool]):  # noqa: N801 - an SQL construct, named like a function
    """``column`` matches a DICOM wildcard pattern: ``LIKE ... ESCAPE '!'``, or ``GLOB`` on SQLite."""

    type = Boolean()
    name = "dicom_wildcard"
    inherit_cache = True


@compiles(dicom_wildcard)
def _compile_like(element: dicom_wildcard, compiler: Any, **kw: Any) -> str:
    column, like_pattern, _ = element.clauses.clauses
    return compiler.process(column.like(like_pattern, escape=_LIKE_ESCAPE), **kw)


@compiles(dicom_wildcard, "sqlite")
def _compile_glob(element: dicom_wildcard, compiler: Any, **kw: Any) -> str:
    column, _, glob_pattern = element.clauses.clauses
    return compiler.process(column.op("GLOB")(glob_pattern), **kw)


def like_pattern(pattern: str) -> str:
    """A DICOM wildcard pattern as a LIKE pattern with escape ``!`` (``%``, ``_``, ``!`` literal)."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_!":
            out.append(_LIKE_ESCAPE + ch)
        else:
            out.append(ch)
    return "".join(out)


def glob_pattern(pattern: str) -> str:
    """A DICOM wildcard pattern as an SQLite GLOB pattern (``[`` is the only other metacharacter)."""
    return pattern.replace("[", "[[]")


def has_wildcards(value: str) -> bool:
    return "*" in value or "?" in value


def wildcard_match(column: Any, pattern: str) -> ColumnElement[bool]:
    """``column`` matches the DICOM pattern; a literal prefix is also given as an index-friendly range."""
    if pattern.strip("*") == "":
        return true()  # '' or only '*': universal matching, empty values included
    cut = min((i for i in (pattern.find("*"), pattern.find("?")) if i >= 0), default=len(pattern))
    prefix = pattern[:cut]
    if cut == len(pattern):
        return column == pattern
    if pattern == prefix + "*":
        return starts_with(column, prefix)
    condition = dicom_wildcard(column, literal(like_pattern(pattern)), literal(glob_pattern(pattern)))
    return and_(starts_with(column, prefix), condition) if prefix else condition


# --- values ----------------------------------------------------------------------------------------


def _values(elem: DataElement) -> list[str]:
    """The element's values as stripped strings ([] when empty: universal matching)."""
    value = elem.value
    if value is None or value == "" or (isinstance(value, (list, MultiValue)) and len(value) == 0):
        return []
    items = list(value) if isinstance(value, (list, MultiValue)) else [value]
    texts = [str(v).replace("\x00", "").strip() for v in items]
    if all(t == "" for t in texts):
        return []
    return texts


def _bad_value(elem: DataElement, why: str) -> InvalidQuery:
    name = keyword_for_tag(elem.tag) or f"({elem.tag.group:04X},{elem.tag.element:04X})"
    return InvalidQuery(Status.UNABLE_TO_PROCESS, f"{name}: {why}", int(elem.tag))


def parse_date(text: str) -> str:
    """A DA value as 8 digits (the ACR-NEMA form YYYY.MM.DD accepted); ``ValueError`` if not a date."""
    if len(text) == 10 and text[4] == "." and text[7] == ".":
        text = text.replace(".", "")
    if len(text) != 8 or not text.isdigit():
        raise ValueError(f"not a date: {text!r}")
    dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))  # calendar check
    return text


def parse_time(text: str) -> str:
    """A TM value without colons (``HH``, ``HHMM``, ``HHMMSS``, ``HHMMSS.F{1,6}``); ``ValueError`` if not."""
    if ":" in text:  # ACR-NEMA HH:MM:SS.frac
        text = text.replace(":", "")
    whole, dot, frac = text.partition(".")
    if (
        len(whole) not in (2, 4, 6)
        or not whole.isdigit()
        or (dot and (len(whole) != 6 or not 1 <= len(frac) <= 6 or not frac.isdigit()))
    ):
        raise ValueError(f"not a time: {text!r}")
    hh, mm, ss = int(whole[:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    if hh > 23 or mm > 59 or ss > 60:
        raise ValueError(f"not a time: {text!r}")
    return text


def time_lower(text: str) -> str:
    """Lower bound for string comparison with stored partial times: trailing zeros name no later time."""
    return text.rstrip("0").rstrip(".").rstrip("0")


def time_upper(text: str) -> str:
    """Upper bound: a partial time is its earliest instant, so pad with zeros to HHMMSS.ffffff."""
    whole, _, frac = text.partition(".")
    return whole.ljust(6, "0") + "." + frac.ljust(6, "0")


def _split_range(text: str, elem: DataElement) -> tuple[str | None, str | None]:
    if text.count("-") > 1:
        raise _bad_value(elem, f"bad range {text!r}")
    if "-" not in text:
        return text, text
    lo, _, hi = text.partition("-")
    if not lo and not hi:
        raise _bad_value(elem, "a range needs at least one end")
    return lo or None, hi or None


def date_range(elem: DataElement) -> tuple[str | None, str | None] | None:
    """(lower, upper) as 8-digit strings, either open (None); None for universal matching."""
    return _parsed_range(elem, parse_date, "one date or date range expected")


def time_range(elem: DataElement) -> tuple[str | None, str | None] | None:
    """(lower, upper) as TM without colons, either open (None); None for universal matching."""
    return _parsed_range(elem, parse_time, "one time or time range expected")


def _parsed_range(
    elem: DataElement, parse: Callable[[str], str], one_expected: str
) -> tuple[str | None, str | None] | None:
    """A single-valued range key's ends through ``parse``; a bad end is a bad value of ``elem``."""
    values = _values(elem)
    if not values:
        return None
    if len(values) > 1:
        raise _bad_value(elem, one_expected)
    lo, hi = _split_range(values[0], elem)
    try:
        lo = parse(lo) if lo else None
        hi = parse(hi) if hi else None
    except ValueError as exc:
        raise _bad_value(elem, str(exc)) from None
    return lo, hi


_DT_VALUE = r"\d{4}(?:\d{2}){0,5}(?:\.\d{1,6})?(?:[+-]\d{4})?"
_DT_RANGE = re.compile(rf"\A({_DT_VALUE})?-({_DT_VALUE})?\Z")


def datetime_range(elem: DataElement) -> tuple[str | None, str | None] | None:
    """(lower, upper) in the form :func:`~pacskit.store.index.models.datetime_key` gives, either open (None);
    None for universal matching. A value that is one DT is a single value, so ``20240105-0500`` is 5
    January at UTC-5, not a range; ``20240105-0500-20240106`` is a range."""
    values = _values(elem)
    if not values:
        return None
    if len(values) > 1:
        raise _bad_value(elem, "one date-time or date-time range expected")
    text = values[0]
    single = datetime_key(text)
    if single is not None:
        return single, single
    m = _DT_RANGE.match(text)
    if m is None or not (m.group(1) or m.group(2)):
        raise _bad_value(elem, f"not a date-time or date-time range: {text!r}")
    lo = datetime_key(m.group(1)) if m.group(1) else None
    hi = datetime_key(m.group(2)) if m.group(2) else None
    if (m.group(1) and lo is None) or (m.group(2) and hi is None):
        raise _bad_value(elem, f"not a date-time range: {text!r}")
    return lo, hi


def _time_ge(column: Any, lower: str) -> ColumnElement[bool]:
    return column >= time_lower(lower)


def _time_le(column: Any, upper: str) -> ColumnElement[bool]:
    return column <= time_upper(upper)


def _date_condition(column: Any, rng: tuple[str | None, str | None]) -> ColumnElement[bool]:
    lo, hi = rng
    if lo is not None and lo == hi:
        return column == lo
    parts = []
    if lo is not None:
        parts.append(column >= lo)
    if hi is not None:
        parts.append(column <= hi)
    return and_(*parts)


def _time_condition(column: Any, rng: tuple[str | None, str | None]) -> ColumnElement[bool]:
    lo, hi = rng
    parts = []
    if lo is not None:
        parts.append(_time_ge(column, lo))
    if hi is not None:
        parts.append(_time_le(column, hi))
    return and_(*parts)


def combined_datetime_condition(
    date_col: Any, time_col: Any, dates: tuple[str | None, str | None], times: tuple[str | None, str | None]
) -> ColumnElement[bool]:
    """StudyDate + StudyTime as one date-time range (PS3.4 C.2.2.2.5.1)."""
    d1, d2 = dates
    t1, t2 = times
    parts = []
    if d1 is not None:
        if t1 is None:
            parts.append(date_col >= d1)
        else:
            parts.append(or_(date_col > d1, and_(date_col == d1, _time_ge(time_col, t1))))
    elif t1 is not None:
        parts.append(date_col.is_not(None))
    if d2 is not None:
        if t2 is None:
            parts.append(date_col <= d2)
        else:
            parts.append(or_(date_col < d2, and_(date_col == d2, _time_le(time_col, t2))))
    return and_(*parts) if parts else true()


def _pn_condition(column: Any, value: str) -> ColumnElement[bool]:
    """Case-insensitive PN matching on the normalised search column (see the module docstring)."""
    if value.strip("*") == "" and value:
        return true()
    norm = normalise_person_name(value) or ""
    if has_wildcards(value) and value.endswith("*") and not norm.endswith("*"):
        norm += "*"  # normalisation dropped trailing '^' before the final '*'
    whole = wildcard_match(column, norm)
    if "=" in norm:
        return whole
    options = [whole]
    if not norm.endswith("*"):  # "DOE*" already covers "DOE*=*"
        options.append(wildcard_match(column, norm + "=*"))
    if not norm.isascii():
        # an ideographic or phonetic group: look in the other component groups too
        options += [wildcard_match(column, "*=" + norm), wildcard_match(column, "*=" + norm + "=*")]
    return or_(*options)


# --- compiling an identifier -----------------------------------------------------------------------
