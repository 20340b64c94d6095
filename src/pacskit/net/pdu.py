"""DICOM Upper Layer PDUs and their items (PS3.8 section 9.3).

Only association-control PDUs are decoded into objects here; they are small and rare, so clarity wins.
P-DATA-TF is the hot path and never becomes an object: :mod:`pacskit.net.dul` parses its PDV items in
place as bytes arrive, and :func:`p_data_header` builds outgoing headers without intermediate copies.

Every decoder raises :class:`PduError` with the A-ABORT reason the state machine should send, so a
malformed PDU from a hostile peer ends in a correct A-ABORT and never in an unhandled exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pacskit.net.errors import PduError

# PDU types (PS3.8 Table 9-11 .. 9-26)
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

PDU_NAMES = {
    A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
    A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    A_RELEASE_RQ: "A-RELEASE-RQ",
    A_RELEASE_RP: "A-RELEASE-RP",
    A_ABORT: "A-ABORT",
}

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"

# A-ABORT sources and reasons (PS3.8 Table 9-26)
ABORT_SOURCE_SERVICE_USER = 0
ABORT_SOURCE_SERVICE_PROVIDER = 2
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_REASON_UNRECOGNIZED_PDU = 1
ABORT_REASON_UNEXPECTED_PDU = 2
ABORT_REASON_UNRECOGNIZED_PARAMETER = 4
ABORT_REASON_UNEXPECTED_PARAMETER = 5
ABORT_REASON_INVALID_PARAMETER = 6

ABORT_REASON_TEXT = {
    0: "reason not specified",
    1: "unrecognized PDU",
    2: "unexpected PDU",
    4: "unrecognized PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}

# A-ASSOCIATE-RJ result / source / reason (PS3.8 Table 9-21)
RJ_PERMANENT = 1
RJ_TRANSIENT = 2
RJ_SOURCE_USER = 1
RJ_SOURCE_ACSE = 2
RJ_SOURCE_PRESENTATION = 3

# (source, reason) -> text
RJ_REASON_TEXT = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized",
    (1, 7): "called AE title not recognized",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}

# Presentation context results (PS3.8 Table 9-18)
PC_ACCEPTANCE = 0
PC_USER_REJECTION = 1
PC_NO_REASON = 2
PC_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
PC_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# User identity types (PS3.7 Table D.3-14)
USER_IDENTITY_USERNAME = 1
USER_IDENTITY_USERNAME_PASSWORD = 2
USER_IDENTITY_KERBEROS = 3
USER_IDENTITY_SAML = 4
USER_IDENTITY_JWT = 5

_HDR = struct.Struct(">BBL")
_ITEM_HDR = struct.Struct(">BBH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">L")
_PDV_HDR = struct.Struct(">LBB")


def encode_ae_title(title: str) -> bytes:
    """Encode an AE title to its 16-byte, space padded wire form."""
    raw = title.encode("ascii", "strict")
    if not 0 < len(raw.strip()) <= 16:
        raise ValueError(f"AE title must be 1-16 characters: {title!r}")
    return raw.ljust(16, b" ")


def is_valid_ae_title(title: str) -> bool:
    """``title`` as decoded by :func:`decode_ae_title` is a usable AE title: 1-16 characters of the
    default repertoire (ASCII), not only spaces. A title a peer sent that fails this is refused, never
    echoed back."""
    return title.isascii() and 0 < len(title.strip()) <= 16


def decode_ae_title(raw: bytes) -> str:
    """Decode a wire AE title; leading and trailing spaces (and NULs) are not significant."""
    return raw.decode("ascii", "replace").strip(" \x00")


def _uid(raw: bytes) -> str:
    # Some peers pad UIDs in PDU items with a trailing NUL (as in datasets); it is never significant.
    return raw.decode("ascii", "replace").rstrip("\x00 ")


def _item(item_type: int, payload: bytes) -> bytes:
    if len(payload) > 0xFFFF:
        raise ValueError(f"PDU item 0x{item_type:02X} too long ({len(payload)} bytes)")
    return _ITEM_HDR.pack(item_type, 0, len(payload)) + payload


def _lenprefixed(value: bytes) -> bytes:
    return _U16.pack(len(value)) + value


@dataclass(slots=True)
class PresentationContextRQ:
    """One proposed presentation context: an abstract syntax and the transfer syntaxes offered for it."""

    id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass(slots=True)
class PresentationContextAC:
    """The acceptor's answer for one proposed context (``transfer_syntax`` is empty unless accepted)."""

    id: int
    result: int
    transfer_syntax: str = ""


@dataclass(slots=True)
class RoleSelection:
    """SCP/SCU Role Selection sub-item (PS3.7 D.3.3.4): the roles the *requestor* may take."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(slots=True)
class UserIdentityRQ:
    """User Identity Negotiation request (PS3.7 D.3.3.7), kept on the association for access control."""

    type: int
    positive_response_requested: bool
    primary: bytes
    secondary: bytes = b""


@dataclass(slots=True)
class CommonExtendedNegotiation:
    """SOP Class Common Extended Negotiation sub-item (PS3.7 D.3.3.6)."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class UserInformation:
    """User Information item (0x50) and its sub-items; unknown sub-items are kept raw and ignored."""

    max_pdu_length: int | None = None
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    async_ops: tuple[int, int] | None = None  # (max invoked, max performed)
    roles: list[RoleSelection] = field(default_factory=list)
    extended_negotiation: dict[str, bytes] = field(default_factory=dict)
    common_extended_negotiation: list[CommonExtendedNegotiation] = field(default_factory=list)
    user_identity: UserIdentityRQ | None = None
    user_identity_response: bytes | None = None  # only in A-ASSOCIATE-AC
    unknown_items: list[tuple[int, bytes]] = field(default_factory=list)

    def encode(self) -> bytes:
        parts: list[bytes] = []
        if self.max_pdu_length is not None:
            parts.append(_item(0x51, _U32.pack(self.max_pdu_length)))
        if self.implementation_class_uid:
            parts.append(_item(0x52, self.implementation_class_uid.encode("ascii")))
        if self.async_ops is not None:
            parts.append(_item(0x53, struct.pack(">HH", *self.async_ops)))
        for role in self.roles:
            parts.append(
                _item(
                    0x54,
                    _lenprefixed(role.sop_class_uid.encode("ascii"))
                    + bytes((int(role.scu_role), int(role.scp_role))),
                )
            )
        if self.implementation_version_name:
            parts.append(_item(0x55, self.implementation_version_name.encode("ascii")))
        for uid, info in self.extended_negotiation.items():
            parts.append(_item(0x56, _lenprefixed(uid.encode("ascii")) + info))
        for cx in self.common_extended_negotiation:
            related = b"".join(_lenprefixed(u.encode("ascii")) for u in cx.related_general_sop_classes)
            parts.append(
                _item(
                    0x57,
                    _lenprefixed(cx.sop_class_uid.encode("ascii"))
                    + _lenprefixed(cx.service_class_uid.encode("ascii"))
                    + _lenprefixed(related),
                )
            )
        if self.user_identity is not None:
            ui = self.user_identity
            parts.append(
                _item(
                    0x58,
                    bytes((ui.type, int(ui.positive_response_requested)))
                    + _lenprefixed(ui.primary)
                    + _lenprefixed(ui.secondary),
                )
            )
        if self.user_identity_response is not None:
            parts.append(_item(0x59, _lenprefixed(self.user_identity_response)))
        return _item(0x50, b"".join(parts))

    @classmethod
    def decode(cls, data: bytes) -> UserInformation:
        info = cls()
        for item_type, value in _iter_items(data):
            try:
                if item_type == 0x51:
                    (info.max_pdu_length,) = _U32.unpack(value)
                elif item_type == 0x52:
                    info.implementation_class_uid = _uid(value)
                elif item_type == 0x53:
                    info.async_ops = struct.unpack(">HH", value)
                elif item_type == 0x54:
                    n = _U16.unpack_from(value)[0]
                    uid = _uid(value[2 : 2 + n])
                    scu, scp = value[2 + n], value[3 + n]
                    info.roles.append(RoleSelection(uid, bool(scu), bool(scp)))
                elif item_type == 0x55:
                    info.implementation_version_name = value.decode("ascii", "replace").strip()
                elif item_type == 0x56:
                    n = _U16.unpack_from(value)[0]
                    info.extended_negotiation[_uid(value[2 : 2 + n])] = bytes(value[2 + n :])
                elif item_type == 0x57:
                    pos = 0
                    fields: list[bytes] = []
                    for _ in range(3):
                        n = _U16.unpack_from(value, pos)[0]
                        fields.append(value[pos + 2 : pos + 2 + n])
                        pos += 2 + n
                    related: list[str] = []
                    rel, rpos = fields[2], 0
                    while rpos < len(rel):
                        n = _U16.unpack_from(rel, rpos)[0]
                        related.append(_uid(rel[rpos + 2 : rpos + 2 + n]))
                        rpos += 2 + n
                    info.common_extended_negotiation.append(
                        CommonExtendedNegotiation(_uid(fields[0]), _uid(fields[1]), related)
                    )
                elif item_type == 0x58:
                    ui_type, positive = value[0], value[1]
                    n = _U16.unpack_from(value, 2)[0]
                    primary = bytes(value[4 : 4 + n])
                    m = _U16.unpack_from(value, 4 + n)[0] if len(value) >= 6 + n else 0
                    secondary = bytes(value[6 + n : 6 + n + m])
                    if len(primary) != n or len(secondary) != m:
                        raise IndexError
                    info.user_identity = UserIdentityRQ(ui_type, bool(positive), primary, secondary)
                elif item_type == 0x59:
                    n = _U16.unpack_from(value)[0]
                    info.user_identity_response = bytes(value[2 : 2 + n])
                else:
                    info.unknown_items.append((item_type, bytes(value)))
            except (IndexError, struct.error) as exc:
                raise PduError(
                    f"malformed user information sub-item 0x{item_type:02X}", ABORT_REASON_INVALID_PARAMETER
                ) from exc
        return info


def _iter_items(data: bytes | memoryview) -> list[tuple[int, bytes]]:
    """Split a run of items (type, reserved, 2-byte length) into (type, value) pairs."""
    items: list[tuple[int, bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 4:
            raise PduError("truncated PDU item header", ABORT_REASON_INVALID_PARAMETER)
        item_type, _, length = _ITEM_HDR.unpack_from(data, pos)
        pos += 4
        if pos + length > end:
            raise PduError(
                f"PDU item 0x{item_type:02X} claims {length} bytes, only {end - pos} left",
                ABORT_REASON_INVALID_PARAMETER,
            )
        items.append((item_type, bytes(data[pos : pos + length])))
        pos += length
    return items


@dataclass(slots=True)
class AssociateRQ:
    """A-ASSOCIATE-RQ PDU (PS3.8 9.3.2)."""

    called_ae_title: str
    calling_ae_title: str
    contexts: list[PresentationContextRQ]
    user_info: UserInformation
    application_context: str = APPLICATION_CONTEXT_NAME
    protocol_version: int = 1

    def encode(self) -> bytes:
        items = []
        for pc in self.contexts:
            sub = _item(0x30, pc.abstract_syntax.encode("ascii")) + b"".join(
                _item(0x40, ts.encode("ascii")) for ts in pc.transfer_syntaxes
            )
            items.append(_item(0x20, bytes((pc.id, 0, 0, 0)) + sub))
        return _encode_associate(A_ASSOCIATE_RQ, self, items)

    @classmethod
    def decode(cls, body: bytes) -> AssociateRQ:
        version, called, calling, items = _decode_associate_fixed(body)
        app_ctx = ""
        contexts: list[PresentationContextRQ] = []
        user_info: UserInformation | None = None
        for item_type, value in _iter_items(items):
            if item_type == 0x10:
                app_ctx = _uid(value)
            elif item_type == 0x20:
                if len(value) < 4:
                    raise PduError("truncated presentation context item", ABORT_REASON_INVALID_PARAMETER)
                abstract = ""
                transfers: list[str] = []
                for sub_type, sub in _iter_items(value[4:]):
                    if sub_type == 0x30:
                        abstract = _uid(sub)
                    elif sub_type == 0x40:
                        transfers.append(_uid(sub))
                    else:
                        raise PduError(
                            f"unexpected sub-item 0x{sub_type:02X} in presentation context",
                            ABORT_REASON_UNEXPECTED_PARAMETER,
                        )
                contexts.append(PresentationContextRQ(value[0], abstract, transfers))
            elif item_type == 0x50:
                user_info = UserInformation.decode(value)
            else:
                raise PduError(
                    f"unrecognized item 0x{item_type:02X} in A-ASSOCIATE-RQ", ABORT_REASON_UNRECOGNIZED_PARAMETER
                )
        if user_info is None:
            raise PduError("A-ASSOCIATE-RQ without user information item", ABORT_REASON_INVALID_PARAMETER)
        return cls(called, calling, contexts, user_info, app_ctx, version)


@dataclass(slots=True)
class AssociateAC:
    """A-ASSOCIATE-AC PDU (PS3.8 9.3.3)."""

    called_ae_title: str
    calling_ae_title: str
    contexts: list[PresentationContextAC]
    user_info: UserInformation
    application_context: str = APPLICATION_CONTEXT_NAME
    protocol_version: int = 1

    def encode(self) -> bytes:
        items = []
        for pc in self.contexts:
            # PS3.8 9.3.3.2: the transfer syntax sub-item is present but not significant when rejected.
            ts = pc.transfer_syntax if pc.result == PC_ACCEPTANCE else ""
            items.append(_item(0x21, bytes((pc.id, 0, pc.result, 0)) + _item(0x40, ts.encode("ascii"))))
        return _encode_associate(A_ASSOCIATE_AC, self, items)

    @classmethod
    def decode(cls, body: bytes) -> AssociateAC:
        version, called, calling, items = _decode_associate_fixed(body)
        app_ctx = ""
        contexts: list[PresentationContextAC] = []
        user_info = UserInformation()
        for item_type, value in _iter_items(items):
            if item_type == 0x10:
                app_ctx = _uid(value)
            elif item_type == 0x21:
                if len(value) < 4:
                    raise PduError("truncated presentation context item", ABORT_REASON_INVALID_PARAMETER)
                ts = ""
                for sub_type, sub in _iter_items(value[4:]):
                    if sub_type == 0x40:
                        ts = _uid(sub)
                contexts.append(PresentationContextAC(value[0], value[2], ts))
            elif item_type == 0x50:
                user_info = UserInformation.decode(value)
            else:
                raise PduError(
                    f"unrecognized item 0x{item_type:02X} in A-ASSOCIATE-AC", ABORT_REASON_UNRECOGNIZED_PARAMETER
                )
        return cls(called, calling, contexts, user_info, app_ctx, version)


def _encode_associate(pdu_type: int, pdu: AssociateRQ | AssociateAC, context_items: list[bytes]) -> bytes:
    """The layout A-ASSOCIATE-RQ and -AC share: fixed fields, application context, contexts, user info."""
    body = [
        struct.pack(">HH", pdu.protocol_version, 0),
        encode_ae_title(pdu.called_ae_title),
        encode_ae_title(pdu.calling_ae_title),
        bytes(32),
        _item(0x10, pdu.application_context.encode("ascii")),
        *context_items,
        pdu.user_info.encode(),
    ]
    payload = b"".join(body)
    return _HDR.pack(pdu_type, 0, len(payload)) + payload


def _decode_associate_fixed(body: bytes) -> tuple[int, str, str, memoryview]:
    if len(body) < 68:
        raise PduError(f"A-ASSOCIATE PDU body of {len(body)} bytes is shorter than 68", ABORT_REASON_INVALID_PARAMETER)
    (version,) = _U16.unpack_from(body, 0)
    called = decode_ae_title(body[4:20])
    calling = decode_ae_title(body[20:36])
    return version, called, calling, memoryview(body)[68:]


@dataclass(slots=True, frozen=True)
class AssociateRJ:
    """A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""

    result: int
    source: int
    reason: int

    def encode(self) -> bytes:
        return _HDR.pack(A_ASSOCIATE_RJ, 0, 4) + bytes((0, self.result, self.source, self.reason))

    @classmethod
    def decode(cls, body: bytes) -> AssociateRJ:
        if len(body) != 4:
            raise PduError("A-ASSOCIATE-RJ body must be 4 bytes", ABORT_REASON_INVALID_PARAMETER)
        return cls(body[1], body[2], body[3])

    def describe(self) -> str:
        kind = {1: "rejected-permanent", 2: "rejected-transient"}.get(self.result, f"result {self.result}")
        source = {1: "service-user", 2: "service-provider (ACSE)", 3: "service-provider (presentation)"}.get(
            self.source, f"source {self.source}"
        )
        reason = RJ_REASON_TEXT.get((self.source, self.reason), f"reason {self.reason}")
        return f"{kind}, {source}: {reason}"


@dataclass(slots=True, frozen=True)
class Abort:
    """A-ABORT PDU (PS3.8 9.3.8)."""

    source: int
    reason: int = 0

    def encode(self) -> bytes:
        return _HDR.pack(A_ABORT, 0, 4) + bytes((0, 0, self.source, self.reason))

    @classmethod
    def decode(cls, body: bytes) -> Abort:
        if len(body) != 4:
            raise PduError("A-ABORT body must be 4 bytes", ABORT_REASON_INVALID_PARAMETER)
        return cls(body[2], body[3])

    def describe(self) -> str:
        if self.source == ABORT_SOURCE_SERVICE_USER:
            return "aborted by the peer (service-user)"
        return f"aborted by the peer's service provider: {ABORT_REASON_TEXT.get(self.reason, self.reason)}"


RELEASE_RQ_PDU = _HDR.pack(A_RELEASE_RQ, 0, 4) + bytes(4)
RELEASE_RP_PDU = _HDR.pack(A_RELEASE_RP, 0, 4) + bytes(4)


def p_data_header(pdv_length: int, context_id: int, control: int) -> bytes:
    """Header of a P-DATA-TF PDU that carries exactly one PDV of ``pdv_length`` data bytes.

    ``control`` is the message control header: bit 0 set for a command, bit 1 set on the last fragment.
    """
    return _HDR.pack(P_DATA_TF, 0, pdv_length + 6) + _PDV_HDR.pack(pdv_length + 2, context_id, control)


PDU_HEADER = _HDR
PDV_HEADER = _PDV_HDR
