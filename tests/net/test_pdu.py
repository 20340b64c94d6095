"""PDU and command-set codecs: round trips, and wire compatibility with pynetdicom's and pydicom's decoders.

Also spot checks of the Upper Layer state table against PS3.8 Table 9-10.
"""

from __future__ import annotations

import io
import struct

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pynetdicom import pdu as pnd_pdu
from pynetdicom import pdu_primitives as prim
from pynetdicom.presentation import build_context

from pacskit.net import pdu
from pacskit.net.dimse import Command, CommandField, request_command, response_command
from pacskit.net.errors import DimseError, PduError
from pacskit.net.fsm import TRANSITIONS, Event, State, next_action

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
STORAGE_SERVICE = "1.2.840.10008.4.2"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def full_user_info() -> pdu.UserInformation:
    return pdu.UserInformation(
        max_pdu_length=16384,
        implementation_class_uid="1.2.826.0.1.3680043.9.1234",
        implementation_version_name="PACSKIT_TEST",
        async_ops=(3, 2),
        roles=[pdu.RoleSelection(CT, True, True)],
        extended_negotiation={STUDY_FIND: b"\x01\x01\x00"},
        common_extended_negotiation=[pdu.CommonExtendedNegotiation(ENHANCED_SR, STORAGE_SERVICE, [BASIC_TEXT_SR])],
        user_identity=pdu.UserIdentityRQ(pdu.USER_IDENTITY_USERNAME_PASSWORD, True, b"alice", b"s3cret"),
    )


def full_rq() -> pdu.AssociateRQ:
    return pdu.AssociateRQ(
        "CALLED_AE",
        "CALLING_AE",
        [
            pdu.PresentationContextRQ(1, VERIFICATION, [IMPLICIT]),
            pdu.PresentationContextRQ(3, CT, [EXPLICIT, IMPLICIT]),
        ],
        full_user_info(),
    )


def _by_type(items: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for item in items:
        out.setdefault(type(item).__name__, []).append(item)
    return out


# --------------------------------------------------------------------------- A-ASSOCIATE-RQ


def test_associate_rq_round_trip():
    rq = full_rq()
    data = rq.encode()
    assert data[0] == pdu.A_ASSOCIATE_RQ
    assert struct.unpack(">L", data[2:6])[0] == len(data) - 6
    back = pdu.AssociateRQ.decode(data[6:])
    assert back == rq


def test_associate_rq_decoded_by_pynetdicom():
    data = full_rq().encode()
    theirs = pnd_pdu.A_ASSOCIATE_RQ()
    theirs.decode(data)
    # pynetdicom re-encodes exactly the bytes we produced: same item layout, lengths and padding
    assert theirs.encode() == data
    p = theirs.to_primitive()
    assert p.called_ae_title == "CALLED_AE"
    assert p.calling_ae_title == "CALLING_AE"
    assert p.application_context_name == pdu.APPLICATION_CONTEXT_NAME
    contexts = p.presentation_context_definition_list
    assert [(c.context_id, c.abstract_syntax, list(c.transfer_syntax)) for c in contexts] == [
        (1, VERIFICATION, [IMPLICIT]),
        (3, CT, [EXPLICIT, IMPLICIT]),
    ]
    items = _by_type(p.user_information)
    assert items["MaximumLengthNotification"][0].maximum_length_received == 16384
    assert items["ImplementationClassUIDNotification"][0].implementation_class_uid == "1.2.826.0.1.3680043.9.1234"
    assert items["ImplementationVersionNameNotification"][0].implementation_version_name == "PACSKIT_TEST"
    async_ops = items["AsynchronousOperationsWindowNegotiation"][0]
    assert (async_ops.maximum_number_operations_invoked, async_ops.maximum_number_operations_performed) == (3, 2)
    role = items["SCP_SCU_RoleSelectionNegotiation"][0]
    assert (role.sop_class_uid, role.scu_role, role.scp_role) == (CT, True, True)
    ext = items["SOPClassExtendedNegotiation"][0]
    assert (ext.sop_class_uid, ext.service_class_application_information) == (STUDY_FIND, b"\x01\x01\x00")
    common = items["SOPClassCommonExtendedNegotiation"][0]
    assert common.sop_class_uid == ENHANCED_SR
    assert common.service_class_uid == STORAGE_SERVICE
    assert list(common.related_general_sop_class_identification) == [BASIC_TEXT_SR]
    ui = items["UserIdentityNegotiation"][0]
    assert (ui.user_identity_type, ui.positive_response_requested) == (2, True)
    assert (ui.primary_field, ui.secondary_field) == (b"alice", b"s3cret")


def _pynetdicom_rq_bytes() -> bytes:
    a = prim.A_ASSOCIATE()
    a.application_context_name = pdu.APPLICATION_CONTEXT_NAME
    a.calling_ae_title = "PYND_SCU"
    a.called_ae_title = "PACSKIT"
    cx1 = build_context(VERIFICATION, [IMPLICIT])
    cx1.context_id = 1
    cx3 = build_context(CT, [EXPLICIT, IMPLICIT])
    cx3.context_id = 3
    a.presentation_context_definition_list = [cx1, cx3]
    max_len = prim.MaximumLengthNotification()
    max_len.maximum_length_received = 4096
    impl = prim.ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.3.4.5"
    version = prim.ImplementationVersionNameNotification()
    version.implementation_version_name = "PYND"
    window = prim.AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 5
    window.maximum_number_operations_performed = 4
    role = prim.SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CT
    role.scu_role = False
    role.scp_role = True
    ext = prim.SOPClassExtendedNegotiation()
    ext.sop_class_uid = STUDY_FIND
    ext.service_class_application_information = b"\x01"
    ui = prim.UserIdentityNegotiation()
    ui.user_identity_type = 1
    ui.primary_field = b"bob"
    ui.positive_response_requested = True
    # sub-items in ascending type order (0x51..0x58), the order we encode them in
    a.user_information = [max_len, impl, window, role, version, ext, ui]
    return pnd_pdu.A_ASSOCIATE_RQ(a).encode()


def test_pynetdicom_associate_rq_decoded_by_us():
    data = _pynetdicom_rq_bytes()
    rq = pdu.AssociateRQ.decode(data[6:])
    assert (rq.called_ae_title, rq.calling_ae_title) == ("PACSKIT", "PYND_SCU")
    assert rq.application_context == pdu.APPLICATION_CONTEXT_NAME
    assert rq.protocol_version == 1
    assert [(c.id, c.abstract_syntax, c.transfer_syntaxes) for c in rq.contexts] == [
        (1, VERIFICATION, [IMPLICIT]),
        (3, CT, [EXPLICIT, IMPLICIT]),
    ]
    info = rq.user_info
    assert info.max_pdu_length == 4096
    assert info.implementation_class_uid == "1.2.3.4.5"
    assert info.implementation_version_name == "PYND"
    assert info.async_ops == (5, 4)
    assert info.roles == [pdu.RoleSelection(CT, False, True)]
    assert info.extended_negotiation == {STUDY_FIND: b"\x01"}
    assert info.user_identity == pdu.UserIdentityRQ(1, True, b"bob", b"")
    assert info.unknown_items == []
    # and our re-encoding is byte-identical to pynetdicom's
    assert rq.encode() == data


# --------------------------------------------------------------------------- A-ASSOCIATE-AC / RJ / ABORT


def full_ac() -> pdu.AssociateAC:
    info = pdu.UserInformation(
        max_pdu_length=0,
        implementation_class_uid="1.2.826.0.1.3680043.9.1234",
        implementation_version_name="PACSKIT_TEST",
        async_ops=(1, 1),
        roles=[pdu.RoleSelection(CT, False, True)],
        user_identity_response=b"token",
    )
    return pdu.AssociateAC(
        "CALLED_AE",
        "CALLING_AE",
        [
            pdu.PresentationContextAC(1, pdu.PC_ACCEPTANCE, IMPLICIT),
            pdu.PresentationContextAC(3, pdu.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED),
            pdu.PresentationContextAC(5, pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED),
        ],
        info,
    )


def test_associate_ac_round_trip_and_pynetdicom():
    ac = full_ac()
    data = ac.encode()
    assert pdu.AssociateAC.decode(data[6:]) == ac
    theirs = pnd_pdu.A_ASSOCIATE_AC()
    theirs.decode(data)
    p = theirs.to_primitive()
    assert p.result == 0
    results = {c.context_id: (c.result, c.transfer_syntax[0] if c.result == 0 else None) for c in p.presentation_context_definition_results_list}
    assert results == {1: (0, IMPLICIT), 3: (4, None), 5: (3, None)}
    items = _by_type(p.user_information)
    assert items["MaximumLengthNotification"][0].maximum_length_received == 0
    window = items["AsynchronousOperationsWindowNegotiation"][0]
    assert (window.maximum_number_operations_invoked, window.maximum_number_operations_performed) == (1, 1)
    role = items["SCP_SCU_RoleSelectionNegotiation"][0]
    assert (role.sop_class_uid, role.scu_role, role.scp_role) == (CT, False, True)
    assert items["UserIdentityNegotiation"][0].server_response == b"token"


def test_associate_ac_reencoded_identically_by_pynetdicom():
    # (pynetdicom cannot re-encode the empty transfer syntax sub-item of a rejected context, so only
    # accepted contexts here)
    ac = full_ac()
    ac.contexts = [ac.contexts[0], pdu.PresentationContextAC(3, pdu.PC_ACCEPTANCE, EXPLICIT)]
    data = ac.encode()
    theirs = pnd_pdu.A_ASSOCIATE_AC()
    theirs.decode(data)
    assert theirs.encode() == data


def test_pynetdicom_associate_ac_decoded_by_us():
    rq = pnd_pdu.A_ASSOCIATE_RQ()
    rq.decode(_pynetdicom_rq_bytes())
    a = rq.to_primitive()
    a.result = 0
    cx1 = build_context(VERIFICATION, [IMPLICIT])
    cx1.context_id = 1
    cx1.result = 0
    cx3 = build_context(CT, [EXPLICIT])
    cx3.context_id = 3
    cx3.result = 4
    a.presentation_context_definition_results_list = [cx1, cx3]
    ui = prim.UserIdentityNegotiation()
    ui.server_response = b"ok"
    max_len = prim.MaximumLengthNotification()
    max_len.maximum_length_received = 32768
    impl = prim.ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.3.4.5"
    a.user_information = [max_len, impl, ui]
    data = pnd_pdu.A_ASSOCIATE_AC(a).encode()
    ac = pdu.AssociateAC.decode(data[6:])
    assert [(c.id, c.result, c.transfer_syntax) for c in ac.contexts][0] == (1, 0, IMPLICIT)
    assert (ac.contexts[1].id, ac.contexts[1].result) == (3, 4)
    assert ac.user_info.max_pdu_length == 32768
    assert ac.user_info.implementation_class_uid == "1.2.3.4.5"
    assert ac.user_info.user_identity_response == b"ok"


@pytest.mark.parametrize(("result", "source", "reason"), [(1, 1, 7), (2, 3, 2), (1, 2, 2), (1, 1, 3)])
def test_associate_rj_both_ways(result, source, reason):
    rj = pdu.AssociateRJ(result, source, reason)
    data = rj.encode()
    assert data == bytes((3, 0, 0, 0, 0, 4, 0, result, source, reason))
    assert pdu.AssociateRJ.decode(data[6:]) == rj
    theirs = pnd_pdu.A_ASSOCIATE_RJ()
    theirs.decode(data)
    assert (theirs.result, theirs.source, theirs.reason_diagnostic) == (result, source, reason)
    assert theirs.encode() == data


@pytest.mark.parametrize(("source", "reason"), [(0, 0), (2, 1), (2, 2), (2, 6)])
def test_abort_both_ways(source, reason):
    ab = pdu.Abort(source, reason)
    data = ab.encode()
    assert data == bytes((7, 0, 0, 0, 0, 4, 0, 0, source, reason))
    assert pdu.Abort.decode(data[6:]) == ab
    theirs = pnd_pdu.A_ABORT_RQ()
    theirs.decode(data)
    assert (theirs.source, theirs.reason_diagnostic) == (source, reason)
    assert theirs.encode() == data


def test_release_pdus_match_pynetdicom():
    assert pdu.RELEASE_RQ_PDU == pnd_pdu.A_RELEASE_RQ().encode()
    assert pdu.RELEASE_RP_PDU == pnd_pdu.A_RELEASE_RP().encode()


def test_p_data_header_decoded_by_pynetdicom():
    payload = b"\x01\x02\x03\x04"
    data = pdu.p_data_header(len(payload), 5, 0x03) + payload
    theirs = pnd_pdu.P_DATA_TF()
    theirs.decode(data)
    [item] = theirs.presentation_data_value_items
    assert item.presentation_context_id == 5
    assert item.presentation_data_value == b"\x03" + payload  # message control header + data
    assert theirs.encode() == data


# --------------------------------------------------------------------------- decoder robustness


def test_truncated_fixed_part_raises_pdu_error():
    with pytest.raises(PduError) as err:
        pdu.AssociateRQ.decode(full_rq().encode()[6:50])
    assert err.value.abort_reason == pdu.ABORT_REASON_INVALID_PARAMETER


def test_item_overflowing_the_pdu_raises_pdu_error():
    body = bytearray(full_rq().encode()[6:])
    # first variable item (application context, 0x10) claims far more bytes than remain
    assert body[68] == 0x10
    body[70:72] = struct.pack(">H", 0xFFF0)
    with pytest.raises(PduError) as err:
        pdu.AssociateRQ.decode(bytes(body))
    assert err.value.abort_reason == pdu.ABORT_REASON_INVALID_PARAMETER


def test_malformed_user_identity_raises_pdu_error():
    info = pdu.UserInformation(max_pdu_length=0, user_identity=pdu.UserIdentityRQ(2, False, b"alice", b"pw"))
    raw = bytearray(info.encode())
    # primary field length claims more than the sub-item holds
    ui_at = raw.index(b"\x58\x00")
    raw[ui_at + 6 : ui_at + 8] = struct.pack(">H", 200)
    with pytest.raises(PduError):
        pdu.UserInformation.decode(bytes(raw[4:]))


def test_unknown_item_in_rq_is_rejected_with_reason_4():
    body = full_rq().encode()[6:] + b"\x99\x00\x00\x00"
    with pytest.raises(PduError) as err:
        pdu.AssociateRQ.decode(body)
    assert err.value.abort_reason == pdu.ABORT_REASON_UNRECOGNIZED_PARAMETER


# --------------------------------------------------------------------------- command sets


def store_rq_command() -> Command:
    return request_command(
        CommandField.C_STORE_RQ,
        7,
        CT,
        has_dataset=True,
        AffectedSOPInstanceUID="1.2.3.4.5.6.7",  # odd length: needs a NUL pad
        Priority=2,
        MoveOriginatorApplicationEntityTitle="MOVER",
        MoveOriginatorMessageID=3,
    )


def test_command_round_trip():
    cmd = store_rq_command()
    data = cmd.encode()
    back = Command.decode(data)
    assert back.pop("CommandGroupLength") == len(data) - 12
    assert back == cmd
    # unknown element kept raw and re-encoded verbatim
    with_unknown = Command(dict(cmd, **{"(0000,5555)": b"ab"}))
    assert Command.decode(with_unknown.encode())["(0000,5555)"] == b"ab"


def test_command_decoded_by_pydicom():
    cmd = store_rq_command()
    ds = read_dataset(io.BytesIO(cmd.encode()), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(cmd.encode()) - 12
    assert ds.AffectedSOPClassUID == CT
    assert ds.AffectedSOPInstanceUID == "1.2.3.4.5.6.7"
    assert ds.CommandField == 0x0001
    assert ds.MessageID == 7
    assert ds.Priority == 2
    assert ds.CommandDataSetType == 0x0000
    assert ds.MoveOriginatorApplicationEntityTitle == "MOVER"
    assert ds.MoveOriginatorMessageID == 3
    # elements in ascending tag order, as PS3.5 7.1 requires
    tags = [int(e.tag) for e in ds]
    assert tags == sorted(tags)


def test_response_command_decoded_by_pydicom():
    rsp = response_command(
        store_rq_command(),
        0xA700,
        ErrorComment="disk full",
        OffendingElement=[0x00100010, 0x00100020],
    )
    ds = read_dataset(io.BytesIO(rsp.encode()), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandField == 0x8001
    assert ds.MessageIDBeingRespondedTo == 7
    assert ds.Status == 0xA700
    assert ds.ErrorComment == "disk full"
    assert [int(t) for t in ds.OffendingElement] == [0x00100010, 0x00100020]
    assert ds.CommandDataSetType == 0x0101
    assert ds.AffectedSOPInstanceUID == "1.2.3.4.5.6.7"


def test_pydicom_command_decoded_by_us():
    ds = Dataset()
    ds.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    ds.CommandField = 0x0020
    ds.MessageID = 42
    ds.Priority = 0
    ds.CommandDataSetType = 0x0001
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    body = fp.getvalue()
    group_length = struct.pack("<HHLL", 0, 0, 4, len(body))
    cmd = Command.decode(group_length + body)
    assert cmd.command_field == CommandField.C_FIND_RQ
    assert cmd["MessageID"] == 42
    assert cmd["AffectedSOPClassUID"] == "1.2.840.10008.5.1.4.1.2.2.1"
    assert cmd.has_dataset


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x01\x02",  # truncated element header
        struct.pack("<HHL", 0x0008, 0x0016, 20) + b"ab",  # outside group 0000 (kept), length beyond the data
        struct.pack("<HHL", 0x0000, 0x0100, 10) + b"\x01\x00",  # length beyond the data
        struct.pack("<HHL", 0x0000, 0x0110, 2) + b"\x01\x00",  # no command field
    ],
)
def test_bad_command_sets_raise_dimse_error(data):
    with pytest.raises(DimseError):
        Command.decode(data)


# --------------------------------------------------------------------------- state table (PS3.8 Table 9-10)


@pytest.mark.parametrize(
    ("state", "event", "action"),
    [
        (State.STA1, Event.EVT1, "ae_1"),
        (State.STA1, Event.EVT5, "ae_5"),
        (State.STA2, Event.EVT6, "ae_6"),
        (State.STA2, Event.EVT10, "aa_1"),  # P-DATA before association: abort
        (State.STA2, Event.EVT3, "aa_1"),
        (State.STA2, Event.EVT16, "aa_2"),
        (State.STA2, Event.EVT17, "aa_5"),
        (State.STA2, Event.EVT18, "aa_2"),
        (State.STA2, Event.EVT19, "aa_1"),
        (State.STA3, Event.EVT7, "ae_7"),
        (State.STA3, Event.EVT8, "ae_8"),
        (State.STA3, Event.EVT15, "aa_1"),
        (State.STA4, Event.EVT2, "ae_2"),
        (State.STA4, Event.EVT15, "aa_2"),
        (State.STA5, Event.EVT3, "ae_3"),
        (State.STA5, Event.EVT4, "ae_4"),
        (State.STA5, Event.EVT10, "aa_8"),
        (State.STA6, Event.EVT9, "dt_1"),
        (State.STA6, Event.EVT10, "dt_2"),
        (State.STA6, Event.EVT11, "ar_1"),
        (State.STA6, Event.EVT12, "ar_2"),
        (State.STA6, Event.EVT6, "aa_8"),
        (State.STA6, Event.EVT16, "aa_3"),
        (State.STA6, Event.EVT17, "aa_4"),
        (State.STA6, Event.EVT19, "aa_8"),
        (State.STA7, Event.EVT10, "ar_6"),
        (State.STA7, Event.EVT12, "ar_8"),  # release collision
        (State.STA7, Event.EVT13, "ar_3"),
        (State.STA8, Event.EVT9, "ar_7"),
        (State.STA8, Event.EVT14, "ar_4"),
        (State.STA9, Event.EVT14, "ar_9"),
        (State.STA10, Event.EVT13, "ar_10"),
        (State.STA11, Event.EVT13, "ar_3"),
        (State.STA12, Event.EVT14, "ar_4"),
        (State.STA13, Event.EVT6, "aa_7"),
        (State.STA13, Event.EVT10, "aa_6"),
        (State.STA13, Event.EVT16, "aa_2"),
        (State.STA13, Event.EVT17, "ar_5"),
        (State.STA13, Event.EVT18, "ar_5"),
        (State.STA13, Event.EVT19, "aa_7"),
        (State.STA6, Event.EVT15, "aa_1"),
        (State.STA12, Event.EVT16, "aa_3"),
    ],
)
def test_state_table_entries(state, event, action):
    assert next_action(state, event) == action


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (State.STA1, Event.EVT10),  # nothing defined when idle
        (State.STA2, Event.EVT9),  # no local P-DATA before association
        (State.STA6, Event.EVT7),
        (State.STA13, Event.EVT15),
        (State.STA2, Event.EVT15),
    ],
)
def test_state_table_has_no_entry(state, event):
    assert next_action(state, event) is None


def test_every_pdu_event_defined_for_every_connected_state():
    """PS3.8 Table 9-10 defines a reaction to every incoming PDU in every state with a connection."""
    connected = [s for s in State if s not in (State.STA1, State.STA4)]
    for event in (Event.EVT3, Event.EVT4, Event.EVT6, Event.EVT10, Event.EVT12, Event.EVT13, Event.EVT16, Event.EVT17, Event.EVT19):
        for state in connected:
            assert (state, event) in TRANSITIONS, (state, event)
