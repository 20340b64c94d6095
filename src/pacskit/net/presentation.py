"""Presentation contexts and their negotiation (PS3.8 7.1.1.13, PS3.7 D.3.3.4 role selection).

Acceptor side: a list of :class:`SupportedContext` says what we serve; :func:`negotiate_as_acceptor`
answers each proposed context, choosing the transfer syntax by *our* preference order (the order of
``SupportedContext.transfer_syntaxes``), and applies SCP/SCU role selection.

Requestor side: :class:`RequestedContext` is what we propose; :func:`accepted_contexts` pairs the
acceptor's answer with our proposal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pacskit.net import pdu

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

# The uncompressed transfer syntaxes (PS3.5 A.1, A.2, A.3, A.5) as plain strings: the engine uses them
# on every association, and spelling them here spares a process that only moves bytes (a storescu-like
# client) the import of pydicom, which costs ~0.4 s before the first PDU.
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
#: PS3.5 A.4.11: an Explicit VR Little Endian dataset whose encapsulated frames are each deflated (not a
#: deflated dataset, unlike 1.2.840.10008.1.2.1.99). pydicom 3.0 does not list it.
DEFLATED_IMAGE_FRAME_COMPRESSION = "1.2.840.10008.1.2.8.1"

#: Uncompressed transfer syntaxes, in the order an acceptor prefers them by default.
UNCOMPRESSED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)


def __getattr__(name: str) -> object:
    # ALL_TRANSFER_SYNTAXES comes from pydicom's list, so it is made on first use (PEP 562)
    if name == "ALL_TRANSFER_SYNTAXES":
        global ALL_TRANSFER_SYNTAXES
        ALL_TRANSFER_SYNTAXES = _all_transfer_syntaxes()
        return ALL_TRANSFER_SYNTAXES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _all_transfer_syntaxes() -> tuple[str, ...]:
    """Everything a store-as-received Storage SCP can accept (``ALL_TRANSFER_SYNTAXES``): uncompressed
    first, then the compressed syntaxes pydicom knows (JPEG family, JPEG-LS, JPEG 2000, HTJ2K, RLE,
    MPEG/HEVC, deflated image frames)."""
    from pydicom.uid import AllTransferSyntaxes

    compressed = [str(ts) for ts in AllTransferSyntaxes if str(ts) not in UNCOMPRESSED_TRANSFER_SYNTAXES]
    if DEFLATED_IMAGE_FRAME_COMPRESSION not in compressed:
        compressed.append(DEFLATED_IMAGE_FRAME_COMPRESSION)
    return UNCOMPRESSED_TRANSFER_SYNTAXES + tuple(compressed)


@dataclass(slots=True)
class SupportedContext:
    """An abstract syntax we accept, with our transfer syntaxes in preference order.

    ``abstract_syntax="*"`` accepts any abstract syntax not listed otherwise (an "accept any storage
    SOP class" switch); handlers registered for ``"*"`` serve those.

    ``scu_role`` / ``scp_role`` say whether we agree to a *requestor's* proposal to act as SCU / SCP for
    this SOP class when it sends a role selection item (e.g. a C-GET requestor asks to be Storage SCP:
    set ``scp_role=True`` on the storage contexts of a C-GET provider). Without a role selection item
    the default roles apply: requestor SCU, acceptor SCP.
    """

    abstract_syntax: str
    transfer_syntaxes: Sequence[str] = UNCOMPRESSED_TRANSFER_SYNTAXES
    scu_role: bool = True
    scp_role: bool = False


@dataclass(slots=True)
class RequestedContext:
    """A presentation context we propose; the roles are only sent when one of them is not the default."""

    abstract_syntax: str
    transfer_syntaxes: Sequence[str] = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
    scu_role: bool | None = None
    scp_role: bool | None = None


@dataclass(slots=True, frozen=True)
class PresentationContext:
    """A negotiated presentation context as both sides use it after association.

    ``as_scu`` / ``as_scp``: the roles *this* side may take for the abstract syntax.
    """

    id: int
    abstract_syntax: str
    transfer_syntax: str
    result: int = pdu.PC_ACCEPTANCE
    as_scu: bool = True
    as_scp: bool = True

    @property
    def accepted(self) -> bool:
        return self.result == pdu.PC_ACCEPTANCE

    def __str__(self) -> str:
        from pydicom.uid import UID

        name = UID(self.abstract_syntax).name
        return f"[{self.id}] {name} / {UID(self.transfer_syntax).name if self.transfer_syntax else '-'}"


@dataclass(slots=True)
class AcceptorNegotiation:
    """The acceptor's answer: the AC items, and the contexts as this side will use them."""

    ac_items: list[pdu.PresentationContextAC] = field(default_factory=list)
    contexts: dict[int, PresentationContext] = field(default_factory=dict)
    roles: list[pdu.RoleSelection] = field(default_factory=list)


def negotiate_as_acceptor(
    proposed: Iterable[pdu.PresentationContextRQ],
    supported: Sequence[SupportedContext],
    role_items: Sequence[pdu.RoleSelection] = (),
    transfer_syntax_preference: Sequence[str] | None = None,
) -> AcceptorNegotiation:
    """Answer every proposed context.

    ``transfer_syntax_preference``, when given, overrides the per-context order for all contexts: the
    first syntax in it that both sides support wins. Otherwise the order of the matching
    :class:`SupportedContext` decides. Contexts with an odd or duplicate id are rejected without a
    reason rather than aborting the whole association.
    """
    by_abstract: dict[str, SupportedContext] = {}
    for sc in supported:
        by_abstract.setdefault(sc.abstract_syntax, sc)
    roles_asked = {r.sop_class_uid: r for r in role_items}
    out = AcceptorNegotiation()
    seen: set[int] = set()
    for pc in proposed:
        ours = by_abstract.get(pc.abstract_syntax) or by_abstract.get("*")
        if pc.id % 2 == 0 or pc.id in seen:
            out.ac_items.append(pdu.PresentationContextAC(pc.id, pdu.PC_NO_REASON))
            continue
        seen.add(pc.id)
        if ours is None:
            out.ac_items.append(pdu.PresentationContextAC(pc.id, pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED))
            out.contexts[pc.id] = PresentationContext(pc.id, pc.abstract_syntax, "", pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED)
            continue
        order = transfer_syntax_preference or ours.transfer_syntaxes
        offered = set(pc.transfer_syntaxes)
        chosen = next((ts for ts in order if ts in offered and ts in ours.transfer_syntaxes), "")
        if not chosen:
            out.ac_items.append(pdu.PresentationContextAC(pc.id, pdu.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED))
            out.contexts[pc.id] = PresentationContext(
                pc.id, pc.abstract_syntax, "", pdu.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED
            )
            continue
        # Role selection (PS3.7 D.3.3.4): the requestor says which roles it wants; we agree to each
        # only if our SupportedContext allows it. Our own roles are the mirror image.
        requestor_scu, requestor_scp = True, False
        asked = roles_asked.get(pc.abstract_syntax)
        if asked is not None:
            requestor_scu = asked.scu_role and ours.scu_role
            requestor_scp = asked.scp_role and ours.scp_role
            if (asked.sop_class_uid, requestor_scu, requestor_scp) not in {
                (r.sop_class_uid, r.scu_role, r.scp_role) for r in out.roles
            }:
                out.roles.append(pdu.RoleSelection(asked.sop_class_uid, requestor_scu, requestor_scp))
            if not (requestor_scu or requestor_scp):
                out.ac_items.append(pdu.PresentationContextAC(pc.id, pdu.PC_USER_REJECTION))
                out.contexts[pc.id] = PresentationContext(pc.id, pc.abstract_syntax, "", pdu.PC_USER_REJECTION)
                continue
        out.ac_items.append(pdu.PresentationContextAC(pc.id, pdu.PC_ACCEPTANCE, chosen))
        out.contexts[pc.id] = PresentationContext(
            pc.id, pc.abstract_syntax, chosen, pdu.PC_ACCEPTANCE, as_scu=requestor_scp, as_scp=requestor_scu
        )
    return out


def build_requested(contexts: Sequence[RequestedContext]) -> tuple[list[pdu.PresentationContextRQ], list[pdu.RoleSelection]]:
    """Number the proposed contexts 1, 3, 5… and collect the role selection items (one per SOP class)."""
    if len(contexts) > 128:
        raise ValueError(f"at most 128 presentation contexts can be proposed, got {len(contexts)}")
    items = [
        pdu.PresentationContextRQ(2 * i + 1, rc.abstract_syntax, list(rc.transfer_syntaxes))
        for i, rc in enumerate(contexts)
    ]
    roles: dict[str, pdu.RoleSelection] = {}
    for rc in contexts:
        if rc.scu_role is not None or rc.scp_role is not None:
            roles.setdefault(
                rc.abstract_syntax,
                pdu.RoleSelection(
                    rc.abstract_syntax,
                    True if rc.scu_role is None else rc.scu_role,
                    False if rc.scp_role is None else rc.scp_role,
                ),
            )
    return items, list(roles.values())


def accepted_contexts(
    proposed: Sequence[pdu.PresentationContextRQ],
    answer: Sequence[pdu.PresentationContextAC],
    requested_roles: Sequence[pdu.RoleSelection],
    answered_roles: Sequence[pdu.RoleSelection],
) -> dict[int, PresentationContext]:
    """Requestor side: combine our proposal with the acceptor's answer (including role selection)."""
    by_id = {pc.id: pc for pc in proposed}
    asked = {r.sop_class_uid: r for r in requested_roles}
    agreed = {r.sop_class_uid: r for r in answered_roles}
    out: dict[int, PresentationContext] = {}
    for ac in answer:
        rq = by_id.get(ac.id)
        if rq is None:
            continue
        as_scu, as_scp = True, False
        if rq.abstract_syntax in asked:
            # Without an answer item the acceptor did not agree: default roles (PS3.7 D.3.3.4).
            reply = agreed.get(rq.abstract_syntax)
            if reply is not None:
                as_scu = asked[rq.abstract_syntax].scu_role and reply.scu_role
                as_scp = asked[rq.abstract_syntax].scp_role and reply.scp_role
        transfer = ac.transfer_syntax if ac.result == pdu.PC_ACCEPTANCE else ""
        if ac.result == pdu.PC_ACCEPTANCE and transfer not in rq.transfer_syntaxes:
            # A peer that "accepts" a syntax we never offered gets that context treated as rejected.
            out[ac.id] = PresentationContext(ac.id, rq.abstract_syntax, "", pdu.PC_NO_REASON)
            continue
        out[ac.id] = PresentationContext(ac.id, rq.abstract_syntax, transfer, ac.result, as_scu=as_scu, as_scp=as_scp)
    return out
