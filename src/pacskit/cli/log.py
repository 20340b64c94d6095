"""``pacskit log``: read the transaction log of a server (the txlog add-in's table), with filters.

Reads the server folder's database directly (``database.url`` of its ``server.toml``, or the txlog
add-in's own ``database_url``), so it works whether the server runs or not. Newest first.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Annotated, Any, Optional

import typer

from pacskit.cli.common import EXIT_OK, EXIT_USAGE, ConfigOpt, DataDirOpt, existing_server_settings, app

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
CATEGORIES = ("success", "warning", "failure", "cancel")


def parse_time(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """``2026-12-01``, ``2026-12-01T10:00`` (UTC unless an offset is given) or ``30m`` / ``2h`` / ``7d`` ago."""
    now = now or dt.datetime.now(dt.UTC)
    m = _RELATIVE.match(text.strip())
    if m:
        return now - dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected an ISO date/time (2026-12-01T10:00) or an age (30m, 2h, 7d)") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def parse_status(text: str) -> int | str:
    """A category (success, warning, failure, cancel) or a status code (``0xA801``, ``A801``, ``43009``)."""
    t = text.strip().lower()
    if t in CATEGORIES:
        return t
    try:
        return int(t, 16) if t.startswith("0x") or re.fullmatch(r"[0-9a-f]{4}", t) else int(t)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected {', '.join(CATEGORIES)} or a status code like 0xA801") from None


def query_log(
    engine: Any,
    *,
    ae: str | None = None,
    operation: str | None = None,
    status: int | str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    patient: str | None = None,
    study: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Entries matching every filter given, newest first (``limit`` 0: all)."""
    from sqlalchemy import or_, select

    from pacskit.store.records import TransactionLogEntry as T
    from pacskit.store.records import status_condition

    stmt = select(T)
    if ae:
        stmt = stmt.where(or_(T.calling_ae == ae, T.called_ae == ae, T.move_destination == ae))
    if operation:
        op = operation.upper()
        stmt = stmt.where(T.service == (op if op.startswith(("C-", "N-")) else f"C-{op}"))
    if status is not None:
        stmt = stmt.where(status_condition(T.status, status))
    if since is not None:
        stmt = stmt.where(T.at >= since)
    if until is not None:
        stmt = stmt.where(T.at < until)
    if patient:
        stmt = stmt.where(T.patient_id == patient)
    if study:
        stmt = stmt.where(T.study_instance_uid == study)
    stmt = stmt.order_by(T.at.desc(), T.pk.desc())
    if limit:
        stmt = stmt.limit(limit)
    columns = [c.key for c in T.__table__.columns]
    with engine.connect() as conn:
        rows = conn.execute(stmt.with_only_columns(*T.__table__.columns)).all()
    return [dict(zip(columns, row, strict=True)) for row in rows]


@app.command("log")
def log_command(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    ae: Annotated[Optional[str], typer.Option("--ae", help="calling, called or move destination AE title")] = None,
    operation: Annotated[Optional[str], typer.Option("--operation", "-o", help="C-STORE, C-FIND, move, get, N-ACTION...")] = None,
    status: Annotated[Optional[str], typer.Option("--status", help="success, warning, failure, cancel, or a code like 0xA801")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="ISO date/time (UTC) or an age: 30m, 2h, 7d")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="ISO date/time (UTC) or an age")] = None,
    patient: Annotated[Optional[str], typer.Option("--patient", help="Patient ID")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Study Instance UID")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="at most this many entries (0: all)")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON array instead of a table")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV with a header line (the JSON's fields)")] = False,
) -> None:
    """Show the transaction log (every DIMSE operation the server answered), newest first."""
    from sqlalchemy import inspect

    from pacskit.cli.output import output_format, print_rows
    from pacskit.store.engine import make_engine

    fmt = output_format(as_json, as_csv)
    settings = existing_server_settings(config, data_dir)
    wanted_status = parse_status(status) if status else None
    start = parse_time(since) if since else None
    end = parse_time(until) if until else None
    url = str(settings.addin_section("txlog").get("database_url") or "") or settings.database_url
    engine = make_engine(url, pool_size=1)
    try:
        if "transaction_log" not in inspect(engine).get_table_names():
            typer.echo(f"error: no transaction log in {engine.url.render_as_string(hide_password=True)} "
                       "(has the server run with the txlog add-in?)", err=True)
            raise typer.Exit(EXIT_USAGE)
        rows = query_log(engine, ae=ae, operation=operation, status=wanted_status, since=start, until=end,
                         patient=patient, study=study, limit=limit)
    finally:
        engine.dispose()
    if fmt != "table":
        for row in rows:
            row["at"] = row["at"].isoformat()
        if fmt == "json":
            typer.echo(json.dumps(rows, indent=1))
        else:
            columns = list(rows[0]) if rows else []
            print_rows(columns, [[r[c] for c in columns] for r in rows], "csv")
        raise typer.Exit(EXIT_OK)
    _print_table(rows)
    raise typer.Exit(EXIT_OK)


def _print_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from pacskit.cli.output import console
    from pacskit.dicom.status import status_category

    table = Table(show_edge=False, pad_edge=False)
    for title in ("time (UTC)", "assoc", "calling", "called", "from", "operation", "status", "ms", "bytes", "UIDs"):
        table.add_column(title, overflow="fold")
    for r in rows:
        status = r["status"]
        shown = "-" if status is None else f"0x{status:04X} {status_category(status)}"
        uids = " ".join(
            f"{label}={r[key]}" for label, key in (("pat", "patient_id"), ("study", "study_instance_uid"),
                                                   ("sop", "sop_instance_uid"), ("dest", "move_destination"))
            if r[key]
        )
        table.add_row(
            r["at"].strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], str(r["association_id"]), r["calling_ae"], r["called_ae"],
            r["peer_address"] or "", r["service"], shown, f"{r['duration_ms']:.1f}",
            str(r["bytes_received"] + r["bytes_sent"]), uids,
        )
    console().print(table)
    typer.echo(f"{len(rows)} entries")
