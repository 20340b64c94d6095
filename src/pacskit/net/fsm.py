"""The DICOM Upper Layer state machine (PS3.8 section 9.2, Tables 9-1 .. 9-10).

The table is data: ``TRANSITIONS[(state, event)]`` names the action. :class:`pacskit.net.dul.UpperLayer`
implements one method per action (``ae_1`` .. ``aa_8``) and calls :func:`next_action` for every event.
A (state, event) pair absent from the table is a local programming error for local primitives; for
PDU events every reachable state is listed, exactly as in the standard.
"""

from __future__ import annotations

from enum import IntEnum


class State(IntEnum):
    """PS3.8 Table 9-1 states."""

    STA1 = 1  # Idle
    STA2 = 2  # Transport connection open (awaiting A-ASSOCIATE-RQ PDU)
    STA3 = 3  # Awaiting local A-ASSOCIATE response primitive
    STA4 = 4  # Awaiting transport connection opening to complete
    STA5 = 5  # Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU
    STA6 = 6  # Association established and ready for data transfer
    STA7 = 7  # Awaiting A-RELEASE-RP PDU
    STA8 = 8  # Awaiting local A-RELEASE response primitive
    STA9 = 9  # Release collision requestor side; awaiting A-RELEASE response primitive
    STA10 = 10  # Release collision acceptor side; awaiting A-RELEASE-RP PDU
    STA11 = 11  # Release collision requestor side; awaiting A-RELEASE-RP PDU
    STA12 = 12  # Release collision acceptor side; awaiting A-RELEASE response primitive
    STA13 = 13  # Awaiting transport connection close indication


class Event(IntEnum):
    """PS3.8 Table 9-2 events."""

    EVT1 = 1  # A-ASSOCIATE request (local user)
    EVT2 = 2  # Transport connect confirmation (local transport service)
    EVT3 = 3  # A-ASSOCIATE-AC PDU received
    EVT4 = 4  # A-ASSOCIATE-RJ PDU received
    EVT5 = 5  # Transport connection indication
    EVT6 = 6  # A-ASSOCIATE-RQ PDU received
    EVT7 = 7  # A-ASSOCIATE response primitive (accept)
    EVT8 = 8  # A-ASSOCIATE response primitive (reject)
    EVT9 = 9  # P-DATA request primitive
    EVT10 = 10  # P-DATA-TF PDU received
    EVT11 = 11  # A-RELEASE request primitive
    EVT12 = 12  # A-RELEASE-RQ PDU received
    EVT13 = 13  # A-RELEASE-RP PDU received
    EVT14 = 14  # A-RELEASE response primitive
    EVT15 = 15  # A-ABORT request primitive
    EVT16 = 16  # A-ABORT PDU received
    EVT17 = 17  # Transport connection closed indication
    EVT18 = 18  # ARTIM timer expired
    EVT19 = 19  # Unrecognized or invalid PDU received


# Events caused by the arrival of a PDU, by PDU type.
PDU_EVENTS = {1: Event.EVT6, 2: Event.EVT3, 3: Event.EVT4, 4: Event.EVT10, 5: Event.EVT12, 6: Event.EVT13, 7: Event.EVT16}

_S = State
_E = Event


def _fill(event: Event, default: str, **overrides: str) -> dict[tuple[State, Event], str]:
    """Rows of Table 9-10 that are mostly one action for states 3..12 with a few exceptions."""
    row = {(s, event): default for s in (_S.STA3, _S.STA5, _S.STA6, _S.STA7, _S.STA8, _S.STA9, _S.STA10, _S.STA11, _S.STA12)}
    for name, action in overrides.items():
        row[(State[name.upper()], event)] = action
    return row


TRANSITIONS: dict[tuple[State, Event], str] = {
    (_S.STA1, _E.EVT1): "ae_1",
    (_S.STA4, _E.EVT2): "ae_2",
    **_fill(_E.EVT3, "aa_8", sta2="aa_1", sta5="ae_3", sta13="aa_6"),
    **_fill(_E.EVT4, "aa_8", sta2="aa_1", sta5="ae_4", sta13="aa_6"),
    (_S.STA1, _E.EVT5): "ae_5",
    **_fill(_E.EVT6, "aa_8", sta2="ae_6", sta13="aa_7"),
    (_S.STA3, _E.EVT7): "ae_7",
    (_S.STA3, _E.EVT8): "ae_8",
    (_S.STA6, _E.EVT9): "dt_1",
    (_S.STA8, _E.EVT9): "ar_7",
    **_fill(_E.EVT10, "aa_8", sta2="aa_1", sta6="dt_2", sta7="ar_6", sta13="aa_6"),
    (_S.STA6, _E.EVT11): "ar_1",
    **_fill(_E.EVT12, "aa_8", sta2="aa_1", sta6="ar_2", sta7="ar_8", sta13="aa_6"),
    **_fill(_E.EVT13, "aa_8", sta2="aa_1", sta7="ar_3", sta10="ar_10", sta11="ar_3", sta13="aa_6"),
    (_S.STA8, _E.EVT14): "ar_4",
    (_S.STA9, _E.EVT14): "ar_9",
    (_S.STA12, _E.EVT14): "ar_4",
    **_fill(_E.EVT15, "aa_1", sta4="aa_2"),
    **_fill(_E.EVT16, "aa_3", sta2="aa_2", sta13="aa_2"),
    **_fill(_E.EVT17, "aa_4", sta2="aa_5", sta4="aa_4", sta13="ar_5"),
    (_S.STA2, _E.EVT18): "aa_2",
    (_S.STA13, _E.EVT18): "ar_5",
    **_fill(_E.EVT19, "aa_8", sta2="aa_1", sta13="aa_7"),
}


def next_action(state: State, event: Event) -> str | None:
    """The action for ``event`` in ``state``, or ``None`` when the standard defines none."""
    return TRANSITIONS.get((state, event))
