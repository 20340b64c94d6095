"""The DICOM server: one AE title, its settings folder, its add-ins, its base services.

Start-up, in order: load settings → discover and instantiate add-ins (bad options or two add-ins
claiming the same service on the same abstract syntax stop here, naming both) → bind (address in use:
:class:`ServerError` with one clear line) → register base services → start add-ins → the admin API
(:mod:`pacskit.server.admin_api`, unless ``[admin] enabled = false``) → the public HTTP listener, when
an add-in serves HTTP (:mod:`pacskit.server.http`) → serve. Shutdown (SIGINT/SIGTERM through
:func:`run_server`): close the admin API and the HTTP listener, stop listening, let running operations finish for a grace
period, abort what is left, stop add-ins, close the store. :meth:`Server.reload` rebuilds the add-ins
without dropping open associations.

The core only negotiates, dispatches and watches; every DICOM service is an add-in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from pacskit.services import AddIn, Admission, BaseServices, ServerControl, ServersRoot, TlsSetup, Workflow
from pacskit.net import Acceptor, Association, EventBus, Reject, Services, SupportedContext
from pacskit.net.services import DuplicateHandler
from pacskit.audit.service import Audit
from pacskit.server.access import AccessControl, ServiceNames, is_open
from pacskit.server.addin_manager import AddInError, AddInManager
from pacskit.config.aetitles import AE_FILE, AeTitles, FileAeRegistry
from pacskit.server.datalock import DataFolderBusy, DataFolderLock, lock_data_folder
from pacskit.server.http import HttpServiceError, PublicHttp, http_services
from pacskit.services.dicom_request import DicomRequest
from pacskit.server.logconfig import addin_logger
from pacskit.config.settings import ServerSettings, load_settings

log = logging.getLogger("pacskit.server")

# Settings a reload applies; any other change needs a restart (the reload says which).
RELOADABLE_SETTINGS = frozenset({"addins"})


@dataclasses.dataclass(slots=True)
class AddInGeneration:
    """The add-in instances built from one reading of the settings, and the service table they fill.

    An association keeps the generation it was accepted with (its ``services``) to its end; a reload
    builds a new generation for new associations and stops the old add-ins once the last association
    of their generation has closed.
    """

    services: Services
    addins: list[AddIn] = dataclasses.field(default_factory=list)
    contexts: list[SupportedContext] = dataclasses.field(default_factory=list)
    negotiators: dict[str, AddIn] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class ReloadReport:
    """What :meth:`Server.reload` did: the add-ins now loaded, and settings that need a restart."""

    addins: list[str]
    restart_needed: list[str]
    previous_associations: int


class ServerError(RuntimeError):
    """The server cannot start; the message is one line meant for the operator."""


def merge_contexts(claims: Sequence[tuple[str, SupportedContext]]) -> list[SupportedContext]:
    """Merge the contexts several add-ins declare for the same abstract syntax.

    A storage SOP class can be served by the Storage add-in (C-STORE, requestor as SCU) and needed by
    the Retrieve add-in (C-GET: requestor as SCP). Roles are OR'ed, transfer syntaxes united in the order
    first declared. Who *handles* which service is decided separately, one owner per service.
    """
    merged: dict[str, SupportedContext] = {}
    for _, ctx in claims:
        prev = merged.get(ctx.abstract_syntax)
        if prev is None:
            merged[ctx.abstract_syntax] = SupportedContext(
                ctx.abstract_syntax, tuple(ctx.transfer_syntaxes), ctx.scu_role, ctx.scp_role
            )
            continue
        syntaxes = list(prev.transfer_syntaxes) + [ts for ts in ctx.transfer_syntaxes if ts not in prev.transfer_syntaxes]
        merged[ctx.abstract_syntax] = SupportedContext(
            ctx.abstract_syntax, tuple(syntaxes), prev.scu_role or ctx.scu_role, prev.scp_role or ctx.scp_role
        )
    return list(merged.values())


def open_store(settings: ServerSettings, *, recover: bool = True) -> Any:
    """The default ``store`` base service: the SQL index at ``database.url`` + files under ``storage.path``.

    ``recover`` (the default) first cleans up after a crash — temp files and journalled blobs that
    were never acknowledged. It must only run while no other process writes to the store: worker
    processes pass ``False`` (their parent recovered before starting them).
    """
    from pacskit.store import DataStore, open_blob_store

    settings.data_path.mkdir(parents=True, exist_ok=True)
    try:
        blobs = open_blob_store(settings.storage.backend, settings.storage_path, settings.storage.options,
                                durability=settings.storage.durability)
    except ValueError as exc:
        raise ServerError(f"[storage] {exc}") from exc
    if recover:
        # Temp files left by a crash were never acknowledged: drop them before accepting associations.
        removed = blobs.purge_temp()
        if removed:
            log.warning("removed %d incomplete temp files left by an earlier run", removed)
    store = DataStore.open(settings.database_url, blobs=blobs, recover=recover)
    if settings.cluster_enabled:
        # One node of several: every node's ingests in flight are in the shared journal (``check``
        # reads it; a serving node replaces this read-only one with its own, see Server._join_cluster).
        from pacskit.store.cluster import SharedInflight

        store.shared_journal = SharedInflight(store.index.engine, None)
    return store


class Server:
    """A pacskit DICOM server.

    ``addin_classes`` replaces discovery (tests, embedding); otherwise add-ins come from entry points and
    ``<folder>/addins/``. ``store``, ``ae_titles`` and ``dicom_request`` replace the default base services.
    A server that opens its own store (no ``store``, not a worker) holds its data folder's lock
    (:mod:`pacskit.server.datalock`) from :meth:`start` to :meth:`stop`: ``data_lock`` if the caller
    took it first, else it takes it (:class:`ServerError` naming the holder when another process has it).
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        addin_classes: Sequence[type[AddIn]] | None = None,
        use_entry_points: bool = True,
        store: Any = None,
        ae_titles: AeTitles | None = None,
        dicom_request: DicomRequest | None = None,
        worker: bool = False,
        data_lock: DataFolderLock | None = None,
        servers: ServersRoot | None = None,
    ) -> None:
        self.settings = settings
        self.worker = worker  # one of several processes sharing the store; the parent hands it connections
        # The data folder's lock (pacskit.server.datalock): given by run_server, which took it first;
        # otherwise taken by start() when the server opens its own store (not as a worker).
        self._data_lock = data_lock
        self._own_lock = False
        self.bus = EventBus()
        self.services = Services()
        self.manager = AddInManager()
        self.addins: list[AddIn] = []
        self.acceptor: Acceptor | None = None  # the plain listener (None when TLS-only)
        self.tls_acceptor: Acceptor | None = None  # the TLS listener a security add-in asked for
        self.tls: TlsSetup | None = None
        self._addin_classes = addin_classes
        self._use_entry_points = use_entry_points
        self._store = store
        self._ae_titles = ae_titles
        self._dicom_request = dicom_request
        self._started_addins: list[AddIn] = []
        self._negotiators: dict[str, AddIn] = {}  # abstract syntax -> add-in answering its extended negotiation
        self._generations: dict[int, AddInGeneration] = {}  # id(services) -> generation still in use
        self._retiring: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        self.admin: Any = None  # pacskit.server.admin_api.AdminService once started
        self.http: Any = None  # pacskit.server.http.PublicHttp once an add-in serves HTTP
        #: the audit trail base service, shared by every add-in (the audit add-in attaches its trail)
        self.audit = Audit()
        self.admission = Admission()
        self.workflow = Workflow()
        #: this node of a cluster (pacskit.store.cluster.ClusterNode), None on a single server
        self.cluster: Any = None
        #: what add-ins that manage the server get (pacskit.services.ServerControl): the admin API
        #: once it exists, the servers root ``servers`` when the server belongs to one
        self.control = ServerControl(servers=servers)

    # ------------------------------------------------------------------ start-up

    def _open_store(self) -> Any:
        if self._store is not None:
            return self._store
        if self._data_lock is None and not self.worker:
            # One server per data folder, before recovery touches anything (DataFolderBusy: nothing done)
            self.settings.data_path.mkdir(parents=True, exist_ok=True)
            try:
                self._data_lock = lock_data_folder(self.settings.data_path, "pacskit server")
            except DataFolderBusy as exc:
                raise ServerError(f"{exc}: one server per data folder") from None
            self._own_lock = True
        try:
            store = open_store(self.settings, recover=not self.worker)
        except BaseException:
            self._release_lock()
            raise
        store.prepare_ingest()  # the blob store's ingest log, ready before the first C-STORE
        return store

    def _join_cluster(self, store: Any) -> AeTitles | None:
        """In a cluster (``[cluster]``, :mod:`pacskit.store.cluster`): register this node's lease, record
        its ingests in the shared journal, and return the shared AE registry (seeded with the local
        ``ae-titles.toml`` entries it lacks). ``None`` when this server is not a cluster node."""
        settings = self.settings
        if not settings.cluster_enabled or self._store is not None:
            return None
        from pacskit.store.cluster import ClusterNode, SharedAeRegistry

        name = settings.cluster_node_name
        node = ClusterNode(store.index.engine, name, settings.cluster.lease_seconds, store.blobs.delete)
        try:
            node.start()
            registry = SharedAeRegistry(store.index.engine, name)
            local = settings.folder / AE_FILE
            if local.exists():
                added = registry.seed(FileAeRegistry(local).all())
                if added:
                    log.info("copied %d AEs of %s into the shared AE registry", added, local)
        except Exception as exc:
            self.cluster = node  # stopped (and its row removed) by _close_store
            self._close_store()
            raise ServerError(f"cannot join the cluster as node {name}: {exc}") from exc
        previous = store.shared_journal
        store.shared_journal = node.inflight
        if previous is not None:
            previous.close()
        self.cluster = node
        return registry

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(ok, details)`` for the ``/healthz`` endpoint: the index database answers and, in a
        cluster, this node's lease is current."""
        details: dict[str, Any] = {"ae_title": self.settings.ae_title}
        node = self.cluster
        if node is not None:
            details["node"] = node.name
            if not node.healthy():
                return False, {**details, "reason": "cluster lease not renewed (index database unreachable?)"}
        try:
            from sqlalchemy import text

            with self.store.index.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return False, {**details, "reason": f"index database: {type(exc).__name__}"}
        return True, details

    def _load_addins(self, base_for: Any) -> None:
        if self._addin_classes is not None:
            for cls in self._addin_classes:
                self.manager.add_class(cls, f"class {cls.__module__}.{cls.__qualname__}")
        else:
            self.manager.discover(self.settings.folder / "addins", use_entry_points=self._use_entry_points)
        generation = self._build_generation(self.settings, base_for)
        for addin in generation.addins:
            self._take_tls(addin.name, addin)  # once: a reload does not re-key the TLS listener
        self._use_generation(generation)

    def _build_generation(self, settings: ServerSettings, base_for: Any) -> AddInGeneration:
        """Instantiate the discovered add-ins with ``settings``' sections into a fresh service table."""
        unknown = set(settings.addins) - set(self.manager.found)
        for name in sorted(unknown):
            log.warning("settings configure add-in %r, which is not installed", name)
        generation = AddInGeneration(Services())
        claims: list[tuple[str, SupportedContext]] = []
        for name, found in sorted(self.manager.found.items()):
            options = self.manager.options_for(name, settings.addin_section(name))
            if not options.enabled:
                log.debug("add-in %s is disabled", name)
                continue
            addin = found.cls(options, base_for(name))
            contexts = list(addin.presentation_contexts())
            handlers = dict(addin.handlers())
            syntaxes = [ctx.abstract_syntax for ctx in contexts]
            for service, handler in handlers.items():
                try:
                    generation.services.register(service, handler, syntaxes, timeout=options.timeout, owner=name)
                except DuplicateHandler as exc:
                    raise AddInError(f"add-ins claim the same presentation context: {exc}") from None
            claims.extend((name, ctx) for ctx in contexts)
            if type(addin).extended_negotiation is not AddIn.extended_negotiation:
                for ctx in contexts:
                    generation.negotiators.setdefault(ctx.abstract_syntax, addin)
            generation.addins.append(addin)
            log.debug("add-in %s loaded from %s (%d contexts)", name, found.origin, len(contexts))
        generation.contexts = merge_contexts(claims)
        return generation

    def _use_generation(self, generation: AddInGeneration) -> None:
        access = getattr(self, "access", None)
        if access is not None:  # a reload: the new service table checks requests like the old one
            generation.services.authorizer = access.authorize
            access.service_names = self._service_names(generation.addins)
        self.services = generation.services
        self.addins = generation.addins
        self.admission.deciders = [
            (addin.name, addin.admit_instance) for addin in sorted(generation.addins, key=lambda a: a.name)
            if type(addin).admit_instance is not AddIn.admit_instance
        ]
        self.workflow.observers = [
            (addin.name, addin.workflow_event) for addin in sorted(generation.addins, key=lambda a: a.name)
            if type(addin).workflow_event is not AddIn.workflow_event
        ]
        self.contexts = generation.contexts
        self._negotiators = generation.negotiators
        self._generations[id(generation.services)] = generation
        for acceptor in self.acceptors:
            acceptor.services = generation.services
            acceptor.contexts = generation.contexts

    def _service_names(self, addins: Sequence[AddIn]) -> ServiceNames:
        """The registry's service names: the core's, and those the loaded add-ins declare. A name in
        the AE registry that nothing answers to is most likely a typo: logged."""
        names = ServiceNames(p for addin in addins for p in type(addin).permissions)
        known = names.names()
        registry = getattr(self, "ae_titles", None)
        for ae in registry.all() if registry is not None else ():
            unknown = sorted(set(ae.allowed_services or ()) - known)
            if unknown:
                log.warning("ae-titles.toml: %s allows %s, which no loaded service answers to (known: %s)",
                            ae.title, ", ".join(unknown), ", ".join(sorted(known)))
        return names

    @property
    def acceptors(self) -> list[Acceptor]:
        """The listeners of this server (the administrative view iterates them all)."""
        return [a for a in (self.acceptor, self.tls_acceptor) if a is not None]

    def _take_tls(self, name: str, addin: AddIn) -> None:
        try:
            setup = addin.tls_setup()
        except ValueError as exc:
            raise AddInError(str(exc)) from exc
        if setup is None:
            return
        if self.tls is not None:
            raise AddInError(f"two add-ins supply TLS: {self._tls_owner!r} and {name!r}")
        self.tls, self._tls_owner = setup, name

    @staticmethod
    def _warm_up_index(store: Any) -> None:
        """The index's :meth:`~pacskit.store.Index.warm_up` in a thread of its own (it is a speed-up
        of the first C-STORE, never a reason to wait or to fail)."""
        warm_up = getattr(getattr(store, "index", None), "warm_up", None)
        if warm_up is None:
            return

        def run() -> None:
            try:
                warm_up()
            except Exception as exc:
                log.debug("index warm-up failed: %s", exc)

        threading.Thread(target=run, name="pacskit-index-warm-up", daemon=True).start()

    async def start(self) -> None:
        """Load add-ins, bind, start add-ins. Raises :class:`ServerError` / :class:`AddInError`."""
        settings = self.settings
        store = self._open_store()
        self.store = store
        ae_titles = self._ae_titles or self._join_cluster(store) or FileAeRegistry(settings.folder / AE_FILE)
        outgoing_config = config = settings.net_config()
        temp_dir = getattr(store, "temp_dir", None)
        if temp_dir is not None:
            config = dataclasses.replace(config, temp_dir=str(temp_dir), spare_temp_files=16)
        dicom_request = self._dicom_request or DicomRequest(settings.ae_title, ae_titles, outgoing_config, self.bus)
        self.ae_titles = ae_titles
        self.dicom_request = dicom_request

        def base_for(name: str) -> BaseServices:
            return BaseServices(
                dicom_request=dicom_request,
                ae_titles=ae_titles,
                store=store,
                log=addin_logger(name),
                events=self.bus,
                settings=settings,
                data_dir=settings.data_path,
                audit=self.audit,
                admission=self.admission,
                workflow=self.workflow,
                control=self.control,
            )

        self._base_for = base_for
        try:
            self._load_addins(base_for)
        except Exception:
            self._close_store()
            raise
        if not settings.is_loopback and settings.open_mode:
            log.warning("open mode: any calling AE may associate on %s (not only registered AEs)", settings.host)
        self.access = AccessControl(ae_titles, open_to_unknown=is_open(settings), audit=self.audit,
                                    service_names=self._service_names(self.addins))
        self.access.watch(self.bus)
        self.services.authorizer = self.access.authorize
        tls = self.tls
        if tls is not None and tls.outgoing is not None and hasattr(dicom_request, "use_tls"):
            dicom_request.use_tls(tls.outgoing)
        if settings.admin.enabled and not self.worker:
            # Before binding: importing the web stack takes a moment, and statistics must see the
            # first association. The API listens once the add-ins have started (below).
            from pacskit.server.admin_api import AdminService

            self.admin = AdminService(self)
            self.admin.collect()
            self.control.admin_app = self.admin.app
        listeners: list[tuple[str, int]] = []
        if tls is None or tls.keep_plain:
            self.acceptor = self._acceptor(config)
            listeners.append(("acceptor", settings.port))
        if tls is not None:
            self.tls_acceptor = self._acceptor(config, tls)
            listeners.append(("tls_acceptor", tls.port))
        for attr, port in listeners:
            if self.worker:  # the parent process listens and hands each connection over (server/workers.py)
                getattr(self, attr).serve_handed(settings.host, port)
                continue
            try:
                await getattr(self, attr).start(settings.host, port)
            except OSError as exc:
                await self._close_acceptors()
                if self.admin is not None:
                    await self.admin.stop()
                    self.admin = None
                self._close_store()
                reason = exc.strerror or str(exc)
                if "address already in use" in str(exc).lower():
                    reason = "address already in use"
                raise ServerError(f"cannot listen on {settings.host}:{port}: {reason}") from exc
        for addin in self.addins:
            await addin.start()
            self._started_addins.append(addin)
        self._warm_up_index(store)
        if self.admin is not None:
            from pacskit.server.admin_api import AdminError

            try:
                await self.admin.start()
            except AdminError as exc:
                await self.stop(grace=0)
                raise ServerError(str(exc)) from exc
        try:
            await self._serve_http(self.addins)
        except HttpServiceError as exc:
            await self.stop(grace=0)
            raise ServerError(str(exc)) from exc
        # What an operator needs at start, in two lines (the details are at DEBUG): the address is the
        # line run_server prints; the add-ins, and where the admin API answers.
        loaded = {a.name for a in self.addins}
        off = sorted(set(self.manager.found) - loaded)
        log.info(
            "server %s listening on %s, port %s; add-ins: %s%s",
            settings.ae_title,
            settings.host,
            " and ".join(f"{p} ({'TLS' if a is self.tls_acceptor else 'plain'})" for a, p in self._ports()),
            ", ".join(sorted(loaded)) or "none",
            f" (off: {', '.join(off)})" if off else "",
        )

    async def _serve_http(self, addins: Sequence[AddIn]) -> None:
        """Serve the add-ins' HTTP services (:mod:`pacskit.server.http`): start the public listener
        when the first one appears, else swap the application. Raises :class:`HttpServiceError`."""
        services = http_services(addins)
        health = self.health if self.cluster is not None and self.settings.cluster.health_endpoint else None
        if self.http is not None:
            self.http.replace(services)
        elif services or health is not None:  # a cluster node serves /healthz for its load balancer
            http = PublicHttp(self.settings, services, reuse_port=self.worker, health=health)
            await http.start()
            self.http = http

    def _acceptor(self, config: Any, tls: TlsSetup | None = None) -> Acceptor:
        return Acceptor(
            self.settings.ae_title,
            self.contexts,
            self.services,
            config=config,
            bus=self.bus,
            on_associate=self._on_associate,
            ssl=tls.listen if tls is not None else None,
            on_tls_failure=self.access.tls_failure if tls is not None else None,
        )

    def _ports(self) -> list[tuple[Acceptor, int]]:
        return [(a, a.port) for a in (self.acceptor, self.tls_acceptor) if a is not None and a.addresses]

    async def _on_associate(self, assoc: Association) -> Reject | None:
        """Access control, then the add-ins' answers to SOP Class Extended Negotiation."""
        decision = await self._check_calling_ae(assoc)
        if decision is not None:
            return decision
        generation = self._generations.get(id(assoc.services))
        negotiators = generation.negotiators if generation is not None else self._negotiators
        for uid, info in assoc.extended_negotiation.items():
            addin = negotiators.get(uid)
            if addin is None:
                continue
            try:
                answer = addin.extended_negotiation(uid, info)
            except Exception:
                log.exception("add-in %s failed to answer extended negotiation for %s", addin.name, uid)
                continue
            if answer is not None:
                assoc.extended_negotiation_response[uid] = answer
        return None

    async def _check_calling_ae(self, assoc: Association) -> Reject | None:
        """Who may associate (:mod:`pacskit.server.access`): registered AEs by their rules (source
        hosts, TLS, certificate subject, user identity); unregistered ones only on an open server."""
        return await self.access.check_association(assoc)

    @property
    def port(self) -> int:
        """The plain port (the TLS port when the server listens on TLS only)."""
        acceptor = self.acceptor or self.tls_acceptor
        assert acceptor is not None
        return acceptor.port

    @property
    def tls_port(self) -> int | None:
        return self.tls_acceptor.port if self.tls_acceptor is not None else None

    # ------------------------------------------------------------------ reload

    async def reload(self) -> ReloadReport:
        """Re-read ``server.toml`` and rebuild the add-ins with their new options, without dropping anyone.

        The new generation of add-ins is built and started first; if that fails (bad options, a
        ``start`` that raises) the error is raised and the running generation stays as it was. Then
        the acceptor's service table and contexts are swapped, so the next association uses the new
        add-ins, while every open association keeps the handlers it was accepted with. The old
        add-ins are stopped once the last of those associations has ended. Old and new instances of
        an add-in therefore run side by side for a while; they share the base services (store, AE
        registry, event bus). Only ``[addins.*]`` is applied; other changed settings are listed in
        :attr:`ReloadReport.restart_needed`. Add-in code is not re-imported (new code: restart).
        Raises :class:`SettingsError` or :class:`AddInError`.
        """
        async with self._reload_lock:
            fresh = load_settings(self.settings.folder)
            current = self.settings.model_dump()
            changed = fresh.model_dump()
            restart_needed = sorted(k for k in changed if k not in RELOADABLE_SETTINGS and changed[k] != current[k])
            tls_owner = getattr(self, "_tls_owner", None)
            if tls_owner is not None and fresh.addin_section(tls_owner) != self.settings.addin_section(tls_owner):
                restart_needed.append(f"addins.{tls_owner} (the TLS listener)")
            old = self._generations.get(id(self.services))
            settings = self.settings.model_copy(update={"addins": fresh.addins})
            generation = self._build_generation(settings, self._base_for)
            started: list[AddIn] = []
            try:
                for addin in generation.addins:
                    await addin.start()
                    started.append(addin)
                await self._serve_http(generation.addins)
            except Exception as exc:
                for addin in reversed(started):
                    await self._stop_addin(addin)
                raise AddInError(f"reload failed, the running add-ins stay: {type(exc).__name__}: {exc}") from exc
            self.settings.addins = fresh.addins
            self._use_generation(generation)
            self._started_addins.extend(started)
            previous = [c.association for acceptor in self.acceptors for c in acceptor.connections()]
            previous = [a for a in previous if old is not None and a.services is old.services]
            if old is not None:
                task = asyncio.get_running_loop().create_task(self._retire(old, previous))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            log.info(
                "reloaded: %d add-ins (%s); %d open associations keep the previous ones",
                len(generation.addins), ", ".join(a.name for a in generation.addins), len(previous),
            )
            if restart_needed:
                log.warning("reload did not apply %s: restart the server for that", ", ".join(restart_needed))
            return ReloadReport([a.name for a in generation.addins], restart_needed, len(previous))

    async def _retire(self, generation: AddInGeneration, associations: list[Association]) -> None:
        """Stop a replaced generation's add-ins once its last association has closed."""
        pending = [a.dul.closed for a in associations if not a.dul.closed.done()]
        if pending:
            await asyncio.wait(pending)
        self._generations.pop(id(generation.services), None)
        for addin in reversed(generation.addins):
            if addin in self._started_addins:
                self._started_addins.remove(addin)
                await self._stop_addin(addin)
        log.info("previous add-ins stopped (%s)", ", ".join(a.name for a in generation.addins) or "none")

    async def _stop_addin(self, addin: AddIn) -> None:
        try:
            await addin.stop()
        except Exception:
            log.exception("add-in %s failed to stop", addin.name)

    # ------------------------------------------------------------------ shutdown

    async def _close_acceptors(self, grace: float = 0.0) -> None:
        for acceptor in (self.acceptor, self.tls_acceptor):
            if acceptor is not None:
                await acceptor.close(grace)

    async def stop(self, grace: float = 10.0) -> None:
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
            self.control.admin_app = None
        if self.http is not None:
            await self.http.stop()
            self.http = None
        await self._close_acceptors(grace)
        for task in list(self._retiring):
            task.cancel()
        for addin in reversed(self._started_addins):
            try:
                await addin.stop()
            except Exception:
                log.exception("add-in %s failed to stop", addin.name)
        self._started_addins.clear()
        self._close_store()

    def _close_store(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()  # leave the cluster: our row goes, nothing of ours is in flight
            self.cluster = None
        store = getattr(self, "store", None) or self._store
        if store is not None and hasattr(store, "close"):
            store.close()
        self._release_lock()

    def _release_lock(self) -> None:
        if self._own_lock and self._data_lock is not None:
            self._data_lock.release()
            self._data_lock = None
            self._own_lock = False

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def configure_logging(settings: ServerSettings, *, worker: bool = False) -> None:
    """Install the logging destinations of ``settings`` (see :mod:`pacskit.server.logconfig`)."""
    from pacskit.server.logconfig import configure_logging as configure

    configure(settings, worker=worker)


SWITCH_INTERVAL = 0.0005  # seconds; see run_server


def run_server(settings: ServerSettings, *, worker: bool = False, servers: ServersRoot | None = None,
               announce: Any = None) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code (1 with one line on start-up errors).

    ``servers``: the servers root the server belongs to (:class:`pacskit.services.ServerControl`);
    ``announce(server)``: called once it listens, after the "listening" line (``pacskit serve --web``
    prints the URL to open).

    With ``settings.workers > 1`` this process becomes the parent of that many worker processes
    (see :mod:`pacskit.server.workers`); ``worker`` is how such a worker runs itself.
    """
    if worker:
        return _run_server(settings, worker=True, data_lock=None)
    # One server per data folder: the lock before anything else (logging files, recovery, sockets),
    # held until this process ends; a refused start touches nothing.
    try:
        settings.data_path.mkdir(parents=True, exist_ok=True)
        data_lock = lock_data_folder(settings.data_path, "pacskit serve")
    except DataFolderBusy as exc:
        print(f"error: {exc}: one server per data folder", flush=True)
        return 1
    except OSError as exc:
        print(f"error: cannot lock the data folder {settings.data_path}: {exc.strerror or exc}", flush=True)
        return 1
    with data_lock:
        if settings.workers > 1:
            from pacskit.server.workers import run_workers

            configure_logging(settings)
            return run_workers(settings, data_lock)
        return _run_server(settings, worker=False, data_lock=data_lock, servers=servers, announce=announce)


def _run_server(settings: ServerSettings, *, worker: bool, data_lock: DataFolderLock | None,
                servers: ServersRoot | None = None, announce: Any = None) -> int:
    async def run() -> int:
        server = Server(settings, worker=worker, data_lock=data_lock, servers=servers)
        try:
            await server.start()
        except (ServerError, AddInError) as exc:
            print(f"error: {exc}", flush=True)
            return 1
        # What start-up made (modules, add-ins, the index's compiled statements) lives as long as
        # the server: out of the cyclic collector's reach, so that its full collections do not walk
        # it again and again. A worker process (python -m pacskit.server.workers) had nothing frozen
        # (pacskit.cli.main freezes only the command line's imports): ~4% of its CPU in
        # gc_collect_main with 8 associations (perf, serve --workers 2).
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        channel = None
        if worker:  # connections come from the parent; a parent gone is a stop (server/workers.py)
            from pacskit.server.workers import attach_worker

            channel = attach_worker(server, stop.set)
        ports = " and ".join(f"{p}{' (TLS)' if a is server.tls_acceptor else ''}" for a, p in server._ports())
        print(
            f"pacskit {settings.ae_title} listening on {settings.host}:{ports}, "
            f"data in {settings.data_path.resolve()}",
            flush=True,
        )
        if announce is not None:
            announce(server)
        await stop.wait()
        log.info("shutting down: letting running operations finish")
        if channel is not None:
            channel.stop_taking()  # what the parent still sends is closed with this process
        await server.stop()
        return 0

    configure_logging(settings, worker=worker)
    # The event loop thread releases the GIL at every system call; handler threads doing CPU work
    # (header walk, SQL, hashing) then keep it for up to the switch interval before handing it
    # back, and every association waits. Measured with 8 parallel storescu into one server:
    # 6.9 s at CPython's default of 5 ms, 6.4 s at 0.5 ms (two runs each).
    sys.setswitchinterval(SWITCH_INTERVAL)
    return asyncio.run(run())
