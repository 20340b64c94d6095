"""Ingest with the transaction log on vs off (issue target: on >= 95% of off).

``python -m pacskit serve`` as a subprocess (full server: Storage add-in, SQLite index, durable
writes) in a fresh data dir per run, whose ``server.toml`` enables or disables the txlog add-in (the
audit add-in is off in both, so only the transaction log differs). DCMTK storescu (TCP_NODELAY=1)
sends N small instances (64x64 16-bit CT, default 2,000) on one association. Only the storescu phase
is timed. Runs alternate off/on (``--rounds`` each) so drift on a shared machine hits both alike; the
figure is the ratio of the median throughputs.

A run counts only if storescu exits 0 without E:/F: lines and ``pacskit check`` finds every instance;
an "on" run also needs exactly N C-STORE rows in ``transaction_log`` (nothing dropped).

    .venv/bin/python benchmarks/txlog.py [--count 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DATA, dcmtk_tool, ensure_series, warm  # noqa: E402
from ingest import pacskit_count, pacskit_server, send  # noqa: E402


def one_run(files: list[Path], work: Path, storescu: str, txlog: bool) -> tuple[float | None, str]:
    data_dir = work / ("on" if txlog else "off")
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    (data_dir / "server.toml").write_text(
        f"[addins.txlog]\nenabled = {'true' if txlog else 'false'}\n[addins.audit]\nenabled = false\n"
    )
    os.sync()
    with pacskit_server(data_dir) as srv:
        seconds, problems = send(storescu, srv, files, 1)
        log = srv.log()
    received, check_text = pacskit_count(data_dir)
    if received != len(files):
        problems.append(f"pacskit check: {check_text!r}")
    if txlog:
        with sqlite3.connect(data_dir / "index.db") as conn:
            logged = conn.execute("SELECT count(*) FROM transaction_log WHERE service = 'C-STORE'").fetchone()[0]
        if logged != len(files):
            problems.append(f"transaction log holds {logged} C-STOREs, {len(files)} were sent")
    if problems:
        return None, "; ".join(problems) + f"\n    server log tail: {' | '.join(log.strip().splitlines()[-5:])}"
    return seconds, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="64x64 instances per run (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs with the log off and on each (default 3)")
    parser.add_argument("--work-root", type=Path, default=BENCH_DATA / "txlog")
    args = parser.parse_args()
    storescu = dcmtk_tool("storescu")
    files = ensure_series("small-64x64", args.count, 64, 64)[: args.count]
    warm(files)
    args.work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="txlog-", dir=args.work_root.resolve()))
    print(f"{len(files)} instances of 64x64 CT, 1 association, storescu TCP_NODELAY=1, data under {work}", flush=True)
    rates: dict[bool, list[float]] = {False: [], True: []}
    try:
        for n in range(args.rounds):
            for txlog in (False, True):
                seconds, failure = one_run(files, work, storescu, txlog)
                label = "on " if txlog else "off"
                if seconds is None:
                    print(f"round {n + 1}, txlog {label}: FAILED {failure}", flush=True)
                    return 1
                rates[txlog].append(len(files) / seconds)
                print(f"round {n + 1}, txlog {label}: {seconds:6.2f} s  {len(files) / seconds:7.1f} inst/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    ratio = on / off
    print(f"median: off {off:.1f} inst/s, on {on:.1f} inst/s, on/off = {ratio:.1%} (target >= 95%)")
    return 0 if ratio >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
