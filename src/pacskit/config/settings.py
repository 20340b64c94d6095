"""Server settings: one TOML file per server, validated by pydantic.

A server lives in a folder named after its AE title; ``server.toml`` in it holds everything below.
Unknown keys are errors (a typo must not silently fall back to a default), and every error names the
file, the key and what was expected.

Example::

    ae_title = "PACSKIT"
    host = "127.0.0.1"
    port = 11112
    max_associations = 100
    workers = 1                 # processes serving the port (SO_REUSEPORT), each with its add-ins
    proxy_protocol_from = ["10.0.0.2"]  # load balancers that send a PROXY header (docs/deployment.md)

    [timeouts]
    acse = 30
    dimse = 60
    network = 600

    [database]
    url = "sqlite:///{data_dir}/index.db"

    [addins.storage]
    duplicate_policy = "keep-first"
    timeout = 30

    [addins.my-addin]
    enabled = false

    [admin]                     # the admin API (docs/admin.md)
    enabled = true
    socket = "STORE.sock"       # default: <folder>/<AE title>.sock
    tcp_host = "0.0.0.0"        # optional TCP listener: needs TLS and a bearer token
    tcp_port = 8443
    tls_cert = "admin-cert.pem"
    tls_key = "admin-key.pem"
    token_file = "admin-token"

    [http]                      # public HTTP for add-ins that serve it (DICOMweb); only if one does
    port = 8042                 # as Orthanc: base URL http://host:8042/dicom-web

    [cluster]                   # several nodes on one PostgreSQL + S3 (docs/deployment.md)
    enabled = true              # default: on when the index is PostgreSQL and the blobs are in S3
    node_name = "pacs-1"        # default: <host name>-<data folder name>
    lease_seconds = 30          # a node silent this long is dead: the others recover its work
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pacskit.config.validation import SettingsError, validate_ae_title
from pacskit.net.config import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, NetConfig
from pacskit.net.proxy import TrustedProxies

SETTINGS_FILE = "server.toml"
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Timeouts(_Strict):
    """Seconds; 0 disables a timeout."""

    acse: float = Field(30.0, ge=0)
    dimse: float = Field(60.0, ge=0)
    network: float = Field(600.0, ge=0)
    artim: float = Field(30.0, gt=0)


class DatabaseSettings(_Strict):
    """``url`` is an SQLAlchemy URL; ``{data_dir}`` is replaced by the server's data folder."""

    url: str = "sqlite:///{data_dir}/index.db"


class StorageSettings(_Strict):
    """Where instance files live (relative paths are inside the data folder), and in what kind of blob
    store: ``backend`` is ``"filesystem"`` (the default), ``"memory"`` (tests only), the name of an
    installed blob store (entry point group ``pacskit.blobstores``) or ``"module:factory"``;
    ``options`` are passed to its factory (see :func:`pacskit.store.open_blob_store`)."""

    path: str = "files"
    backend: str = "filesystem"
    options: dict[str, Any] = Field(default_factory=dict)
    #: What is flushed before a C-STORE / STOW-RS is answered (docs/store.md, "The durability
    #: contract"): ``full`` (the default) keeps the contract, a stored instance survives a power cut;
    #: ``file`` flushes the file's bytes but not its directory entry (as Orthanc does); ``none``
    #: flushes nothing (safe against a crash of the server, not of the machine).
    durability: Literal["full", "file", "none"] = "full"


Level = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class SyslogDestination(_Strict):
    """RFC 5424 syslog to one collector (see :mod:`pacskit.records.syslog`)."""

    host: str = "127.0.0.1"
    port: int = Field(514, ge=1, le=65535)
    protocol: Literal["udp", "tcp", "tls"] = "udp"
    level: Level = "WARNING"
    facility: str = "daemon"
    app_name: str = "pacskit"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    queue_size: int = Field(10_000, ge=1)

    @field_validator("facility")
    @classmethod
    def _facility(cls, value: str) -> str:
        from pacskit.records.syslog import FACILITIES

        if value not in FACILITIES:
            raise ValueError(f"unknown syslog facility {value!r}; one of {', '.join(FACILITIES)}")
        return value


class LoggingSettings(_Strict):
    """Where log records go (docs/logging.md). ``level`` is the default level of the destinations;
    each may set its own (``console_level``...). Paths are relative to the data folder."""

    level: Level = "INFO"
    console: bool = True
    console_level: Level | None = None
    file: str | None = "logs/server.log"
    file_level: Level | None = None
    file_max_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    file_backups: int = Field(5, ge=0)
    #: also write one JSON object per line to ``json_file``
    json_lines: bool = False
    json_file: str = "logs/server.jsonl"
    json_level: Level | None = None
    syslog: SyslogDestination | None = None
    #: also write records to the ``log_records`` table of the server's database (through a bounded queue)
    database: bool = False
    database_level: Level = "WARNING"
    database_queue_size: int = Field(10_000, ge=1)
    #: allow patient data (names, IDs, query keys) in log lines; off by default
    phi: bool = False


_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,15}$")


def safe_file_name(ae_title: str) -> str:
    """The AE title itself when it can name a file or folder safely, else ``ValueError``.

    AE titles may contain ``/``, spaces and other characters a path must not; servers are named after
    their AE title only when it is letters, digits, ``_``, ``.`` and ``-`` and does not start with a
    dot or dash (so never ``..``, never hidden, never an option)."""
    if not _SAFE_NAME_RE.match(ae_title):
        raise ValueError(
            f"AE title {ae_title!r} cannot name a server folder: use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return ae_title


class AdminSettings(_Strict):
    """The admin API (:mod:`pacskit.server.admin_api`), served inside the server process.

    It always listens on a Unix domain socket (``socket``, relative to the server folder; default
    ``<AE title>.sock``, or ``admin.sock`` when the AE title cannot name a file), created with mode
    0600: whoever may open it is the server's own user (or root). A TCP listener is optional; it
    requires TLS (``tls_cert``/``tls_key``) and a bearer token read from ``token_file``.
    ``statistics = false`` subscribes nothing to the event bus (status and clients still work, without
    counters or histograms).
    """

    enabled: bool = True
    socket: str | None = None
    tcp_host: str | None = None
    tcp_port: int | None = Field(None, ge=0, le=65535)
    tls_cert: str | None = None
    tls_key: str | None = None
    token_file: str | None = None
    statistics: bool = True

    @model_validator(mode="after")
    def _tcp_needs_tls_and_token(self) -> AdminSettings:
        if (self.tcp_host is None) != (self.tcp_port is None):
            raise ValueError("admin.tcp_host and admin.tcp_port go together")
        if self.tcp_port is not None and not (self.tls_cert and self.tls_key and self.token_file):
            raise ValueError("the admin API on TCP needs tls_cert, tls_key and token_file")
        return self


class HttpSettings(_Strict):
    """The public HTTP listener, where add-ins serve HTTP (:meth:`pacskit.services.AddIn.http_service`,
    e.g. DICOMweb). It is started only when an enabled add-in contributes a service. ``host``
    defaults to the server's; ``tls_cert`` and ``tls_key`` (paths relative to the server folder) make
    it HTTPS."""

    host: str | None = None
    port: int = Field(8042, ge=0, le=65535)
    tls_cert: str | None = None
    tls_key: str | None = None

    @model_validator(mode="after")
    def _cert_and_key(self) -> HttpSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("http.tls_cert and http.tls_key go together")
        return self


class ClusterSettings(_Strict):
    """Several stateless nodes sharing one index database and one object store (``[cluster]``).

    ``enabled`` unset means "implied by the storage": a PostgreSQL index with an ``s3`` blob store is a
    shared archive, so what other nodes must see (the AE registry, ingests in flight, the nodes' leases)
    lives in the database (:mod:`pacskit.store.cluster`) instead of local files. ``enabled = true`` on
    SQLite is an error (one process writes SQLite). ``node_name`` names this node in the shared tables
    and logs (default ``<host name>-<data folder name>``); ``lease_seconds``: a node that has not renewed
    its lease for this long is dead, and any other node recovers its interrupted ingests.
    """

    enabled: bool | None = None
    node_name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    lease_seconds: float = Field(30.0, gt=0, le=3600)
    #: the health endpoint ``/healthz`` on the public HTTP listener (started for it in a cluster)
    health_endpoint: bool = True


class ServerSettings(_Strict):
    """Everything a server needs; ``folder`` is where it was loaded from (not stored in the file)."""

    ae_title: str = "PACSKIT"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    max_associations: int = Field(100, ge=1)
    max_pdu_length: int = Field(262_144, ge=0)
    open_mode: bool | None = None  # unregistered callers may associate; unset: only on loopback
    data_dir: str = "."
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version_name: str = IMPLEMENTATION_VERSION_NAME
    handler_threads: int = Field(8, ge=1)
    #: handlers that allow it (the Storage add-in's C-STORE) run on the event loop's thread while their
    #: association is the only one of the process (or worker): no hand-off to a thread and back
    inline_handlers: bool = True
    workers: int = Field(1, ge=1, le=64)
    #: load balancers (addresses or networks) whose DICOM connections open with a PROXY protocol header
    #: naming the client, and whose X-Forwarded-For the HTTP listener believes (docs/deployment.md)
    proxy_protocol_from: list[str] = Field(default_factory=list)
    timeouts: Timeouts = Timeouts()
    database: DatabaseSettings = DatabaseSettings()
    storage: StorageSettings = StorageSettings()
    logging: LoggingSettings = LoggingSettings()
    admin: AdminSettings = AdminSettings()
    http: HttpSettings = HttpSettings()
    cluster: ClusterSettings = ClusterSettings()
    addins: dict[str, dict[str, Any]] = Field(default_factory=dict)

    _folder: Path = Path(".")

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator("implementation_class_uid")
    @classmethod
    def _uid(cls, value: str) -> str:
        if len(value) > 64 or not _UID_RE.match(value):
            raise ValueError(f"{value!r} is not a valid UID")
        return value

    @field_validator("implementation_version_name")
    @classmethod
    def _version(cls, value: str) -> str:
        if not 0 < len(value) <= 16:
            raise ValueError("implementation_version_name must be 1-16 characters")
        return value

    @field_validator("proxy_protocol_from")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)") from None
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value:
            raise ValueError("host must not be empty")
        return value

    @model_validator(mode="after")
    def _cluster_needs_shared_storage(self) -> ServerSettings:
        if self.cluster.enabled and self.database.url.split(":", 1)[0].split("+", 1)[0] not in ("postgresql", "postgres"):
            raise ValueError("cluster.enabled needs a shared PostgreSQL index database "
                             f"(database.url is {self.database.url.split(':', 1)[0]}:...)")
        if self.cluster.enabled and self.storage.backend in ("filesystem", "memory"):
            raise ValueError("cluster.enabled needs a shared blob store (backend = \"s3\"), "
                             f"not {self.storage.backend!r}")
        return self

    @property
    def folder(self) -> Path:
        return self._folder

    @property
    def admin_socket_path(self) -> Path:
        """Where the admin API's Unix socket is (see :class:`AdminSettings`)."""
        if self.admin.socket:
            path = Path(self.admin.socket)
            return path if path.is_absolute() else self._folder / path
        try:
            name = safe_file_name(self.ae_title)
        except ValueError:
            name = "admin"
        return self._folder / f"{name}.sock"

    def folder_path(self, value: str) -> Path:
        """``value`` as a path, relative ones inside the server folder."""
        path = Path(value)
        return path if path.is_absolute() else self._folder / path

    @property
    def data_path(self) -> Path:
        path = Path(self.data_dir)
        return path if path.is_absolute() else (self._folder / path)

    @property
    def database_url(self) -> str:
        return self.database.url.replace("{data_dir}", str(self.data_path.resolve()))

    @property
    def storage_path(self) -> Path:
        path = Path(self.storage.path)
        return path if path.is_absolute() else self.data_path / path

    @property
    def cluster_enabled(self) -> bool:
        """This server is one node of several sharing the index and the blobs (see :class:`ClusterSettings`)."""
        if self.cluster.enabled is not None:
            return self.cluster.enabled
        url = self.database.url.split(":", 1)[0].split("+", 1)[0]
        return url in ("postgresql", "postgres") and self.storage.backend == "s3"

    @property
    def cluster_node_name(self) -> str:
        """This node's name in the shared tables: ``[cluster] node_name``, else ``<host>-<data folder>``."""
        if self.cluster.node_name:
            return self.cluster.node_name
        import socket

        raw = f"{socket.gethostname().split('.')[0]}-{self.data_path.resolve().name}"
        return re.sub(r"[^A-Za-z0-9._-]", "-", raw)[:64] or "node"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def net_config(self) -> NetConfig:
        t = self.timeouts
        return NetConfig(
            max_pdu_length=self.max_pdu_length,
            max_associations=self.max_associations,
            artim_timeout=t.artim,
            acse_timeout=t.acse or 3600.0,
            dimse_timeout=t.dimse or None,
            network_timeout=t.network or None,
            handler_threads=self.handler_threads,
            inline_handlers=self.inline_handlers,
            implementation_class_uid=self.implementation_class_uid,
            implementation_version_name=self.implementation_version_name,
            proxy_protocol_from=TrustedProxies(self.proxy_protocol_from),
        )

    def addin_section(self, name: str) -> dict[str, Any]:
        return dict(self.addins.get(name, {}))


def load_settings(folder: str | Path, overrides: dict[str, Any] | None = None) -> ServerSettings:
    """Read ``folder/server.toml`` (defaults when absent) and apply ``overrides`` (CLI flags)."""
    folder = Path(folder)
    path = folder / SETTINGS_FILE
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{path}: cannot read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    try:
        settings = ServerSettings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"{path}: {problems}") from exc
    settings._folder = folder
    return settings


def write_settings(settings: ServerSettings, folder: str | Path) -> Path:
    """Write ``server.toml`` atomically (used by the service manager and tests)."""
    import tomlkit

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SETTINGS_FILE
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomlkit.dumps(settings.model_dump(exclude_none=True)), encoding="utf-8")
    os.replace(tmp, path)
    return path


def update_settings_file(folder: str | Path, mutate: Callable[[dict[str, Any]], None]) -> ServerSettings:
    """Change ``<folder>/server.toml`` in place: ``mutate`` edits the parsed TOML document (a mapping;
    edit tables in place rather than replacing them, and the comments and layout around what it
    changes stay as the operator wrote them), the result is validated as a whole and written
    atomically. Raises :class:`SettingsError` and leaves the file untouched when the result is
    invalid; exceptions of ``mutate`` propagate."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    folder = Path(folder)
    path = folder / SETTINGS_FILE
    try:
        data: Any = tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() else tomlkit.document()
    except (OSError, UnicodeDecodeError, TOMLKitError) as exc:
        raise SettingsError(f"{path}: cannot read: {exc}") from exc
    mutate(data)
    try:
        ServerSettings.model_validate(data.unwrap())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"{path}: {problems}") from exc
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomlkit.dumps(data), encoding="utf-8")
    if path.exists():
        os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    return load_settings(folder)
