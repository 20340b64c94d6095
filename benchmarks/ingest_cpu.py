"""Server CPU per received instance, A/B between source trees, runs interleaved.

Starts ``python -m pacskit serve`` (default settings, SQLite index, fresh data folder) from each
``--tree`` in turn (``PYTHONPATH=<tree>/src``), sends the same small instances with DCMTK storescu
(TCP_NODELAY=1) over 1 and 8 associations, and reports for each run the CPU seconds the server used
while the instances arrived (utime + stime of the server process and its worker processes, from
/proc, read just before the first storescu starts and just after the last one exits) per instance,
and the wall-clock rate. CPU per instance barely depends on the machine's load, the rate does: on a
shared machine decide on CPU, and read the rates beside the load average printed with them.

Run folders are deleted only at the end, never between runs (``--keep-runs``: not even then), for the
reason ``benchmarks/ingest.py`` gives: on ext4 without a journal a run that starts just after thousands
of files were deleted pays the kernel's scan of the recently deleted inodes on each received instance.

    .venv/bin/python benchmarks/ingest_cpu.py --tree /path/to/A --tree /path/to/B [--small N] [--rounds R]
        [--ct] [--workers N] [--cases 1,8,8w,1w]

``--postgresql URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/test``) indexes into a new database on
that server per run (``[database] url``), and reports beside the server's CPU that of the PostgreSQL
backends serving that database (their pids from ``pg_stat_activity``), and with ``--round-trips`` the
messages the server sent to PostgreSQL per instance (``strace -f -yy -e sendto``, one untimed run per
tree and case: each is a flush of libpq's buffer, a round trip's request).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DATA, LOCALHOST, PYTHON, dcmtk_env, dcmtk_tool, ensure_series, free_port, stop_process, tree_cpu, wait_for_port, warm  # noqa: E402


def _tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and every process below it."""
    return sum(tree_cpu(root))


def _pg_backends(url: str) -> list[int]:
    """Pids of the PostgreSQL backends connected to the database of ``url`` (other than ours)."""
    import psycopg

    with psycopg.connect(_conninfo(url)) as conn:
        return [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                           "AND pid <> pg_backend_pid()").fetchall()]


def _conninfo(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return (f"host={u.host or '127.0.0.1'} port={u.port or 5432} user={u.username or 'postgres'} "
            f"dbname={u.database}" + (f" password={u.password}" if u.password else ""))


@contextlib.contextmanager
def _database(url: str | None, name: str) -> Iterator[str | None]:
    """A new PostgreSQL database on the server of ``url`` (dropped afterwards), or None."""
    if url is None:
        yield None
        return
    import psycopg
    from sqlalchemy.engine import make_url

    admin = _conninfo(url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(url).set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _count_pg_sends(trace: Path, port: int) -> int:
    return sum(1 for line in trace.read_text(errors="replace").splitlines()
               if "sendto(" in line and f":{port}]" in line)


def one_run(tree: Path, files: list[Path], associations: int, workers: int, work: Path, storescu: str,
            database: str | None = None, round_trips: bool = False) -> tuple[float, float, float, float]:
    """(server CPU seconds, wall seconds, PostgreSQL backends' CPU seconds, messages to PostgreSQL)
    of sending ``files`` over ``associations`` (the last two NaN without ``database`` / ``round_trips``)."""
    data = work / "data"
    if database is not None:
        data.mkdir(parents=True)
        (data / "server.toml").write_text(f'[database]\nurl = "{database}"\n')
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    log_path = work / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([PYTHON, "-m", "pacskit", "serve", "--data-dir", str(data), "--port", str(port),
                                 "--ae", "PACSKIT", "--workers", str(workers)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        wait_for_port(LOCALHOST, port, 60, proc=proc)
        deadline = time.monotonic() + 60
        while workers > 1 and "workers, data in" not in log_path.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.1)
        time.sleep(0.5)  # let start-up work (recovery, first imports) settle before counting
        folder = files[0].parent
        argvs = [[storescu, "-aet", "BENCHSCU", "-aec", "PACSKIT", LOCALHOST, str(port),
                  *[str(p.relative_to(folder)) for p in files[i::associations]]] for i in range(associations)]
        backends = _pg_backends(database) if database is not None else []
        pg0 = sum(_tree_cpu(pid) for pid in backends)
        tracer = None
        if round_trips:
            trace = work / "strace.txt"
            tracer = subprocess.Popen(["strace", "-f", "-yy", "-e", "trace=sendto", "-o", str(trace), "-p", str(proc.pid)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert tracer.stderr is not None
            if b"attached" not in tracer.stderr.readline():
                raise RuntimeError("strace did not attach")
        cpu0 = _tree_cpu(proc.pid)
        t0 = time.perf_counter()
        procs = [subprocess.Popen(a, cwd=folder, env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for a in argvs]
        outs = [p.communicate()[0].decode(errors="replace") for p in procs]
        wall = time.perf_counter() - t0
        cpu = _tree_cpu(proc.pid) - cpu0
        # backends that connected meanwhile (a new lane connection) had no CPU before: all of theirs counts
        pg = sum(_tree_cpu(pid) for pid in _pg_backends(database)) - pg0 if database is not None else float("nan")
        sends = float("nan")
        if tracer is not None:
            tracer.send_signal(2)
            tracer.communicate(timeout=60)
            pg_port = make_url(database).port or 5432 if database is not None else 5432
            sends = float(_count_pg_sends(work / "strace.txt", pg_port))
        for p, text in zip(procs, outs):
            if p.returncode != 0 or any(ln.startswith(("E:", "F:")) for ln in text.splitlines()):
                raise RuntimeError(f"storescu failed: {text[-500:]}")
    finally:
        stop_process(proc, timeout=30)
    out = subprocess.run([PYTHON, "-m", "pacskit", "check", "--no-hash", "--data-dir", str(data)], env=env,
                         capture_output=True, text=True)
    if not out.stdout.startswith(f"{len(files)} instances"):
        raise RuntimeError(f"check: {out.stdout} {out.stderr}")
    return cpu, wall, pg, sends


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", required=True, help="a source tree (its src/ is used)")
    parser.add_argument("--small", type=int, default=1000, metavar="N")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="also run 8 associations with N workers (1 skips)")
    parser.add_argument("--cases", default="1,8,8w", help="comma list of associations (1, 8, ...), with w: with --workers processes")
    parser.add_argument("--ct", action="store_true", help="CT-sized instances (512x512, 16-bit) instead of 64x64")
    parser.add_argument("--postgresql", metavar="URL", default=None,
                        help="index in a new database on this PostgreSQL server per run (see above)")
    parser.add_argument("--round-trips", action="store_true",
                        help="with --postgresql: one more untimed run per tree and case under strace")
    parser.add_argument("--keep-runs", action="store_true",
                        help="leave the run folders (delete them yourself later): a run started within minutes "
                        "of a deletion of thousands of files pays the recently-deleted-inode scan (module docstring)")
    args = parser.parse_args()
    storescu = dcmtk_tool("storescu")
    files = ensure_series("ct-512x512", args.small, 512, 512) if args.ct else ensure_series("small-64x64", args.small, 64, 64)
    warm(files)
    root = Path(tempfile.mkdtemp(prefix="ingest-cpu-", dir=(BENCH_DATA / "ingest").resolve()
                                 if (BENCH_DATA / "ingest").exists() else None))
    cases = [(int(c.rstrip("w")), args.workers if c.endswith("w") else 1) for c in args.cases.split(",")]
    results: dict[tuple[int, int, int], list[tuple[float, float, float]]] = {}
    sends: dict[tuple[int, int, int], float] = {}
    n = len(files)
    try:
        if args.postgresql and args.round_trips:
            for assoc, workers in cases:
                for t, tree in enumerate(args.tree):
                    work = root / f"{t}-{assoc}-{workers}-strace"
                    work.mkdir()
                    with _database(args.postgresql, f"ingest_cpu_{os.getpid()}") as db:
                        sends[(t, assoc, workers)] = one_run(tree, files, assoc, workers, work, storescu, db, True)[3]
                    # the run folder stays until the end (module docstring: recently deleted inodes)
                    print(f"tree {t} x{assoc} w{workers}: {sends[(t, assoc, workers)] / n:.2f} messages to "
                          "PostgreSQL per instance (untimed, under strace)", flush=True)
        for r in range(args.rounds):
            for assoc, workers in cases:
                for t, tree in enumerate(args.tree):
                    work = root / f"{t}-{assoc}-{workers}-{r}"
                    work.mkdir()
                    os.sync()
                    load = os.getloadavg()[0]
                    with _database(args.postgresql, f"ingest_cpu_{os.getpid()}") as db:
                        cpu, wall, pg, _ = one_run(tree, files, assoc, workers, work, storescu, db)
                    # the run folder stays until the end (module docstring: recently deleted inodes)
                    results.setdefault((t, assoc, workers), []).append((cpu, wall, pg))
                    pg_text = "" if math.isnan(pg) else f", PostgreSQL {pg / n * 1e3:.3f} ms/inst"
                    print(f"round {r} tree {t} x{assoc} w{workers}: CPU {cpu / n * 1e3:.3f} ms/inst{pg_text}, "
                          f"{n / wall:.0f} inst/s (load {load:.2f})", flush=True)
    finally:
        if args.keep_runs:
            print(f"run folders kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    for t, tree in enumerate(args.tree):
        print(f"tree {t}: {tree}")
    for assoc, workers in cases:
        for t in range(len(args.tree)):
            runs = results.get((t, assoc, workers))
            if not runs:  # --rounds 0: only the round trips were counted
                continue
            cpu = statistics.median(c for c, _, _ in runs) / n * 1e3
            rate = statistics.median(n / w for _, w, _ in runs)
            pg = statistics.median(p for _, _, p in runs) / n * 1e3
            extra = "" if math.isnan(pg) else f", PostgreSQL {pg:.3f} ms/inst"
            if (t, assoc, workers) in sends:
                extra += f", {sends[(t, assoc, workers)] / n:.2f} messages to PostgreSQL/inst"
            print(f"  x{assoc} workers {workers} tree {t}: median CPU {cpu:.3f} ms/inst{extra}, median {rate:.0f} inst/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
