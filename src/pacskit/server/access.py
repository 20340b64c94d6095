"""Access control: who may associate, and what each caller may do.

Two decisions, both taken by the server core (never by the add-ins, which therefore cannot forget one):

1. **At A-ASSOCIATE-RQ** (:meth:`AccessControl.check_association`), in this order:

   ==================================================  ==================================================
   what is wrong                                       A-ASSOCIATE-RJ (result, source, reason; PS3.8 9.3.4)
   ==================================================  ==================================================
   called AE title is not ours                         rejected-permanent, service-user, 7 (engine check)
   calling AE title not registered (registered-only)   rejected-permanent, service-user, 3
   source address not in the entry's ``source_hosts``  rejected-permanent, service-user, 3
   entry requires TLS, association is plain            rejected-permanent, service-user, 1
   TLS client certificate CN is not ``tls_subject``    rejected-permanent, service-user, 1
   User Identity missing, of another type, or wrong    rejected-permanent, service-user, 1
   ==================================================  ==================================================

   Reason 1 (no-reason-given) for failed authentication is deliberate: PS3.8 has no reason code for
   it, and telling a guessing peer *which* credential was wrong helps it. The server's log line says
   exactly why (without the credential).

   A calling AE that is not registered is let in when the server is *open*: ``open_mode = true``, or
   bound to loopback with ``open_mode`` unset. ``open_mode = false`` makes even a loopback server
   registered-only. A registered AE's rules apply in every mode.

2. **At each DIMSE request** (:meth:`AccessControl.authorize`, the engine's
   :attr:`~pacskit.net.Services.authorizer`): the service, named as in the registry's
   ``allowed_services`` (:class:`ServiceNames`: the core names and those the add-ins declare), must be allowed, else the request is answered with
   0x0124 *Refused: Not Authorized* without reaching its add-in. A C-MOVE whose Move Destination is
   not in the caller's ``move_destinations`` (when that list is set) is answered 0x0124 as well: the
   destination may well be known to the server (0xA801 *Move Destination unknown* stays the Retrieve
   add-in's answer for unregistered destinations), this caller is just not allowed to send there.

Passwords are stored as salted scrypt hashes (:func:`pacskit.config.passwords.hash_password`; PBKDF2-SHA256 hashes are
verified too). JWTs (User Identity type 5) are verified with PyJWT: signature (HS256 with a shared
secret or RS256 with a PEM public key), ``exp`` required and in the future, ``nbf``/``iat`` honoured,
``aud`` when the entry sets ``jwt_audience``, ``sub`` equal to ``username`` when the entry sets one.

Every decision is logged on ``pacskit.security``; the places where an audit record (PS3.15 A.5) is
due call :func:`audit_point`, which for now only logs (the audit trail is wired in there).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pacskit.audit.service import Audit
from pacskit.config.passwords import verify_password
from pacskit.config.tokens import verify_jwt
from pacskit.dicom.status import Status
from pacskit.net import REJECT_CALLING_AE, REJECT_NO_REASON, Reject, Request, Response
from pacskit.net import events as ev
from pacskit.net.tls import peer_common_name

if TYPE_CHECKING:
    from pacskit.config.aetitles import AeTitles, RemoteAE
    from pacskit.net import Association, EventBus
    from pacskit.services import Permission

log = logging.getLogger("pacskit.security")

#: what a request access control refuses is answered with
NOT_AUTHORIZED = Status.REFUSED_NOT_AUTHORIZED

USER_IDENTITY_USERNAME = 1
USER_IDENTITY_PASSWORD = 2
USER_IDENTITY_JWT = 5




# ---------------------------------------------------------------------- audit


def audit_point(event: str, outcome: str, **details: Any) -> None:
    """A security decision, logged on ``pacskit.security`` (never a credential). The audit records
    (PS3.15 A.5) for these decisions come from the audit add-in: rejected associations and user
    authentication from the engine's events, refused services and failed TLS handshakes from
    :meth:`AccessControl._deny` and :meth:`AccessControl.tls_failure` through :mod:`pacskit.audit`."""
    text = " ".join(f"{k}={v!r}" for k, v in details.items())
    log.info("security [%s] outcome=%s %s", event, outcome, text)


# ---------------------------------------------------------------------- JWT


# verify_jwt lives in pacskit.config.tokens (the DICOMweb add-in uses it too); imported above.


# ---------------------------------------------------------------------- services


#: The registry's names for the core DIMSE services, whatever the abstract syntax.
CORE_SERVICE_NAMES: dict[str, str] = {"C-ECHO": "echo", "C-STORE": "store", "C-FIND": "find", "C-MOVE": "move", "C-GET": "get"}


class ServiceNames:
    """The registry's names (``allowed_services``) of a server's services: :data:`CORE_SERVICE_NAMES`
    by DIMSE service, overridden per abstract syntax by what the add-ins declare
    (:attr:`pacskit.services.AddIn.permissions`)."""

    def __init__(self, declared: Iterable[Permission] = ()) -> None:
        #: (service or "*", abstract syntax) -> name
        self.declared: dict[tuple[str, str], str] = {(p.service, p.abstract_syntax): p.name for p in declared}

    def name_for(self, service: str, sop_class_uid: str) -> str | None:
        """The name for a DIMSE service on an abstract syntax, or ``None`` for services the registry
        does not name (governed by the add-in serving them)."""
        declared = self.declared
        if declared:
            name = declared.get((service, sop_class_uid)) or declared.get(("*", sop_class_uid))
            if name is not None:
                return name
        return CORE_SERVICE_NAMES.get(service)

    def names(self) -> set[str]:
        """Every name the server's services answer to."""
        return set(CORE_SERVICE_NAMES.values()) | set(self.declared.values())


# ---------------------------------------------------------------------- the decisions


def _address_in(address: str, entries: list[str], resolved: dict[str, set[str]]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for entry in entries:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            if str(ip) in resolved.get(entry, set()):
                return True
    return False


def is_open(settings: Any) -> bool:
    """Unregistered calling AEs may associate: ``open_mode``, or when unset, a loopback-bound server."""
    return bool(settings.open_mode) if settings.open_mode is not None else bool(settings.is_loopback)


class AccessControl:
    """The server's access decisions over an :class:`~pacskit.config.aetitles.AeTitles` registry.

    ``open_to_unknown``: calling AEs that are not registered may associate (with every service).
    """

    def __init__(self, ae_titles: AeTitles, *, open_to_unknown: bool, audit: Audit | None = None,
                 service_names: ServiceNames | None = None) -> None:
        self.ae_titles = ae_titles
        self.open_to_unknown = open_to_unknown
        self.audit = audit if audit is not None else Audit()
        #: replaced by the server with each generation of add-ins (their declared permissions)
        self.service_names = service_names if service_names is not None else ServiceNames()
        self._granted: weakref.WeakKeyDictionary[Association, RemoteAE] = weakref.WeakKeyDictionary()
        self._why: weakref.WeakKeyDictionary[Association, str] = weakref.WeakKeyDictionary()

    def watch(self, bus: EventBus) -> None:
        """Log every rejection, including those the engine decides (called AE, association limit), and
        send refusals to the server's audit trail (when the audit add-in runs)."""
        bus.subscribe(ev.ASSOCIATION_REJECTED, self._on_rejected)

    def _on_rejected(self, event: Any) -> None:
        assoc = event.assoc
        why = self._why.pop(assoc, None) if assoc is not None else None
        audit_point(
            "Security Alert",
            "association rejected",
            calling_ae=assoc.remote_ae_title if assoc is not None else "",
            called_ae=assoc.requested.called_ae_title if assoc is not None and assoc.requested is not None else "",
            peer=_host(assoc.peer_address) if assoc is not None else "",
            reject=event.detail.get("description"),
            why=why or "engine check (called AE, protocol, association limit)",
        )

    def remote_ae(self, assoc: Association) -> RemoteAE | None:
        """The registry entry ``assoc`` was admitted as (``None``: an unregistered caller of an open server)."""
        return self._granted.get(assoc)

    async def check_association(self, assoc: Association) -> Reject | None:
        """Decide an A-ASSOCIATE-RQ (see the module docstring); ``None`` admits it."""
        calling = assoc.remote_ae_title
        peer = _host(assoc.peer_address)
        ae = self.ae_titles.get(calling)
        if ae is None:
            if self.open_to_unknown:
                log.debug("association from unregistered %s@%s admitted (open server)", calling, peer)
                return None
            return self._refuse(assoc, REJECT_CALLING_AE, f"calling AE {calling!r} is not registered")
        if ae.source_hosts:
            names = [e for e in ae.source_hosts if not _is_network(e)]
            resolved = await _resolve(names) if names else {}
            if not _address_in(peer, ae.source_hosts, resolved):
                return self._refuse(assoc, REJECT_CALLING_AE, f"{calling} may not associate from {peer}")
        if ae.requires_tls and not assoc.is_tls:
            return self._refuse(assoc, REJECT_NO_REASON, f"{calling} must use TLS")
        if ae.tls_subject is not None:
            cn = peer_common_name(assoc.peer_certificate)
            if cn != ae.tls_subject:
                return self._refuse(assoc, REJECT_NO_REASON, f"{calling}: TLS client certificate CN {cn!r} is not {ae.tls_subject!r}")
        if ae.user_identity != "none":
            problem = await self._check_user(assoc, ae)
            if problem is not None:
                audit_point("User Authentication", "failure", calling_ae=calling, peer=peer, why=problem)
                return self._refuse(assoc, REJECT_NO_REASON, f"{calling}: user identity refused: {problem}")
            audit_point("User Authentication", "success", calling_ae=calling, peer=peer, user=ae.username or "")
        self._granted[assoc] = ae
        log.info("association from %s@%s admitted as registered AE%s", calling, peer, " over TLS" if assoc.is_tls else "")
        return None

    async def _check_user(self, assoc: Association, ae: RemoteAE) -> str | None:
        ui = assoc.user_identity
        if ui is None:
            return "no User Identity item sent"
        if ae.user_identity == "password":
            if ui.type != USER_IDENTITY_PASSWORD:
                return f"User Identity type {ui.type}, expected 2 (username and passcode)"
            if ui.primary != (ae.username or "").encode("utf-8"):
                return "unknown user name"
            assert ae.password_hash is not None
            # scrypt takes tens of milliseconds: off the event loop.
            if not await asyncio.to_thread(verify_password, ui.secondary, ae.password_hash):
                return "wrong password"
        else:
            if ui.type != USER_IDENTITY_JWT:
                return f"User Identity type {ui.type}, expected 5 (JSON Web Token)"
            problem = await asyncio.to_thread(verify_jwt, ui.primary, ae)
            if problem is not None:
                return problem
        if ui.positive_response_requested:
            assoc.user_identity_response = b""  # accepted; we have no server token to return
        return None

    def _refuse(self, assoc: Association, decision: Reject, why: str) -> Reject:
        """Log why; the audit point follows from the engine's association-rejected event."""
        log.warning("association from %s@%s refused (%s): %s", assoc.remote_ae_title, _host(assoc.peer_address), decision.describe(), why)
        self._why[assoc] = why
        return decision

    def authorize(self, request: Request) -> Response | None:
        """The engine's request authorizer (see the module docstring)."""
        ae = self._granted.get(request.assoc)
        if ae is None:
            return None  # unregistered caller of an open server
        service = request.service
        name = self.service_names.name_for(service, request.context.abstract_syntax)
        if name is not None and not ae.may(name):
            return self._deny(request, f"{ae.title} may not use {name}")
        if service == "C-MOVE":
            destination = str(request.command.get("MoveDestination") or "").strip()
            if not ae.may_move_to(destination):
                return self._deny(request, f"{ae.title} may not move to {destination[:16]!r}")
        return None

    def _deny(self, request: Request, why: str) -> Response:
        log.warning("%s: %s refused (0x%04X Not Authorized): %s", request.assoc.label, request.service, NOT_AUTHORIZED, why)
        caller, host = request.assoc.remote_ae_title, _host(request.assoc.peer_address)
        audit_point("Security Alert", "refused", calling_ae=caller, peer=host, service=request.service, why=why)
        self.audit.security_alert("use-of-restricted-function", f"{caller}@{host}",
                                  description=f"{request.service} refused: {why}", peer_ae=caller, peer_address=host)
        return Response(NOT_AUTHORIZED, elements={"ErrorComment": why[:64]})

    def tls_failure(self, peer: Any, exc: BaseException) -> None:
        """For the TLS acceptor's ``on_tls_failure``: a failed handshake is a node authentication alert."""
        reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        host = _host(peer)
        audit_point("Security Alert", "TLS handshake failed", peer=host, why=str(reason))
        self.audit.security_alert("node-authentication", host or "?",
                                  description=f"TLS handshake failed: {reason}", peer_address=host)


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
        return True
    except ValueError:
        return False


async def _resolve(names: list[str]) -> dict[str, set[str]]:
    loop = asyncio.get_running_loop()
    out: dict[str, set[str]] = {}
    for name in names:
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), 5.0)
        except (OSError, TimeoutError) as exc:
            log.warning("source host %s cannot be resolved: %s", name, exc)
            continue
        out[name] = {str(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos}
    return out


def _host(peer: Any) -> str:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "?")
