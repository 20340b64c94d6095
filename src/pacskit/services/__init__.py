"""pacskit.services: the add-in API, and the base services every add-in gets.

Everything a DICOM service needs to plug into a pacskit server; the built-in add-ins
(:mod:`pacskit.addins`) use nothing else.

An add-in is a class deriving from :class:`AddIn`. It declares

- ``name``: unique, used for its settings section ``[addins.<name>]``;
- ``Options``: a pydantic model of its options (defaults + validation; the JSON schema is what the
  service manager shows and edits). Every add-in inherits ``enabled`` and ``timeout``;
- :meth:`AddIn.presentation_contexts`: the abstract syntaxes it serves, with transfer syntaxes in
  preference order and the SCP/SCU roles it agrees to;
- :meth:`AddIn.handlers`: which DIMSE services (``"C-STORE"``, ``"C-FIND"``, ``"N-ACTION"``…) it answers on
  those contexts — a handler gets a :class:`~pacskit.net.Request` and returns a status, a
  :class:`~pacskit.net.Response` or an iterator of them (see :mod:`pacskit.net.services` for the contract
  and the allowed statuses); a quick plain function that never waits for the event loop may be
  returned wrapped in :class:`InlineHandler`, so that it runs on the loop's thread while its
  association is the only one (the Storage add-in's C-STORE does);
- :meth:`AddIn.extended_negotiation`: optional, the answer to a peer's SOP Class Extended Negotiation
  (e.g. relational queries for C-FIND);
- :meth:`AddIn.start` / :meth:`AddIn.stop`: lifecycle, with :attr:`AddIn.base` giving the base services;
- :meth:`AddIn.admin_router`: optional, HTTP endpoints of the add-in, mounted by the server's admin API
  under ``/addins/<name>/`` (e.g. the worklist add-in's management of scheduled procedure steps);
- :meth:`AddIn.http_service`: optional, what the add-in serves to the public on the server's HTTP
  listener (:class:`HttpService`: a FastAPI ``APIRouter`` or any ASGI application under a path
  prefix; DICOMweb is the intended user). The listener runs only when an add-in contributes one;
- :attr:`AddIn.permissions`: the names the AE registry's ``allowed_services`` uses for this add-in's
  services (:class:`Permission`), where the core's defaults (``echo``, ``store``, ``find``, ``move``,
  ``get`` by DIMSE service) do not fit: the worklist add-in declares ``worklist`` for its C-FIND;
- :meth:`AddIn.admit_instance`: optional, a decision on each received C-STORE before it is stored
  (:class:`IncomingInstance`): return a :class:`Response` to answer it instead (a refusal, or a
  success that stores nothing), ``None`` to let it in. The routing add-in's ``drop`` rules use it;
  the Storage add-in asks :attr:`BaseServices.admission`, which asks every enabled add-in;
- :meth:`AddIn.workflow_event`: optional, an observer of what happens to patients outside DICOM
  storage (:class:`WorkflowEvent`: an HL7 ADT or order received…), published by an add-in through
  :attr:`BaseServices.workflow`; the prefetch add-in fetches prior studies on them;
- :meth:`AddIn.tls_setup`: optional, for a security add-in: the TLS listener's ``ssl.SSLContext``, its
  port, and the contexts of outgoing associations to AEs the registry marks ``tls`` (a
  :class:`TlsSetup`; the built-in one is :mod:`pacskit.addins.tls`). At most one enabled add-in may
  supply it.

:attr:`BaseServices.control` (:class:`ServerControl`) is what the server hands add-ins that manage it
or share its HTTP users: the admin API as an ASGI application, the servers root when the server is one
of a service manager's, and the listener's shared authenticator (:data:`WebAuthenticator`), through
which an add-in that keeps users (the workstation) lets others (DICOMweb) accept its sessions.

A method of a subclass whose name is close to a hook's but not equal (``admin_routers``,
``presentation_context``) is reported when the add-in is registered, and the add-in is not loaded:
a misspelled hook would otherwise be silently never called.

The server owns dispatch: each (service, abstract syntax) pair has exactly one owner, and two enabled
add-ins claiming the same one is a start-up error naming both. When a handler does not answer within
``timeout`` seconds, the server answers the service's failure status, logs it, and the association goes
on.

Add-ins are found through the entry point group ``pacskit.addins`` (``pip install``-able packages; the
built-ins register themselves the same way) and as ``.py`` files or packages in the server folder's
``addins/``.

Example — a complete add-in::

    from pacskit.services import AddIn, AddInOptions
    from pacskit.net import SupportedContext

    class EchoCounterOptions(AddInOptions):
        greeting: str = "hello"

    class EchoCounter(AddIn):
        name = "echo-counter"
        Options = EchoCounterOptions

        def presentation_contexts(self):
            return [SupportedContext("1.2.840.10008.1.1")]

        def handlers(self):
            return {"C-ECHO": self.on_echo}

        async def on_echo(self, request):
            self.base.log.info("%s from %s", self.options.greeting, request.assoc.remote_ae_title)
            return 0x0000
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from pacskit.audit.service import Audit
from pacskit.dicom.status import Status
from pacskit.net import EventBus, Handler, InlineHandler, Request, Response, SupportedContext

if TYPE_CHECKING:
    import ssl

    from pacskit.config.aetitles import AeTitles, RemoteAE
    from pacskit.config.settings import ServerSettings
    from pacskit.services.dicom_request import DicomRequest
    from pacskit.store import DataStore


class AddInOptions(BaseModel):
    """Options every add-in has; subclass to add your own (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    timeout: float | None = Field(30.0, gt=0, description="seconds a handler may take before the server answers a failure status")


@dataclass(frozen=True, slots=True)
class WebUser:
    """Who made an HTTP request, as a :data:`WebAuthenticator` recognised them: a user name and a role
    (``viewer``, ``operator`` or ``admin``; see docs/web-api.md)."""

    name: str
    role: str


class WebAuthError(Exception):
    """A request carried credentials that were recognised but refused: ``status`` is the HTTP status
    to answer (401: expired or wrong, 403: the role may not, or a missing CSRF token) and ``detail``
    the sentence for the problem+json body."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


#: ``await authenticator(request, permission)``: the :class:`WebUser` of a Starlette ``request`` allowed
#: to do ``permission`` (``find``, ``get``: read; ``store``: write), ``None`` when the request carries
#: none of the authenticator's credentials; raises :class:`WebAuthError` when it carries some that are
#: refused.
WebAuthenticator = Callable[[Any, str], Awaitable["WebUser | None"]]


@runtime_checkable
class ServersRoot(Protocol):
    """The servers of the servers root this server belongs to (``pacskit.admin.manager.ServiceManager``
    fits); given to the server by whoever starts it (``pacskit serve`` in a servers root)."""

    def list(self) -> Any: ...
    def create(self, ae_title: str, *, port: int, host: str = ...) -> Any: ...
    def start(self, name: str, *, timeout: float = ...) -> int: ...
    def stop(self, name: str, *, timeout: float = ..., force: bool = ...) -> bool: ...
    def restart(self, name: str, *, timeout: float = ...) -> int: ...


@dataclass(slots=True)
class ServerControl:
    """What the server hands the add-ins that manage it (an extension point: docs/ARCHITECTURE.md).

    Add-ins sit below the server in the layers and cannot import it; the server fills this object
    instead, as the parts come up, and add-ins read it when a request needs it (never at import):

    - ``admin_app``: the admin API as an ASGI application (the same routes and bodies as over its
      socket, :mod:`pacskit.server.admin_api`), set once the admin API exists; ``None`` when
      ``[admin] enabled = false``. Whoever serves it elsewhere authenticates the callers itself.
    - ``servers``: the servers root (:class:`ServersRoot`) when this server is one of a service
      manager's, else ``None``.
    - ``web_authenticator``: the users of the HTTP listener, installed by at most one add-in (the
      workstation) in ``start`` and removed in ``stop``; other add-ins serving HTTP (DICOMweb) ask it
      before their own checks, so one login serves every service of the listener.
    - ``shared``: state an add-in keeps across reloads, under its name. A reload starts the new
      instance of an add-in before the old one stops, and both see this same dictionary: open
      sessions or a running job queue live here rather than in the instance.
    """

    admin_app: Any = None
    servers: ServersRoot | None = None
    web_authenticator: WebAuthenticator | None = None
    shared: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class BaseServices:
    """Services every add-in can use; each one is replaceable when the server is built.

    - ``dicom_request``: issue C-ECHO, C-STORE, C-FIND, C-MOVE, N-EVENT-REPORT… to other AEs
    - ``ae_titles``: the registry of remote AEs (title, host, port, TLS, allowed services)
    - ``store``: the data access layer (index + blob storage); ``None`` if the server runs without one
    - ``log``: a logger named after the add-in (``pacskit.addin.<name>``); its records carry the add-in,
      association and calling AE of the operation being handled (docs/logging.md)
    - ``events``: the spy event bus of the server (subscribe to association/DIMSE/PDU notifications)
    - ``settings``: the server's settings (read-only by convention)
    - ``data_dir``: the server's data folder (add-ins keep their own files in a sub-folder)
    - ``audit``: the server's audit trail (:class:`pacskit.audit.Audit`): report security-relevant
      events with ``base.audit.security_alert(...)`` and the like; a no-op while no add-in keeps a trail
    - ``workflow``: publish a :class:`WorkflowEvent` to every enabled add-in's
      :meth:`AddIn.workflow_event` (``workflow.publish(event)``)
    - ``admission``: the decisions of the enabled add-ins on a C-STORE before it is stored
      (:meth:`AddIn.admit_instance`); a storage service calls ``admission.check(instance)``
    - ``control``: the admin API, the servers root and the listener's users (:class:`ServerControl`),
      one object shared by every add-in of the server

    and :meth:`exclusive`, for work only one process of the archive may do at a time.
    """

    dicom_request: DicomRequest
    ae_titles: AeTitles
    store: DataStore | None
    log: logging.Logger
    events: EventBus
    settings: ServerSettings
    data_dir: Path
    audit: Audit = field(default_factory=Audit)
    admission: Admission = field(default_factory=lambda: Admission())
    workflow: Workflow = field(default_factory=lambda: Workflow())
    control: ServerControl = field(default_factory=ServerControl)

    def exclusive(self, name: str) -> contextlib.AbstractContextManager[bool]:
        """``with base.exclusive("retention") as mine:`` -- ``mine`` is True when no other process of
        the archive (another worker of ``serve --workers N``, another node of a cluster) is in a block
        of the same name; else False, at once: skip the work, that process is doing it. Periodic
        archive-wide work (retention, sweeps) runs in every process, so it needs this
        (:class:`pacskit.store.exclusive.ExclusiveTasks`: PostgreSQL advisory locks, else a lock file
        in the data folder)."""
        from pacskit.store.exclusive import ExclusiveTasks

        engine = self.store.index.engine if self.store is not None else None
        return ExclusiveTasks(engine, self.data_dir).hold(name)


@dataclass(frozen=True, slots=True)
class WorkflowEvent:
    """Something that happened to a patient outside DICOM storage, for add-ins that act on it.

    ``kind`` says where it comes from (``"hl7"``); ``patient_id`` is the patient's ID as the archive
    knows it; ``detail`` carries the source's own values (for HL7: ``event`` such as ``"A04"`` or
    ``"O01"``, ``message_type``, ``control_id``, ``modality`` when an order names one)."""

    kind: str
    patient_id: str
    detail: Mapping[str, str] = field(default_factory=dict)


class Workflow:
    """Delivers :class:`WorkflowEvent` objects to the enabled add-ins' :meth:`AddIn.workflow_event`,
    in the order of their names, in the publisher's thread. An observer that raises is logged and
    the others still get the event. The server fills :attr:`observers` when its add-ins are loaded."""

    def __init__(self) -> None:
        self.observers: list[tuple[str, Callable[[WorkflowEvent], None]]] = []

    def publish(self, event: WorkflowEvent) -> None:
        for name, observe in self.observers:
            try:
                observe(event)
            except Exception:
                logging.getLogger(f"pacskit.addin.{name}").exception("workflow_event %s failed", event.kind)


@dataclass(slots=True)
class IncomingInstance:
    """A received C-STORE dataset before it is stored, as :meth:`AddIn.admit_instance` sees it.

    ``path`` is the received Part 10 file (read it, never move or change it), its dataset at
    ``offset`` in ``transfer_syntax``; ``size`` its length in bytes; ``calling_ae`` the AE that sent
    it. :meth:`header` decodes everything before the Pixel Data once, for all add-ins that ask."""

    calling_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    path: str
    transfer_syntax: str
    size: int = 0
    _header: Any = None

    def header(self) -> Any:
        """The dataset without its pixel data (a pydicom ``Dataset``), decoded on first use."""
        if self._header is None:
            from pydicom import dcmread

            self._header = dcmread(self.path, stop_before_pixels=True, force=True)
        return self._header


class Admission:
    """Asks the enabled add-ins that implement :meth:`AddIn.admit_instance` about a C-STORE, in the
    order of their names: the first :class:`Response` answers it (nothing is stored). An add-in that
    raises is logged and answers 0xC000: a filter that cannot decide must not let data in silently.
    The server fills :attr:`deciders` when its add-ins are loaded (and again after a reload)."""

    def __init__(self) -> None:
        self.deciders: list[tuple[str, Callable[[IncomingInstance], Response | None]]] = []

    def check(self, instance: IncomingInstance) -> tuple[str, Response] | None:
        """``(add-in name, response)`` of the first add-in that decides, or ``None``: store it."""
        for name, decide in self.deciders:
            try:
                response = decide(instance)
            except Exception as exc:
                logging.getLogger(f"pacskit.addin.{name}").exception("admit_instance failed for %s",
                                                                     instance.sop_instance_uid)
                return name, Response(Status.CANNOT_UNDERSTAND, elements={"ErrorComment": f"{name}: {exc}"[:64]})
            if response is not None:
                return name, response
        return None


@dataclass(frozen=True, slots=True)
class Permission:
    """A name of the AE registry's ``allowed_services`` (``ae-titles.toml``) for an add-in's service: a
    caller whose registry entry does not list ``name`` is answered 0x0124 (Refused: Not Authorized)
    for ``service`` (``"*"``: every DIMSE service) on ``abstract_syntax``, before the add-in sees the
    request. Without a declaration the core's names apply: ``echo``, ``store``, ``find``, ``move``,
    ``get`` for C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET whatever the abstract syntax; other services
    are governed by the add-in serving them."""

    name: str
    abstract_syntax: str
    service: str = "*"


@dataclass(slots=True)
class HttpService:
    """What an add-in serves on the server's public HTTP listener (:meth:`AddIn.http_service`).

    - ``app``: a :class:`fastapi.APIRouter` (included, so its routes share the listener's OpenAPI
      document) or any ASGI application (mounted: it gets the prefix as the ASGI ``root_path``);
    - ``prefix``: the path it is served under (``"/dicom-web"``); ``None``: ``/<add-in name>``;
      ``""``: the root (only routers: a root-mounted application would hide every other service).
      Two add-ins with the same prefix is a start-up error naming both. An add-in serving under
      several prefixes returns a list of services from :meth:`AddIn.http_service`.

    The listener (``[http]`` in ``server.toml``) is public: unlike the admin API it has no
    authentication of its own, so an add-in that serves anything but public data checks its callers.
    """

    app: Any
    prefix: str | None = None


@dataclass(slots=True)
class TlsSetup:
    """How the server speaks TLS; what a security add-in returns from :meth:`AddIn.tls_setup`.

    - ``listen``: the context of the TLS listener (certificate, key, protocol versions and cipher
      suites, client-certificate verification); every connection on ``port`` does the TLS handshake
      with it before the first PDU. A failed handshake closes the connection; no association exists.
    - ``port``: the TLS port (2762 is the registered ``dicom-tls``; 0 binds any free port), on the
      server's ``host``;
    - ``keep_plain``: also keep the plain listener on the settings' ``port`` (``False``: TLS only);
    - ``outgoing``: the context for an association the server opens (``dicom_request``: C-MOVE
      sub-operations, storage commitment reports…) to a registry entry marked ``tls``, or ``None`` when
      this add-in does not do outgoing TLS (such AEs are then unreachable, with one clear error).
    """

    listen: ssl.SSLContext
    port: int = 2762
    keep_plain: bool = True
    outgoing: Callable[[RemoteAE], ssl.SSLContext] | None = None


class AddIn:
    """Base class of add-ins (see the module docstring)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type[AddInOptions]] = AddInOptions
    #: registry names for this add-in's services where the core's defaults do not fit (:class:`Permission`)
    permissions: ClassVar[Sequence[Permission]] = ()

    def __init__(self, options: AddInOptions, base: BaseServices) -> None:
        self.options = options
        self.base = base

    def presentation_contexts(self) -> Sequence[SupportedContext]:
        """The contexts this add-in serves. Called once after construction, before ``start``."""
        return []

    def handlers(self) -> Mapping[str, Handler]:
        """DIMSE service name → handler, for every abstract syntax of :meth:`presentation_contexts`."""
        return {}

    def extended_negotiation(self, sop_class_uid: str, info: bytes) -> bytes | None:
        """Answer the peer's SOP Class Extended Negotiation item (PS3.7 D.3.3.5) for one of this add-in's
        abstract syntaxes: ``info`` is the service-class application information the peer sent; return
        the bytes to answer with, or ``None`` to send no item (the peer then assumes nothing was agreed).
        Called while the association is negotiated; the agreed answer is in
        ``request.assoc.extended_negotiation_response[sop_class_uid]`` for the handlers."""
        return None

    def admin_router(self) -> Any | None:
        """A :class:`fastapi.APIRouter` with this add-in's own admin endpoints, or ``None``.

        The admin API mounts it under ``/addins/<name>/`` beside the server's own endpoints, behind the
        same authentication, so an add-in never opens a port of its own. Routes run in the server's
        process and may use :attr:`base`; keep them quick or make them ``async``. Called once, after
        ``start``."""
        return None

    def http_service(self) -> HttpService | Sequence[HttpService] | None:
        """What this add-in serves on the server's public HTTP listener, or ``None`` (the default);
        a list when it serves under several prefixes.

        Called once, after ``start``; the server starts the listener (``[http]`` in ``server.toml``)
        only when at least one enabled add-in returns a service. Routes run on the server's event
        loop: make them ``async`` and run database work in a thread, as the DIMSE handlers do."""
        return None

    def admit_instance(self, instance: IncomingInstance) -> Response | None:
        """Decide on a received C-STORE before it is stored: ``None`` (the default) lets it in; a
        :class:`Response` answers the C-STORE with it and nothing is stored: a failure status with an
        ``ErrorComment`` to refuse it (0xA700, 0xA900, 0xC000…), 0x0000 to acknowledge and drop it.

        Runs in the server's thread pool for every C-STORE the Storage add-in receives, so keep it
        quick; :meth:`IncomingInstance.header` decodes the attributes once for every add-in. (While
        an add-in implements it, the Storage add-in's handler never runs on the event loop's thread,
        :class:`InlineHandler`: this method may wait for the loop.)"""
        return None

    def workflow_event(self, event: WorkflowEvent) -> None:
        """Observe a :class:`WorkflowEvent` another add-in published (an HL7 ADT, an order…).

        Called synchronously in the publisher's thread before the publisher acknowledges what caused
        the event (the HL7 add-in sends its ACK afterwards): write what must not be lost to durable
        storage here, and do the slow work later (a task, a queue). Exceptions are logged, never
        reach the publisher."""

    def tls_setup(self) -> TlsSetup | None:
        """The server's TLS, for a security add-in; ``None`` (the default) for every other add-in.

        Called once after construction, before the server binds (so the TLS port exists before the
        first association). Raise ``ValueError`` with one clear line for an unusable configuration
        (missing certificate, wrong key): the server does not start. Two enabled add-ins returning a
        setup is a start-up error naming both."""
        return None

    async def start(self) -> None:
        """Called once the server is bound, before the first association. Open resources here."""

    async def stop(self) -> None:
        """Called at shutdown after associations ended (or were aborted). Release resources here."""

    @classmethod
    def options_schema(cls) -> dict[str, Any]:
        """JSON schema of the options (what the service manager shows and edits)."""
        return cls.Options.model_json_schema()


#: The methods and attributes a subclass may override (the hooks), and what every add-in inherits.
HOOKS: frozenset[str] = frozenset(
    name for name in vars(AddIn) if not name.startswith("__") and name not in ("options_schema",)
)


def _distance(a: str, b: str) -> int:
    """Optimal string alignment distance (Levenshtein plus adjacent transpositions)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def misspelled_hooks(cls: type[AddIn]) -> list[str]:
    """One line per attribute of ``cls`` (or its own bases, below :class:`AddIn`) named like a hook
    but not one: one typo away (``admin_routers``, ``presentation_context``, ``tls_set_up``), two
    for the long hook names. Such a method would never be called; the add-in manager refuses the
    add-in. Short hooks (``name``, ``start``, ``stop``) are not guessed at: too many helpers look like
    them."""
    problems = []
    for klass in cls.__mro__:
        if klass is AddIn or not issubclass(klass, AddIn):
            continue
        for attr in vars(klass):
            if attr.startswith("_") or attr in HOOKS or attr in ("options", "base"):  # instance attributes
                continue
            for hook in sorted(HOOKS):
                if len(hook) < 6 or abs(len(hook) - len(attr)) > 2:
                    continue
                if _distance(attr, hook) <= (2 if len(hook) >= 12 else 1):
                    problems.append(f"{klass.__qualname__}.{attr} is not an add-in hook (did you mean {hook!r}?)")
                    break
    return problems


__all__ = [
    "HOOKS",
    "AddIn",
    "Admission",
    "AddInOptions",
    "Audit",
    "BaseServices",
    "Handler",
    "HttpService",
    "IncomingInstance",
    "InlineHandler",
    "Permission",
    "Request",
    "Response",
    "ServerControl",
    "ServersRoot",
    "Status",
    "SupportedContext",
    "TlsSetup",
    "WebAuthError",
    "WebAuthenticator",
    "WebUser",
    "Workflow",
    "WorkflowEvent",
    "misspelled_hooks",
]
