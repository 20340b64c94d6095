"""Query keys as DCMTK's ``-k`` writes them, turned into a pydicom identifier.

Accepted forms (one per key): ``PatientName=DOE*``, ``0010,0010=DOE*``, ``(0010,0010)=DOE*``,
``PatientName`` or ``PatientName=`` (a return key: empty value), and paths into sequences as in
DCMTK: ``ScheduledProcedureStepSequence[0].Modality=MR`` (the item index is optional for item 0).
Values of multi-valued VRs take DICOM's backslash: ``ModalitiesInStudy=CT\\MR``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Union

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

__all__ = ["KeyError_", "Keys", "apply_keys", "parse_key"]

#: Keys as given to the SCUs: ``-k``-style strings, or a mapping keyword/tag -> value (``None``/"" = return key).
Keys = Union[Iterable[str], Mapping[str, Any], Dataset, None]

_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)?$")
_STEP = re.compile(r"^(?P<name>[^\[\]]+)(?:\[(?P<index>\d+)\])?$")


class KeyError_(ValueError):
    """A key that names no DICOM attribute or is malformed (message says which)."""


def _tag(name: str) -> int:
    m = _TAG.match(name.strip())
    if m:
        return int(m.group(1) + m.group(2), 16)
    tag = tag_for_keyword(name.strip())
    if tag is None:
        raise KeyError_(f"{name!r} is neither a DICOM keyword nor a tag like 0010,0010")
    return int(tag)


def parse_key(text: str) -> tuple[list[tuple[int, int]], str]:
    """``"Seq[0].PatientName=X"`` -> ``([(seq_tag, 0), (name_tag, -1)], "X")``; index -1 for a leaf."""
    path, _, value = text.partition("=")
    steps: list[tuple[int, int]] = []
    parts = path.split(".") if not _TAG.match(path.strip()) else [path]
    for n, part in enumerate(parts):
        m = _STEP.match(part.strip())
        if not m:
            raise KeyError_(f"cannot parse key {text!r}")
        last = n == len(parts) - 1
        index = int(m.group("index")) if m.group("index") is not None else (-1 if last else 0)
        steps.append((_tag(m.group("name")), index))
    return steps, value


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        raise KeyError_(f"tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not in the DICOM dictionary") from None


def _set(ds: Dataset, steps: list[tuple[int, int]], value: Any) -> None:
    tag, index = steps[0]
    vr = _vr(tag)
    if len(steps) == 1:
        if vr == "SQ":
            if tag not in ds:
                ds.add_new(tag, "SQ", DicomSequence([]))
            if isinstance(value, Mapping):
                item = Dataset()
                apply_keys(item, value)
                ds[tag].value.append(item)
            return
        if value is None:
            value = ""
        if isinstance(value, str) and "\\" in value and vr not in ("LT", "ST", "UT"):
            value = value.split("\\")
        ds.add_new(tag, vr.split(" or ")[0], value)
        return
    if vr != "SQ":
        name = keyword_for_tag(tag) or f"{tag:08X}"
        raise KeyError_(f"{name} is not a sequence, so it cannot have items")
    if tag not in ds:
        ds.add_new(tag, "SQ", DicomSequence([]))
    seq = ds[tag].value
    while len(seq) <= index:
        seq.append(Dataset())
    _set(seq[index], steps[1:], value)


def apply_keys(ds: Dataset, keys: Keys) -> Dataset:
    """Add ``keys`` to ``ds`` (later keys win) and return it."""
    if keys is None:
        return ds
    if isinstance(keys, Dataset):
        for elem in keys:
            ds[elem.tag] = elem
        return ds
    if isinstance(keys, Mapping):
        for name, value in keys.items():
            steps, _ = parse_key(str(name))
            _set(ds, steps, value)
        return ds
    for text in keys:
        steps, value = parse_key(text)
        _set(ds, steps, value)
    return ds
