"""DIMSE status codes (PS3.7 Annex C and the service classes of PS3.4) and their categories.

One enum for every status pacskit sends or checks: the engine, the store's refusals, the add-ins and
the client compare against and answer with its members, never with hex literals. Members are ints,
so ``Response(Status.OUT_OF_RESOURCES)`` and ``rsp.status == Status.SUCCESS`` work as before.
Several codes mean different things in different services (0xA900, 0xC000, 0xB000); each meaning has
its name, with the same value.
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """DIMSE status codes."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    PENDING_WARNING = 0xFF01  # C-FIND: optional keys not supported
    CANCEL = 0xFE00
    WARNING = 0x0001
    # C-STORE (PS3.4 B.2.3)
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
    # C-FIND / C-MOVE / C-GET (PS3.4 C.4)
    OUT_OF_RESOURCES_MATCHES = 0xA701
    OUT_OF_RESOURCES_SUBOPS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801
    SUBOPS_COMPLETE_WITH_FAILURES = 0xB000
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    UNABLE_TO_PROCESS = 0xC000
    # General (PS3.7 C)
    NO_SUCH_ATTRIBUTE = 0x0105
    INVALID_ATTRIBUTE_VALUE = 0x0106
    ATTRIBUTE_LIST_ERROR = 0x0107
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_INSTANCE = 0x0112
    NO_SUCH_EVENT_TYPE = 0x0113
    MISTYPED_ARGUMENT = 0x0114
    INVALID_ARGUMENT_VALUE = 0x0115
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
    INVALID_OBJECT_INSTANCE = 0x0117
    NO_SUCH_SOP_CLASS = 0x0118
    CLASS_INSTANCE_CONFLICT = 0x0119
    MISSING_ATTRIBUTE = 0x0120
    MISSING_ATTRIBUTE_VALUE = 0x0121
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NO_SUCH_ACTION_TYPE = 0x0123
    REFUSED_NOT_AUTHORIZED = 0x0124
    DUPLICATE_TRANSACTION_UID = 0x0131
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNIZED_OPERATION = 0x0211
    MISTYPED_ARGUMENT_N = 0x0212
    RESOURCE_LIMITATION = 0x0213


#: The statuses of a response that is not the last one.
PENDING_STATUSES: frozenset[int] = frozenset({Status.PENDING, Status.PENDING_WARNING})


def status_category(status: int) -> str:
    """``"Success"``, ``"Warning"``, ``"Failure"``, ``"Cancel"`` or ``"Pending"`` (PS3.7 C.1)."""
    if status == Status.SUCCESS:
        return "Success"
    if status in PENDING_STATUSES:
        return "Pending"
    if status == Status.CANCEL:
        return "Cancel"
    if status in (Status.WARNING, Status.ATTRIBUTE_LIST_ERROR, Status.ATTRIBUTE_VALUE_OUT_OF_RANGE) or 0xB000 <= status <= 0xBFFF:
        return "Warning"
    return "Failure"


class DimseRefusal(Exception):
    """A request a service refuses (or warns about): ``status`` is the DIMSE status to answer,
    ``comment`` one line for Error Comment, ``tag`` the attribute at fault (Offending Element /
    Attribute Identifier List) or None. The services' own refusals derive from it."""

    def __init__(self, status: int, comment: str, tag: int | None = None) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.tag = tag


__all__ = ["PENDING_STATUSES", "DimseRefusal", "Status", "status_category"]
