"""The log viewer's data: the transaction log (``transaction_log``, written by the txlog add-in) and
the audit trail (``audit_records``, written by the audit add-in), with filters, paging and CSV.

Both tables live in the server's database unless the add-ins were given a ``database_url`` of their
own (then that one is read). Reads only; every value a bound parameter.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, or_, select

from pacskit.store.index.models import Patient
from pacskit.store.query import like_pattern
from pacskit.store.records import AuditRecord, TransactionLogEntry, status_condition

CSV_LIMIT = 100_000
OUTCOMES = {"success": 0, "minor-failure": 4, "serious-failure": 8, "major-failure": 12}


class LogQueryError(ValueError):
    """A filter value that cannot be used (bad time, bad status)."""


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise LogQueryError(f"{text[:40]!r} is not an ISO 8601 date/time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def parse_status(text: str | None) -> int | str | None:
    if not text:
        return None
    t = text.strip().lower()
    if t in ("success", "warning", "failure", "cancel"):
        return t
    try:
        return int(t, 16)
    except ValueError:
        raise LogQueryError(f"status {text[:20]!r}: success, warning, failure, cancel or a hex status") from None


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat(timespec="milliseconds")


def _contains(column: Any, text: str) -> Any:
    """Case-insensitive substring match, the value bound (wildcards of the user are literal)."""
    return func.upper(column).like("%" + like_pattern(text.upper()).strip("%") + "%", escape="!")


@dataclass(slots=True)
class Page:
    total: int
    items: list[dict[str, Any]]


# ---------------------------------------------------------------------- transactions

TRANSACTION_FIELDS = (
    "id", "time", "calling_ae", "called_ae", "operation", "status", "status_hex", "error_comment", "patient_id",
    "patient_name", "study_uid", "sop_instance_uid", "sop_class_uid", "move_destination", "peer_address",
    "duration_ms", "bytes_received", "bytes_sent", "completed", "failed", "warnings",
)


def _patient_name() -> Any:
    return (select(Patient.patient_name).where(Patient.patient_id == TransactionLogEntry.patient_id)
            .limit(1).scalar_subquery())


def transactions_statement(filters: Mapping[str, str | None]) -> Any:
    t = TransactionLogEntry
    conditions = []
    since, until = parse_time(filters.get("since")), parse_time(filters.get("until"))
    if since is not None:
        conditions.append(t.at >= since)
    if until is not None:
        conditions.append(t.at < until)
    if filters.get("ae"):
        ae = str(filters["ae"]).strip()
        conditions.append(or_(t.calling_ae == ae, t.called_ae == ae, t.move_destination == ae))
    if filters.get("operation"):
        op = str(filters["operation"]).strip().upper()
        conditions.append(t.service == (op if op.startswith(("C-", "N-")) else f"C-{op}"))
    status = parse_status(filters.get("status"))
    if status is not None:
        conditions.append(status_condition(t.status, status))
    if filters.get("patient"):
        text = str(filters["patient"]).strip()
        names = select(Patient.patient_id).where(_contains(Patient.patient_name, text))
        conditions.append(or_(t.patient_id == text, t.patient_id.in_(names)))
    if filters.get("study"):
        conditions.append(t.study_instance_uid == str(filters["study"]).strip())
    if filters.get("after_id"):
        conditions.append(t.pk > int(str(filters["after_id"])))
    return conditions


def _transaction_row(row: Any) -> dict[str, Any]:
    m = row._mapping
    status = m["status"]
    return {
        "id": m["pk"], "time": _iso(m["at"]), "calling_ae": m["calling_ae"], "called_ae": m["called_ae"],
        "operation": m["service"], "status": status,
        "status_hex": f"0x{status:04X}" if status is not None else None, "error_comment": m["error_comment"],
        "patient_id": m["patient_id"], "patient_name": m["patient_name"], "study_uid": m["study_instance_uid"],
        "sop_instance_uid": m["sop_instance_uid"], "sop_class_uid": m["sop_class_uid"],
        "move_destination": m["move_destination"], "peer_address": m["peer_address"],
        "duration_ms": round(float(m["duration_ms"] or 0), 3), "bytes_received": m["bytes_received"],
        "bytes_sent": m["bytes_sent"], "completed": m["completed"], "failed": m["failed"], "warnings": m["warnings"],
    }


def query_transactions(engine: Engine, filters: Mapping[str, str | None], limit: int, offset: int,
                       *, ascending: bool = False) -> Page:
    t = TransactionLogEntry
    conditions = transactions_statement(filters)
    columns = [*t.__table__.columns, _patient_name().label("patient_name")]
    order = [t.pk.asc()] if ascending else [t.at.desc(), t.pk.desc()]
    statement = select(*columns).where(*conditions).order_by(*order).limit(limit).offset(offset)
    with engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(t).where(*conditions)).scalar_one())
        rows = conn.execute(statement).fetchall()
    return Page(total, [_transaction_row(r) for r in rows])


# ---------------------------------------------------------------------- audit

AUDIT_FIELDS = ("id", "time", "event_id", "event", "event_type", "action", "outcome", "user", "patient_id",
                "study_uid")


def audit_conditions(filters: Mapping[str, str | None]) -> list[Any]:
    a = AuditRecord
    conditions = []
    since, until = parse_time(filters.get("since")), parse_time(filters.get("until"))
    if since is not None:
        conditions.append(a.at >= since)
    if until is not None:
        conditions.append(a.at < until)
    if filters.get("user"):
        conditions.append(_contains(a.requestor, str(filters["user"]).strip()))
    if filters.get("event"):
        text = str(filters["event"]).strip()
        conditions.append(or_(a.event_id == text, _contains(a.event_name, text)))
    if filters.get("outcome"):
        text = str(filters["outcome"]).strip().lower()
        if text == "failure":
            conditions.append(a.outcome != 0)
        elif text in OUTCOMES:
            conditions.append(a.outcome == OUTCOMES[text])
        elif text.isdigit():
            conditions.append(a.outcome == int(text))
        else:
            raise LogQueryError(f"outcome {text[:20]!r}: success, failure, {', '.join(OUTCOMES)} or 0/4/8/12")
    if filters.get("patient"):
        conditions.append(a.patient_id == str(filters["patient"]).strip())
    if filters.get("study"):
        conditions.append(a.study_instance_uid == str(filters["study"]).strip())
    if filters.get("after_id"):
        conditions.append(a.pk > int(str(filters["after_id"])))
    return conditions


def _audit_row(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {
        "id": m["pk"], "time": _iso(m["at"]), "event_id": m["event_id"], "event": m["event_name"],
        "event_type": m["event_type"], "action": m["event_action"], "outcome": m["outcome"],
        "user": m["requestor"], "patient_id": m["patient_id"], "study_uid": m["study_instance_uid"],
    }


def query_audit(engine: Engine, filters: Mapping[str, str | None], limit: int, offset: int,
                *, ascending: bool = False) -> Page:
    a = AuditRecord
    conditions = audit_conditions(filters)
    columns = [c for c in a.__table__.columns if c.key != "xml"]
    order = [a.pk.asc()] if ascending else [a.at.desc(), a.pk.desc()]
    statement = select(*columns).where(*conditions).order_by(*order).limit(limit).offset(offset)
    with engine.connect() as conn:
        total = int(conn.execute(select(func.count()).select_from(a).where(*conditions)).scalar_one())
        rows = conn.execute(statement).fetchall()
    return Page(total, [_audit_row(r) for r in rows])


def last_id(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(table.pk), 0))).scalar_one())


def to_csv(items: list[dict[str, Any]], fields: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for item in items:
        writer.writerow({k: ("" if v is None else v) for k, v in item.items()})
    return out.getvalue()
