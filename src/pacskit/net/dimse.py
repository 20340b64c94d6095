"""DIMSE command sets (PS3.7 section 9 and 10, Annex E).

Command sets are always Implicit VR Little Endian and use a closed dictionary of group 0000 elements,
so this module encodes and decodes them directly with :mod:`struct`: every C-STORE crosses this code
twice, and going through pydicom here would cost more than the rest of the data path.

A :class:`Command` is a plain ``dict`` keyed by DICOM keyword (``"MessageID"``, ``"AffectedSOPClassUID"``)
so handlers read it like a pydicom dataset; unknown elements survive decoding under a ``"(0000,xxxx)"`` key
and are re-encoded verbatim.

Elements outside group 0000 do not belong in a command set (PS3.7 6.3.1), but real peers send them:
Orthanc 1.10 puts the Failed SOP Instance UID List (0008,0058) into a failed C-GET response. Like DCMTK
and Orthanc we are liberal: such elements are kept raw under a ``"(gggg,eeee)"`` key (see
:attr:`Command.foreign_elements`), never re-encoded, and the association logs a warning naming them.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any

from pacskit.net.errors import DimseError


class CommandField(IntEnum):
    """Command Field (0000,0100) values (PS3.7 Annex E)."""

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_GET_RQ = 0x0010
    C_GET_RSP = 0x8010
    C_FIND_RQ = 0x0020
    C_FIND_RSP = 0x8020
    C_MOVE_RQ = 0x0021
    C_MOVE_RSP = 0x8021
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    N_EVENT_REPORT_RQ = 0x0100
    N_EVENT_REPORT_RSP = 0x8100
    N_GET_RQ = 0x0110
    N_GET_RSP = 0x8110
    N_SET_RQ = 0x0120
    N_SET_RSP = 0x8120
    N_ACTION_RQ = 0x0130
    N_ACTION_RSP = 0x8130
    N_CREATE_RQ = 0x0140
    N_CREATE_RSP = 0x8140
    N_DELETE_RQ = 0x0150
    N_DELETE_RSP = 0x8150
    C_CANCEL_RQ = 0x0FFF

    @property
    def is_response(self) -> bool:
        return bool(self & 0x8000)

    @property
    def service(self) -> str:
        """``"C-STORE"``, ``"N-ACTION"``…, the name handlers are registered under."""
        return self.name.rsplit("_", 1)[0].replace("_", "-")


NO_DATASET = 0x0101
HAS_DATASET = 0x0000  # any value other than 0x0101 means a dataset follows; we send 0x0000

PRIORITY_MEDIUM = 0
PRIORITY_HIGH = 1
PRIORITY_LOW = 2

# keyword -> (element number, VR); group is always 0x0000
COMMAND_ELEMENTS: dict[str, tuple[int, str]] = {
    "CommandGroupLength": (0x0000, "UL"),
    "AffectedSOPClassUID": (0x0002, "UI"),
    "RequestedSOPClassUID": (0x0003, "UI"),
    "CommandField": (0x0100, "US"),
    "MessageID": (0x0110, "US"),
    "MessageIDBeingRespondedTo": (0x0120, "US"),
    "MoveDestination": (0x0600, "AE"),
    "Priority": (0x0700, "US"),
    "CommandDataSetType": (0x0800, "US"),
    "Status": (0x0900, "US"),
    "OffendingElement": (0x0901, "AT"),
    "ErrorComment": (0x0902, "LO"),
    "ErrorID": (0x0903, "US"),
    "AffectedSOPInstanceUID": (0x1000, "UI"),
    "RequestedSOPInstanceUID": (0x1001, "UI"),
    "EventTypeID": (0x1002, "US"),
    "AttributeIdentifierList": (0x1005, "AT"),
    "ActionTypeID": (0x1008, "US"),
    "NumberOfRemainingSuboperations": (0x1020, "US"),
    "NumberOfCompletedSuboperations": (0x1021, "US"),
    "NumberOfFailedSuboperations": (0x1022, "US"),
    "NumberOfWarningSuboperations": (0x1023, "US"),
    "MoveOriginatorApplicationEntityTitle": (0x1030, "AE"),
    "MoveOriginatorMessageID": (0x1031, "US"),
}
_BY_ELEMENT = {elem: (kw, vr) for kw, (elem, vr) in COMMAND_ELEMENTS.items()}
_ORDER = {kw: elem for kw, (elem, _) in COMMAND_ELEMENTS.items()}

_ELEM_HDR = struct.Struct("<HHL")
_US = struct.Struct("<H")
_UL = struct.Struct("<L")


class Command(dict[str, Any]):
    """A DIMSE command set: keyword -> value (``int`` for US/UL, ``str`` for UI/AE/LO, list of ints for AT)."""

    @property
    def command_field(self) -> int:
        return int(self["CommandField"])

    @property
    def has_dataset(self) -> bool:
        return bool(self.get("CommandDataSetType", NO_DATASET) != NO_DATASET)

    @property
    def status(self) -> int:
        return int(self.get("Status", 0xFFFF))

    @property
    def foreign_elements(self) -> dict[int, bytes]:
        """Elements outside group 0000 the peer put into this command set, as tag -> raw value bytes
        (Implicit VR Little Endian). They are reported, not used, and never sent on."""
        return {_key_tag(kw): value for kw, value in self.items() if kw[:1] == "(" and not kw.startswith("(0000,")}

    def foreign_uids(self, tag: int) -> list[str]:
        """The UI values of foreign element ``tag`` (e.g. 0x00080058, Failed SOP Instance UID List),
        or ``[]`` if the command set has none."""
        raw = self.foreign_elements.get(tag)
        if not raw:
            return []
        text = raw.decode("ascii", "replace").strip(" \x00")
        return [uid.strip(" \x00") for uid in text.split("\\") if uid.strip(" \x00")]

    def encode(self) -> bytes:
        """Encode as Implicit VR Little Endian, with a correct Command Group Length first."""
        chunks: list[bytes] = []
        elements = sorted(
            (_ORDER.get(kw) if kw in _ORDER else int(kw[6:10], 16), kw)
            for kw in self
            if kw != "CommandGroupLength" and (kw in _ORDER or kw.startswith("(0000,"))  # foreign: not sent
        )
        for elem, kw in elements:
            value = self[kw]
            if value is None:
                continue
            vr = _BY_ELEMENT[elem][1] if elem in _BY_ELEMENT else "raw"
            if vr == "US":
                raw = _US.pack(value)
            elif vr == "UL":
                raw = _UL.pack(value)
            elif vr == "UI":
                # "replace": a response echoes the request's UIDs, and a peer's undecodable UID must not
                # make the answer itself fail to encode (a finding of fuzz/fuzz_pdu.py)
                raw = value.encode("ascii", "replace")
                if len(raw) & 1:
                    raw += b"\x00"
            elif vr in ("AE", "LO"):
                raw = value.encode("ascii", "replace") if vr == "AE" else value.encode("utf-8", "replace")
                if len(raw) & 1:
                    raw += b" "
            elif vr == "AT":
                tags = [value] if isinstance(value, int) else value
                raw = b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in tags)
            else:  # unknown element kept raw
                raw = bytes(value)
            chunks.append(_ELEM_HDR.pack(0x0000, elem, len(raw)) + raw)
        body = b"".join(chunks)
        return _ELEM_HDR.pack(0x0000, 0x0000, 4) + _UL.pack(len(body)) + body

    @classmethod
    def decode(cls, data: bytes) -> Command:
        cmd = cls()
        pos, end = 0, len(data)
        while pos < end:
            if end - pos < 8:
                raise DimseError("truncated command set element header")
            group, elem, length = _ELEM_HDR.unpack_from(data, pos)
            pos += 8
            if length == 0xFFFFFFFF or pos + length > end:
                raise DimseError(f"command set element ({group:04X},{elem:04X}) has an invalid length {length}")
            raw = data[pos : pos + length]
            pos += length
            if group != 0x0000:  # not allowed by PS3.7 6.3.1, sent by real peers: kept raw, reported
                cmd[f"({group:04X},{elem:04X})"] = bytes(raw)
                continue
            known = _BY_ELEMENT.get(elem)
            if known is None:
                cmd[f"(0000,{elem:04X})"] = bytes(raw)
                continue
            kw, vr = known
            try:
                if vr == "US":
                    cmd[kw] = _US.unpack(raw)[0]
                elif vr == "UL":
                    cmd[kw] = _UL.unpack(raw)[0]
                elif vr in ("UI", "AE"):
                    cmd[kw] = raw.decode("ascii", "replace").strip(" \x00")
                elif vr == "LO":
                    cmd[kw] = raw.decode("utf-8", "replace").strip(" \x00")
                elif vr == "AT":
                    cmd[kw] = [
                        (g << 16) | e for g, e in struct.iter_unpack("<HH", raw)
                    ]
            except struct.error as exc:
                raise DimseError(f"command element {kw} has a bad length {length} for VR {vr}") from exc
        if "CommandField" not in cmd:
            raise DimseError("command set has no Command Field (0000,0100)")
        return cmd


def _key_tag(key: str) -> int:
    """``"(0008,0058)"`` -> 0x00080058."""
    return (int(key[1:5], 16) << 16) | int(key[6:10], 16)


def request_command(
    command_field: CommandField,
    message_id: int,
    sop_class_uid: str,
    *,
    has_dataset: bool,
    **elements: Any,
) -> Command:
    """Build a request command set.

    C-services and N-EVENT-REPORT / N-CREATE use Affected SOP Class UID; N-GET, N-SET, N-ACTION and
    N-DELETE use Requested SOP Class UID (PS3.7 Table 10.3-x), which this function picks for the caller.
    """
    uid_key = (
        "RequestedSOPClassUID"
        if command_field
        in (CommandField.N_GET_RQ, CommandField.N_SET_RQ, CommandField.N_ACTION_RQ, CommandField.N_DELETE_RQ)
        else "AffectedSOPClassUID"
    )
    cmd = Command(
        {
            uid_key: sop_class_uid,
            "CommandField": int(command_field),
            "MessageID": message_id,
            "CommandDataSetType": HAS_DATASET if has_dataset else NO_DATASET,
        }
    )
    cmd.update(elements)
    return cmd


def response_command(request: Command, status: int, *, has_dataset: bool = False, **elements: Any) -> Command:
    """Build the response to ``request``, echoing the SOP class / instance UIDs as PS3.7 requires."""
    cmd = Command(
        {
            "CommandField": request.command_field | 0x8000,
            "MessageIDBeingRespondedTo": request.get("MessageID", 0),
            "CommandDataSetType": HAS_DATASET if has_dataset else NO_DATASET,
            "Status": int(status),
        }
    )
    sop_class = request.get("AffectedSOPClassUID") or request.get("RequestedSOPClassUID")
    if sop_class:
        cmd["AffectedSOPClassUID"] = sop_class
    instance = request.get("AffectedSOPInstanceUID") or request.get("RequestedSOPInstanceUID")
    if instance:
        cmd["AffectedSOPInstanceUID"] = instance
    cmd.update({k: v for k, v in elements.items() if v is not None})
    return cmd
