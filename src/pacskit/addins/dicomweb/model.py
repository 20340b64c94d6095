"""The DICOM JSON (PS3.18 F) and Native DICOM Model XML (PS3.19 A.1) forms of a dataset.

:func:`to_json` converts a dataset read with ``defer_size`` without loading deferred values: a
binary value above the bulk data threshold (or deferred) becomes a ``BulkDataURI`` naming the
``/bulk/`` resource of its instance, so the metadata of a study never reads its pixel data.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag

#: Value representations whose values can be bulk data (PS3.18 F.2.7)
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
PIXEL_DATA = 0x7FE00010

#: builds the BulkDataURI of an element from its path: (tag, item index, tag, ...)
UriFor = Callable[[tuple[int, ...]], str]


def _tag_hex(tag: int) -> str:
    return f"{tag:08X}"


def _vr_of(raw: Any) -> str:
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(raw.tag)) if keyword_for_tag(raw.tag) else "UN"
    except KeyError:
        return "UN"


def to_json(ds: Dataset, uri_for: UriFor | None, *, threshold: int = 1024, path: tuple[int, ...] = ()) -> dict[str, Any]:
    """The DICOM JSON object of ``ds``; binary values longer than ``threshold`` and deferred values
    become BulkDataURIs (``uri_for``) or, without ``uri_for``, InlineBinary."""
    out: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        t = int(tag)
        if (t >> 16) in (0x0000, 0x0002) or (t & 0xFFFF) == 0:
            continue  # command / file meta / group lengths are not part of the dataset model
        raw = ds.get_item(tag)
        vr = _vr_of(raw)
        if isinstance(raw, RawDataElement):
            deferred = raw.value is None and raw.length not in (0, None)
            if vr in BULK_VRS or deferred:
                if deferred or (raw.length or 0) > threshold:
                    out[_tag_hex(t)] = _bulk(vr if vr in BULK_VRS or vr != "UN" else "UN", path + (t,), uri_for, ds, tag)
                    continue
        elem: DataElement = ds[tag]
        vr = elem.VR
        if vr == "SQ":
            items = [to_json(item, uri_for, threshold=threshold, path=path + (t, i)) for i, item in enumerate(elem.value or [])]
            out[_tag_hex(t)] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        if vr in BULK_VRS:
            value = elem.value
            if not value:
                out[_tag_hex(t)] = {"vr": vr}
            elif len(value) > threshold:
                out[_tag_hex(t)] = _bulk(vr, path + (t,), uri_for, ds, tag)
            else:
                out[_tag_hex(t)] = {"vr": vr, "InlineBinary": base64.b64encode(bytes(value)).decode("ascii")}
            continue
        try:
            out[_tag_hex(t)] = elem.to_json_dict(None, 0)
        except Exception:  # noqa: BLE001 - a malformed stored value: return it as absent rather than fail
            out[_tag_hex(t)] = {"vr": vr}
    return out


def _bulk(vr: str, path: tuple[int, ...], uri_for: UriFor | None, ds: Dataset, tag: Any) -> dict[str, Any]:
    if uri_for is not None:
        return {"vr": vr, "BulkDataURI": uri_for(path)}
    value = ds[tag].value
    return {"vr": vr, "InlineBinary": base64.b64encode(bytes(value or b"")).decode("ascii")}


# --- Native DICOM Model (XML) -------------------------------------------------------------------------


def json_to_xml(obj: dict[str, Any]) -> str:
    """The ``NativeDicomModel`` XML of a DICOM JSON object (PS3.19 A.1)."""
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel xml:space="preserve">']
    _xml_attributes(obj, parts)
    parts.append("</NativeDicomModel>\n")
    return "".join(parts)


def _xml_attributes(obj: dict[str, Any], parts: list[str]) -> None:
    for tag_hex, attr in obj.items():
        tag = int(tag_hex, 16)
        vr = attr.get("vr", "UN")
        keyword = keyword_for_tag(tag) if not (tag >> 16) % 2 else ""
        kw = f" keyword={quoteattr(keyword)}" if keyword else ""
        parts.append(f'<DicomAttribute tag="{tag_hex}" vr="{vr}"{kw}>')
        if "BulkDataURI" in attr:
            parts.append(f"<BulkData uri={quoteattr(attr['BulkDataURI'])}/>")
        elif "InlineBinary" in attr:
            parts.append(f"<InlineBinary>{attr['InlineBinary']}</InlineBinary>")
        elif vr == "SQ":
            for n, item in enumerate(attr.get("Value", []), 1):
                parts.append(f'<Item number="{n}">')
                _xml_attributes(item, parts)
                parts.append("</Item>")
        elif vr == "PN":
            for n, value in enumerate(attr.get("Value", []), 1):
                parts.append(f'<PersonName number="{n}">')
                for group in ("Alphabetic", "Ideographic", "Phonetic"):
                    text = (value or {}).get(group)
                    if text is None:
                        continue
                    parts.append(f"<{group}>")
                    names = (text.split("^") + [""] * 5)[:5]
                    for label, name in zip(("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix"), names):
                        if name:
                            parts.append(f"<{label}>{escape(name)}</{label}>")
                    parts.append(f"</{group}>")
                parts.append("</PersonName>")
        else:
            for n, value in enumerate(attr.get("Value", []), 1):
                text = "" if value is None else str(value)
                parts.append(f'<Value number="{n}">{escape(text)}</Value>')
        parts.append("</DicomAttribute>")


def xml_to_json(text: str) -> dict[str, Any]:
    """The DICOM JSON object of a ``NativeDicomModel`` XML dataset (PS3.19 A.1), for STOW-RS.

    A document with a DTD is refused (no entity expansion from a client); ``ValueError`` says what
    is wrong."""
    import xml.etree.ElementTree as ET

    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ValueError("a DTD is not allowed")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"malformed XML: {exc}") from None
    if root.tag != "NativeDicomModel":
        raise ValueError(f"root element is {root.tag[:40]!r}, not NativeDicomModel")
    return _xml_dataset(root)


def _xml_dataset(node: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in node.findall("DicomAttribute"):
        tag = (attr.get("tag") or "").upper()
        if len(tag) != 8 or any(c not in "0123456789ABCDEF" for c in tag):
            raise ValueError(f"DicomAttribute without a valid tag: {tag[:20]!r}")
        vr = attr.get("vr") or (dictionary_VR(int(tag, 16)) if keyword_for_tag(int(tag, 16)) else "UN")
        entry: dict[str, Any] = {"vr": vr}
        bulk, inline = attr.find("BulkData"), attr.find("InlineBinary")
        if bulk is not None:
            entry["BulkDataURI"] = bulk.get("uri") or bulk.get("uuid") or ""
        elif inline is not None:
            entry["InlineBinary"] = (inline.text or "").strip()
        elif vr == "SQ":
            items = sorted(attr.findall("Item"), key=lambda e: int(e.get("number", "0")))
            if items:
                entry["Value"] = [_xml_dataset(item) for item in items]
        elif vr == "PN":
            names = []
            for pn in sorted(attr.findall("PersonName"), key=lambda e: int(e.get("number", "0"))):
                value: dict[str, str] = {}
                for group in ("Alphabetic", "Ideographic", "Phonetic"):
                    g = pn.find(group)
                    if g is None:
                        continue
                    components = [(g.findtext(label) or "") for label in
                                  ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")]
                    value[group] = "^".join(components).rstrip("^")
                names.append(value)
            if names:
                entry["Value"] = names
        else:
            values: list[Any] = []
            for v in sorted(attr.findall("Value"), key=lambda e: int(e.get("number", "0"))):
                values.append(_xml_value(vr, v.text or ""))
            if values:
                entry["Value"] = values
        out[tag] = entry
    return out


def _xml_value(vr: str, text: str) -> Any:
    if vr in ("US", "SS", "UL", "SL", "UV", "SV", "IS"):
        return int(text) if text.strip() else None
    if vr in ("FL", "FD", "DS"):
        return float(text) if text.strip() else None
    if vr == "AT":
        return text.strip().upper()
    return text
