"""The logging framework of a server: stdlib :mod:`logging`, destinations set in ``server.toml``.

Destinations (``[logging]``, docs/logging.md), each with its own level (default: ``level``):

* ``console`` — stderr, text;
* ``file`` — a rotating text file (``file_max_bytes``, ``file_backups``);
* ``json_lines`` — one JSON object per line in ``json_file`` (rotating like ``file``);
* ``[logging.syslog]`` — RFC 5424 over UDP, TCP or TLS (:mod:`pacskit.records.syslog`);
* ``database`` — the ``log_records`` table of the server's database.

Syslog and database never run on the thread that logs: records go through a bounded queue to one
writer thread (:class:`~pacskit.records.background.BatchWriter`); a full queue drops and counts
(``DESTINATIONS[...].writer.dropped``), it never blocks the DIMSE path.

Every record gets the attributes ``addin`` (the add-in whose logger logged it, ``pacskit.addin.<name>``),
``association_id``, ``calling_ae`` and ``service`` from :data:`pacskit.net.current_operation`, which
the engine sets around each handler call — so add-ins log with ``self.base.log`` and the line says
which association it belongs to (:class:`OperationContextFilter`). Text formats show them as
``[addin assoc#12 CT1]`` when set.

Patient data: pacskit's own log lines carry AE titles, UIDs and statuses, not names or IDs. Code that
wants to log a patient attribute passes it through :func:`phi`, which gives ``"<phi>"`` unless
``logging.phi = true``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacskit.net.services import current_operation
from pacskit.records.background import BatchWriter
from pacskit.records.syslog import FACILITIES, LEVEL_SEVERITY, SD_ENTERPRISE, SyslogSender, format_message

if TYPE_CHECKING:
    from pacskit.config.settings import ServerSettings

ADDIN_LOGGER_PREFIX = "pacskit.addin."
_PHI_ALLOWED = False
CONTEXT_FIELDS = ("addin", "association_id", "calling_ae", "service")


def phi(value: object) -> object:
    """``value`` when the settings allow patient data in logs (``logging.phi``), else ``"<phi>"``."""
    return value if _PHI_ALLOWED else "<phi>"


def set_phi_allowed(allowed: bool) -> None:
    global _PHI_ALLOWED
    _PHI_ALLOWED = allowed


class OperationContextFilter(logging.Filter):
    """Adds ``addin``, ``association_id``, ``calling_ae``, ``service`` to every record it sees.

    Attached to every pacskit destination and to each add-in's logger, so the values are on the record
    (also for handlers pacskit did not install, e.g. a test's ``caplog``). Never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "association_id"):
            return True
        name = record.name
        record.addin = name[len(ADDIN_LOGGER_PREFIX):].split(".", 1)[0] if name.startswith(ADDIN_LOGGER_PREFIX) else None
        op = current_operation.get()
        if op is None:
            record.association_id = None
            record.calling_ae = None
            record.service = None
        else:
            record.association_id = op.association_id
            record.calling_ae = op.calling_ae
            record.service = op.service
        return True


CONTEXT_FILTER = OperationContextFilter()


def addin_logger(name: str) -> logging.Logger:
    """The logger an add-in gets as ``base.log``: ``pacskit.addin.<name>``, tagged with the context."""
    logger = logging.getLogger(ADDIN_LOGGER_PREFIX + name)
    if CONTEXT_FILTER not in logger.filters:
        logger.addFilter(CONTEXT_FILTER)
    return logger


class TextFormatter(logging.Formatter):
    """``time [pid] LEVEL logger [addin assoc#N AE]: message`` (the bracket only when set)."""

    def __init__(self, with_process: bool = False) -> None:
        tag = " [%(process)d]" if with_process else ""
        super().__init__(f"%(asctime)s{tag} %(levelname)s %(name)s%(pacskit_context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.pacskit_context = _context_text(record)
        return super().format(record)


def _context_text(record: logging.LogRecord) -> str:
    parts = []
    addin = getattr(record, "addin", None)
    if addin:
        parts.append(str(addin))
    assoc = getattr(record, "association_id", None)
    if assoc is not None:
        parts.append(f"assoc#{assoc}")
    ae = getattr(record, "calling_ae", None)
    if ae:
        parts.append(str(ae))
    return f" [{' '.join(parts)}]" if parts else ""


def record_dict(record: logging.LogRecord) -> dict[str, Any]:
    """The JSON-lines / database view of a record."""
    message = record.getMessage()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        message = f"{message}\n{record.exc_text}"
    return {
        "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="microseconds"),
        "level": record.levelname,
        "logger": record.name,
        "message": message,
        "process": record.process,
        **{name: getattr(record, name, None) for name in CONTEXT_FIELDS},
    }


class JsonLinesFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_dict(record), ensure_ascii=False)


class QueuedHandler(logging.Handler):
    """A handler whose output is written by a :class:`BatchWriter` thread (syslog, database).

    ``emit`` snapshots the record into a dict (message formatted, context attributes read — they
    belong to the logging thread) and queues it; a full queue drops and counts.
    """

    def __init__(self, name: str, write: Any, level: int, queue_size: int) -> None:
        super().__init__(level)
        self._sink = write
        self.writer: BatchWriter[dict[str, Any]] = BatchWriter(name, write, queue_size=queue_size,
                                                                logger=logging.getLogger("pacskit.logging"))
        self.writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "pacskit_no_background", False):
            return  # the writers' own complaints: they go to the other destinations only
        try:
            item = record_dict(record)
            item["levelno"] = record.levelno
            self.writer.submit(item)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.writer.close()
        close = getattr(self._sink, "close", None)
        if close is not None:
            close()
        super().close()


class SyslogWriter:
    """Writes queued records as RFC 5424 messages; a collector that is down costs the batch (counted
    in ``writer.failed``), the next batch reconnects."""

    def __init__(self, sender: SyslogSender, facility: int, app_name: str) -> None:
        self.sender = sender
        self.facility = facility
        self.app_name = app_name
        self.hostname = socket.gethostname()

    def __call__(self, batch: Sequence[dict[str, Any]]) -> None:
        for item in batch:
            params = {k: str(item[k]) for k in CONTEXT_FIELDS if item.get(k) is not None}
            message = format_message(
                f"{item['logger']}: {item['message']}",
                facility=self.facility,
                severity=LEVEL_SEVERITY.get(item["levelno"] // 10 * 10, 6),
                timestamp=dt.datetime.fromisoformat(item["time"]),
                hostname=self.hostname,
                app_name=self.app_name,
                procid=str(item["process"]),
                msgid=item["level"],
                structured_data={f"pacskit@{SD_ENTERPRISE}": params} if params else None,
            )
            self.sender.send(message)

    def close(self) -> None:
        self.sender.close()


class DatabaseWriter:
    """Inserts queued records into ``log_records``, one transaction per batch.

    The table comes with the index migrations the server runs when it opens its store; records logged
    before (start-up) are retried for ``wait_for_schema`` seconds, then dropped.
    """

    def __init__(self, url: str) -> None:
        from pacskit.store.engine import WRITE_OPTION, backend_name, make_engine

        if backend_name(url) == "sqlite":
            # like the transaction log: no fsync of its own, BEGIN IMMEDIATE (see docs/addins/txlog.md)
            self.engine = make_engine(url, pool_size=1, sqlite_synchronous="NORMAL").execution_options(
                **{WRITE_OPTION: True})
        else:
            self.engine = make_engine(url, pool_size=1)

    def __call__(self, batch: Sequence[dict[str, Any]]) -> None:
        from pacskit.store.records import LogRecord

        rows = [
            {
                "at": dt.datetime.fromisoformat(item["time"]),
                "level": item["level"],
                "logger": item["logger"][:128],
                "message": item["message"],
                "process": item["process"],
                "addin": (item["addin"] or None) and str(item["addin"])[:64],
                "association_id": item["association_id"],
                "calling_ae": item["calling_ae"],
            }
            for item in batch
        ]
        import time

        from sqlalchemy.exc import OperationalError, ProgrammingError

        for attempt in range(20):
            try:
                with self.engine.begin() as conn:
                    conn.execute(LogRecord.__table__.insert(), rows)
                return
            except (OperationalError, ProgrammingError):
                if attempt == 19:
                    raise
                time.sleep(0.5)  # the schema is being created by the server's start-up

    def close(self) -> None:
        self.engine.dispose()


def _level(value: str | None, default: str) -> int:
    return logging.getLevelName(value or default)  # type: ignore[no-any-return]


def _resolve(settings: ServerSettings, path: str) -> Path:
    p = Path(path)
    p = p if p.is_absolute() else settings.data_path / p
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def build_handlers(settings: ServerSettings, *, with_process: bool = False) -> list[logging.Handler]:
    """The destinations ``settings.logging`` asks for (not yet attached to any logger)."""
    conf = settings.logging
    handlers: list[logging.Handler] = []
    text = TextFormatter(with_process)
    if conf.console:
        handler: logging.Handler = logging.StreamHandler()
        handler.setLevel(_level(conf.console_level, conf.level))
        handler.setFormatter(text)
        handlers.append(handler)
    if conf.file:
        handler = logging.handlers.RotatingFileHandler(
            _resolve(settings, conf.file), maxBytes=conf.file_max_bytes, backupCount=conf.file_backups, encoding="utf-8"
        )
        handler.setLevel(_level(conf.file_level, conf.level))
        handler.setFormatter(text)
        handlers.append(handler)
    if conf.json_lines:
        handler = logging.handlers.RotatingFileHandler(
            _resolve(settings, conf.json_file), maxBytes=conf.file_max_bytes, backupCount=conf.file_backups,
            encoding="utf-8",
        )
        handler.setLevel(_level(conf.json_level, conf.level))
        handler.setFormatter(JsonLinesFormatter())
        handlers.append(handler)
    if conf.syslog is not None:
        sl = conf.syslog
        sender = SyslogSender(sl.host, sl.port, sl.protocol, ca_file=sl.ca_file, cert_file=sl.cert_file,
                              key_file=sl.key_file)
        handlers.append(QueuedHandler("syslog-log", SyslogWriter(sender, FACILITIES[sl.facility], sl.app_name),
                                      _level(sl.level, "WARNING"), sl.queue_size))
    if conf.database:
        handlers.append(QueuedHandler("database-log", DatabaseWriter(settings.database_url),
                                      _level(conf.database_level, "WARNING"), conf.database_queue_size))
    for h in handlers:
        h.addFilter(CONTEXT_FILTER)
        h._pacskit = True  # type: ignore[attr-defined]
    return handlers


def configure_logging(settings: ServerSettings, *, worker: bool = False) -> list[logging.Handler]:
    """Install the destinations of ``settings`` on the root logger, replacing pacskit's earlier ones
    (idempotent per process). ``level`` is the default of every destination; a destination's own
    level may be higher or lower. Worker processes (and their parent) tag each line with the process id.
    Returns the handlers installed."""
    root = logging.getLogger()
    conf = settings.logging
    remove_handlers()
    set_phi_allowed(conf.phi)
    handlers = build_handlers(settings, with_process=worker or settings.workers > 1)
    # the root level lets through what the most detailed destination wants
    root.setLevel(min([_level(conf.level, "INFO")] + [h.level for h in handlers if h.level]))
    for handler in handlers:
        root.addHandler(handler)
    return handlers


def remove_handlers() -> None:
    """Detach and close the destinations :func:`configure_logging` installed."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_pacskit", False):
            root.removeHandler(handler)
            handler.close()


__all__ = [
    "CONTEXT_FILTER",
    "JsonLinesFormatter",
    "OperationContextFilter",
    "TextFormatter",
    "addin_logger",
    "build_handlers",
    "configure_logging",
    "phi",
    "record_dict",
    "remove_handlers",
]
