"""Presentation context negotiation (PS3.8 7.1.1.13) and SCP/SCU role selection (PS3.7 D.3.3.4)."""

from __future__ import annotations

import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
)

from pacskit.net import pdu
from pacskit.net.presentation import (
    RequestedContext,
    SupportedContext,
    accepted_contexts,
    build_requested,
    negotiate_as_acceptor,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"


def rq(id_: int, abstract: str, *ts: str) -> pdu.PresentationContextRQ:
    return pdu.PresentationContextRQ(id_, abstract, list(ts))


def results(negotiation) -> dict[int, tuple[int, str]]:
    return {ac.id: (ac.result, ac.transfer_syntax) for ac in negotiation.ac_items}


def test_acceptor_preference_order_wins_over_proposal_order():
    supported = [SupportedContext(CT, (JPEGLosslessSV1, ExplicitVRLittleEndian, ImplicitVRLittleEndian))]
    proposed = [
        rq(1, CT, ImplicitVRLittleEndian, ExplicitVRLittleEndian),
        rq(3, CT, ImplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGLosslessSV1),
        rq(5, CT, ImplicitVRLittleEndian),
    ]
    n = negotiate_as_acceptor(proposed, supported)
    assert results(n) == {
        1: (pdu.PC_ACCEPTANCE, ExplicitVRLittleEndian),
        3: (pdu.PC_ACCEPTANCE, JPEGLosslessSV1),
        5: (pdu.PC_ACCEPTANCE, ImplicitVRLittleEndian),
    }
    assert n.contexts[3].transfer_syntax == JPEGLosslessSV1
    assert n.contexts[3].accepted


def test_global_transfer_syntax_preference_overrides_context_order():
    supported = [SupportedContext(CT, (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian))]
    proposed = [rq(1, CT, ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)]
    n = negotiate_as_acceptor(proposed, supported, transfer_syntax_preference=[ExplicitVRBigEndian, ExplicitVRLittleEndian])
    assert results(n) == {1: (pdu.PC_ACCEPTANCE, ExplicitVRBigEndian)}
    # a preferred syntax we do not support for that abstract syntax is never chosen
    n = negotiate_as_acceptor(proposed, supported, transfer_syntax_preference=[DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assert results(n) == {1: (pdu.PC_ACCEPTANCE, ImplicitVRLittleEndian)}


def test_transfer_syntax_not_supported():
    supported = [SupportedContext(CT, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))]
    n = negotiate_as_acceptor([rq(1, CT, JPEGBaseline8Bit), rq(3, CT, ImplicitVRLittleEndian)], supported)
    assert results(n) == {
        1: (pdu.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, ""),
        3: (pdu.PC_ACCEPTANCE, ImplicitVRLittleEndian),
    }
    assert not n.contexts[1].accepted


def test_abstract_syntax_not_supported():
    supported = [SupportedContext(VERIFICATION)]
    n = negotiate_as_acceptor([rq(1, MR, ExplicitVRLittleEndian), rq(3, VERIFICATION, ImplicitVRLittleEndian)], supported)
    assert results(n) == {
        1: (pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, ""),
        3: (pdu.PC_ACCEPTANCE, ImplicitVRLittleEndian),
    }
    # and the answer encodes / decodes as a valid A-ASSOCIATE-AC
    ac = pdu.AssociateAC("A", "B", n.ac_items, pdu.UserInformation(max_pdu_length=0))
    back = pdu.AssociateAC.decode(ac.encode()[6:])
    assert [(c.id, c.result) for c in back.contexts] == [(1, 3), (3, 0)]


def test_even_and_duplicate_context_ids_rejected_without_aborting():
    supported = [SupportedContext(CT)]
    n = negotiate_as_acceptor([rq(2, CT, ExplicitVRLittleEndian), rq(1, CT, ExplicitVRLittleEndian), rq(1, CT, ImplicitVRLittleEndian)], supported)
    assert [(ac.id, ac.result) for ac in n.ac_items] == [(2, pdu.PC_NO_REASON), (1, pdu.PC_ACCEPTANCE), (1, pdu.PC_NO_REASON)]
    assert n.contexts[1].transfer_syntax == ExplicitVRLittleEndian


def test_default_roles_without_role_selection():
    n = negotiate_as_acceptor([rq(1, CT, ExplicitVRLittleEndian)], [SupportedContext(CT)])
    ctx = n.contexts[1]
    # acceptor side: we are SCP, not SCU
    assert (ctx.as_scu, ctx.as_scp) == (False, True)
    assert n.roles == []


def test_role_selection_scp_role_granted_when_allowed():
    # a C-GET requestor asks to be Storage SCP (and SCU); our context allows SCP role for the requestor
    supported = [SupportedContext(CT, scu_role=True, scp_role=True)]
    n = negotiate_as_acceptor([rq(1, CT, ExplicitVRLittleEndian)], supported, [pdu.RoleSelection(CT, True, True)])
    assert n.roles == [pdu.RoleSelection(CT, True, True)]
    ctx = n.contexts[1]
    assert (ctx.as_scu, ctx.as_scp) == (True, True)


def test_role_selection_scp_role_refused_when_not_allowed():
    supported = [SupportedContext(CT)]  # scp_role=False: the requestor may not act as SCP
    n = negotiate_as_acceptor([rq(1, CT, ExplicitVRLittleEndian)], supported, [pdu.RoleSelection(CT, True, True)])
    assert n.roles == [pdu.RoleSelection(CT, True, False)]
    ctx = n.contexts[1]
    assert ctx.accepted
    assert (ctx.as_scu, ctx.as_scp) == (False, True)


def test_role_selection_with_no_role_left_rejects_the_context():
    supported = [SupportedContext(CT)]
    n = negotiate_as_acceptor([rq(1, CT, ExplicitVRLittleEndian)], supported, [pdu.RoleSelection(CT, False, True)])
    assert results(n) == {1: (pdu.PC_USER_REJECTION, "")}
    assert n.roles == [pdu.RoleSelection(CT, False, False)]


def test_requestor_side_build_and_accept():
    contexts = [
        RequestedContext(VERIFICATION),
        RequestedContext(CT, (ExplicitVRLittleEndian,), scu_role=True, scp_role=True),
        RequestedContext(MR, (ImplicitVRLittleEndian,)),
    ]
    items, roles = build_requested(contexts)
    assert [(i.id, i.abstract_syntax) for i in items] == [(1, VERIFICATION), (3, CT), (5, MR)]
    assert roles == [pdu.RoleSelection(CT, True, True)]
    answer = [
        pdu.PresentationContextAC(1, pdu.PC_ACCEPTANCE, ImplicitVRLittleEndian),
        pdu.PresentationContextAC(3, pdu.PC_ACCEPTANCE, ExplicitVRLittleEndian),
        pdu.PresentationContextAC(5, pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED),
    ]
    got = accepted_contexts(items, answer, roles, [pdu.RoleSelection(CT, True, True)])
    assert got[1].accepted and got[1].transfer_syntax == ImplicitVRLittleEndian
    assert (got[3].as_scu, got[3].as_scp) == (True, True)
    assert not got[5].accepted
    # the acceptor did not answer the role item: default roles (PS3.7 D.3.3.4)
    got = accepted_contexts(items, answer, roles, [])
    assert (got[3].as_scu, got[3].as_scp) == (True, False)


def test_requestor_treats_unoffered_transfer_syntax_as_rejected():
    items, roles = build_requested([RequestedContext(CT, (ExplicitVRLittleEndian,))])
    got = accepted_contexts(items, [pdu.PresentationContextAC(1, pdu.PC_ACCEPTANCE, JPEGBaseline8Bit)], roles, [])
    assert not got[1].accepted


def test_more_than_128_contexts_refused():
    with pytest.raises(ValueError):
        build_requested([RequestedContext(CT)] * 129)
