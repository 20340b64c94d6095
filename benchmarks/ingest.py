"""Ingest throughput: DCMTK storescu -> (a) pacskit server, (b) Orthanc.

(a) ``python -m pacskit serve --data-dir <fresh dir> --port P --ae PACSKIT`` as a subprocess: the
    full server (Storage add-in, SQLite index, durable writes with fsync), default settings.
(b) Debian's Orthanc via :func:`pacskit.testing.peers.orthanc` in a fresh work dir: default SQLite
    index and storage directory (no compression), started with TCP_NODELAY=1.

Both servers write to the same file system (``--work-root``, default ``.bench-data/ingest``; a disk,
not a tmpfs, since both are meant to be durable). Datasets come from the engine_store cache
(``.bench-data/``): ``small`` = 64x64 16-bit CT (3,000 by default), ``CT`` = 512x512 16-bit (1,000).

``--postgresql URL`` adds a run of each server with PostgreSQL as its index, 8 associations of small
instances: pacskit with ``[database] url`` and Orthanc with Debian's ``orthanc-postgresql`` index plugin,
each on a fresh database of that server.

Where a target with several associations is missed, the summary says what it would leave of the machine's CPU per instance
(every core busy, the storescu clients' share taken off) against what each server used, and the most
pacskit's CPU per instance allows: whether the target can be met here at all by a server that spends
what these do.

``--strace N`` also counts, in a separate pass of N small instances per (server, associations), the
flushes each server makes per instance: ``strace -f -c`` attached to the server process, counting
fsync, fdatasync, syncfs, sync_file_range and msync (strace slows a server down, so these passes are
not timed).

Runs per (server, dataset): 1 association (one storescu with every file) and 8 associations (the
files dealt round-robin into 8 lists, 8 storescu processes started at once). With 8 associations pacskit
also runs as ``serve --workers N`` (``--workers``, default 2: N processes sharing the port and the
SQLite index). Every run uses a fresh
server process and a fresh, empty data directory. Only the storescu phase is timed (wall clock from
spawning the first storescu to the exit of the last). A run counts only if every storescu exits 0
without E:/F: lines and the server then holds exactly as many instances as were sent (pacskit:
``python -m pacskit check --no-hash`` on the data dir after the server stopped; Orthanc: REST
``/statistics`` CountInstances).

Each run starts on an empty page cache (``drop_page_cache``, as root): otherwise the CT runs late in
the sequence paid the reclaim of earlier runs' pages. Run folders are deleted only at the end, never between runs: on ext4 without a journal (this
machine's root file system: ``/proc/fs/jbd2`` is empty) every new file's inode allocation skips, one
by one, the inodes of its group deleted in the last 60 s (300 s while their table block is dirty:
``recently_deleted`` in the kernel's ``ialloc.c``), so a run started just after the previous run's
thousands of files were deleted paid that scan on each received instance -- ~30% of the server's CPU
in ``perf`` (``find_get_block_common``, ``recently_deleted``), and whichever server ran next paid it.

    .venv/bin/python benchmarks/ingest.py [--small N] [--ct N] [--postgresql URL] [--strace N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DATA, LOCALHOST, PYTHON, dcmtk_env, dcmtk_tool, drop_page_cache, ensure_series, free_port, stop_process, tree_cpu, wait_for_port, warm  # noqa: E402

from pacskit.testing.peers import orthanc  # noqa: E402

SERVERS = ("pacskit", "orthanc")
ASSOCIATIONS = (1, 8)
TARGETS = (
    # (label, dataset, associations, minimum pacskit/Orthanc inst/s ratio)
    ("small, 1 association ", "small", 1, 1.5),
    ("CT,    1 association ", "CT", 1, 1.5),
    ("small, 8 associations", "small", 8, 2.0),
    ("CT,    8 associations", "CT", 8, 2.0),
    ("small, 8 assocs, PostgreSQL index", "small-pg", 8, 1.5),
)
FLUSH_CALLS = ("fsync", "fdatasync", "syncfs", "sync_file_range", "msync")
ORTHANC_PG_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"


@dataclass
class Result:
    server: str
    dataset: str
    associations: int
    instances: int
    nbytes: int
    seconds: float | None = None
    failure: str = ""
    server_cpu: tuple[float, float] = (float("nan"), float("nan"))  # (user, system) seconds, process tree
    client_cpu: tuple[float, float] = (float("nan"), float("nan"))  # the storescu processes together

    def cpu_ms(self, cpu: tuple[float, float]) -> float:
        """``cpu`` (user, system seconds) in ms per instance."""
        return 1000 * sum(cpu) / self.instances

    def ms_per_instance(self, cpu: tuple[float, float]) -> str:
        user, system = (x * 1000 / self.instances for x in cpu)
        return "n/a" if user != user else f"{user + system:5.2f} ({user:.2f}+{system:.2f})"

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds else float("nan")

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.seconds if self.seconds else float("nan")


@dataclass
class Cpu:
    server: tuple[float, float]  # (user, system) seconds
    clients: tuple[float, float]


@dataclass
class Server:
    ae_title: str
    port: int
    count: object  # () -> int, called while the server runs (Orthanc) or None
    log: object  # () -> str
    pid: int = 0


@contextlib.contextmanager
def pacskit_server(data_dir: Path, workers: int = 1, database_url: str | None = None) -> Iterator[Server]:
    port = free_port()
    log_path = data_dir.parent / f"{data_dir.name}.log"
    if database_url is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "server.toml").write_text(f'[database]\nurl = "{database_url}"\n')
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", "pacskit", "serve", "--data-dir", str(data_dir), "--port", str(port), "--ae", "PACSKIT",
             "--workers", str(workers)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        try:
            wait_for_port(LOCALHOST, port, 60, proc=proc)
            deadline = time.monotonic() + 60
            while workers > 1 and "workers, data in" not in log_path.read_text(errors="replace"):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the workers did not all start")
                time.sleep(0.1)
        except Exception as exc:
            raise RuntimeError(f"pacskit serve did not start: {exc}\n{log_path.read_text(errors='replace')[-2000:]}") from None
        yield Server("PACSKIT", port, None, lambda: log_path.read_text(errors="replace"), proc.pid)
    finally:
        stop_process(proc, timeout=30)


def pacskit_count(data_dir: Path) -> tuple[int, str]:
    out = subprocess.run([PYTHON, "-m", "pacskit", "check", "--no-hash", "--data-dir", str(data_dir)],
                         capture_output=True, text=True, errors="replace")
    text = (out.stdout + out.stderr).strip()
    m = re.match(r"(\d+) instances", text)
    return (int(m.group(1)) if m else -1), text


@contextlib.contextmanager
def orthanc_server(work_dir: Path, database: dict[str, object] | None = None) -> Iterator[Server]:
    extra: dict[str, object] | None = None
    if database is not None:
        extra = {"Plugins": [ORTHANC_PG_PLUGIN],
                 "PostgreSQL": {"EnableIndex": True, "EnableStorage": False, "Lock": False, **database}}
    with orthanc(work_dir, startup_timeout=60, extra_config=extra) as peer:
        yield Server(peer.ae_title, peer.dicom_port, peer.instance_count, peer.log_text, peer.proc.pid)


@contextlib.contextmanager
def fresh_database(url: str | None, name: str) -> Iterator[tuple[str, dict[str, object]] | None]:
    """A new, empty PostgreSQL database on the server of ``url`` (dropped afterwards): its
    SQLAlchemy URL and Orthanc's connection settings; ``None`` when ``url`` is ``None``."""
    if url is None:
        yield None
        return
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    admin = dict(host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username or "postgres",
                 password=u.password or "", dbname=u.database or "postgres", autocommit=True)
    with psycopg.connect(**admin) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        sa_url = u.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
        yield sa_url, {"Host": admin["host"], "Port": admin["port"], "Database": name,
                       "Username": admin["user"], "Password": admin["password"]}
    finally:
        with psycopg.connect(**admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def strace_flushes(pid: int, out: Path) -> Iterator[dict[str, int]]:
    """Count the flush system calls of process ``pid`` (every thread) while the block runs."""
    counts: dict[str, int] = {}
    proc = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=" + ",".join(FLUSH_CALLS), "-o", str(out),
                             "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        line = proc.stderr.readline() if proc.stderr else b""  # "Process N attached": strace is in place
        if b"attached" not in line:
            raise RuntimeError(f"strace did not attach: {line!r}")
        yield counts
    finally:
        proc.send_signal(2)  # SIGINT: detach and write the summary
        proc.communicate(timeout=60)
    for row in out.read_text().splitlines():
        parts = row.split()
        if len(parts) >= 5 and parts[-1] in FLUSH_CALLS:
            counts[parts[-1]] = int(parts[3])


def send(storescu: str, server: Server, files: list[Path], associations: int) -> tuple[float, list[str], Cpu]:
    """Run ``associations`` storescu processes in parallel over ``files`` (round-robin split);
    (wall seconds, problems, CPU of the server's process tree and of the storescu processes while
    they ran)."""
    folder = files[0].parent
    lists = [files[i::associations] for i in range(associations)]
    argvs = [[storescu, "-aet", "BENCHSCU", "-aec", server.ae_title, LOCALHOST, str(server.port),
              *[str(p.relative_to(folder)) for p in chunk]] for chunk in lists if chunk]
    env = dcmtk_env()
    outs = []
    server0, clients0 = tree_cpu(server.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    procs = [subprocess.Popen(a, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for a in argvs]
    for p in procs:
        outs.append(p.communicate()[0].decode(errors="replace"))
    elapsed = time.perf_counter() - start
    server1, clients1 = tree_cpu(server.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = Cpu((server1[0] - server0[0], server1[1] - server0[1]),
              (clients1.ru_utime - clients0.ru_utime, clients1.ru_stime - clients0.ru_stime))
    problems = []
    for i, (p, text) in enumerate(zip(procs, outs)):
        errors = [ln for ln in text.splitlines() if ln.startswith(("E:", "F:"))]
        if p.returncode != 0 or errors:
            problems.append(f"storescu #{i} exited {p.returncode}, {len(errors)} error line(s): {' | '.join(text.strip().splitlines()[-3:])}")
    return elapsed, problems, cpu


def one_run(kind: str, files: list[Path], associations: int, work: Path, storescu: str,
            postgresql: str | None = None, flushes: dict[str, int] | None = None,
            cpu: list[Cpu] | None = None) -> tuple[float | None, str]:
    """One timed run (or, with ``flushes``, an untimed one under strace filling ``flushes``); the
    run's CPU is appended to ``cpu``. Each starts on an empty page cache (as root), its input files
    read back into it."""
    if drop_page_cache():
        warm(files)
    problems: list[str] = []
    received = -1

    def run(srv: Server) -> tuple[float, list[str]]:
        if flushes is None:
            seconds, problems, used = send(storescu, srv, files, associations)
        else:
            with strace_flushes(srv.pid, work / "strace.txt") as counts:
                seconds, problems, used = send(storescu, srv, files, associations)
            flushes.update(counts)
        if cpu is not None:
            cpu.append(used)
        return seconds, problems

    with fresh_database(postgresql, f"bench_{kind.replace('-', '_')}_{os.getpid()}") as db:
        if kind.startswith("pacskit"):
            data_dir = work / "data"
            workers = int(kind.partition("-w")[2] or 1)
            with pacskit_server(data_dir, workers, db[0] if db else None) as srv:
                seconds, problems = run(srv)
                log = srv.log()
            received, check_text = pacskit_count(data_dir)
            if received != len(files):
                problems.append(f"pacskit check: {check_text!r}")
        else:
            with orthanc_server(work / "orthanc", db[1] if db else None) as srv:
                seconds, problems = run(srv)
                received = srv.count()
                log = srv.log()
    if received != len(files):
        problems.append(f"{received} instances stored, {len(files)} sent")
    if problems:
        return None, "; ".join(problems) + f"\n    server log tail: {' | '.join(log.strip().splitlines()[-5:])}"
    return seconds, ""


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x != x else f"{x:,.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=3000, metavar="N", help="64x64 instances (default 3000; 0 skips)")
    parser.add_argument("--ct", type=int, default=1000, metavar="N", help="512x512 instances (default 1000; 0 skips)")
    parser.add_argument("--work-root", type=Path, default=BENCH_DATA / "ingest", help="where the servers' data dirs go")
    parser.add_argument("--postgresql", metavar="URL", default=None,
                        help="also run both servers with PostgreSQL as the index (small x 8), e.g. "
                             "postgresql://postgres@127.0.0.1:5432/test (a database is created per run)")
    parser.add_argument("--strace", type=int, default=0, metavar="N",
                        help="count flushes per instance over N small instances per server and association count")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="also run pacskit with N worker processes (serve --workers N) for the 8-association runs "
                             "(default 2; 1 skips)")
    args = parser.parse_args()
    storescu = dcmtk_tool("storescu")

    datasets: list[tuple[str, list[Path]]] = []
    if args.small > 0:
        datasets.append(("small", ensure_series("small-64x64", args.small, 64, 64)))
    if args.ct > 0:
        datasets.append(("CT", ensure_series("ct-512x512", args.ct, 512, 512)))

    args.work_root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ingest-", dir=args.work_root.resolve()))
    print(f"storescu: {storescu} (TCP_NODELAY=1); servers on 127.0.0.1, data under {root}", flush=True)
    results: list[Result] = []
    try:
        for name, files in datasets:
            nbytes = warm(files)
            for assoc in ASSOCIATIONS:
                kinds = list(SERVERS)
                if assoc > 1 and args.workers > 1:
                    kinds.insert(1, f"pacskit-w{args.workers}")
                for kind in kinds:
                    work = root / f"{kind}-{name}-{assoc}"
                    work.mkdir()
                    res = Result(kind, name, assoc, len(files), nbytes)
                    used: list[Cpu] = []
                    res.seconds, res.failure = one_run(kind, files, assoc, work, storescu, cpu=used)
                    if used:
                        res.server_cpu, res.client_cpu = used[0].server, used[0].clients
                    results.append(res)
                    if res.seconds is None:
                        print(f"  {kind:<10} {name:<5} x{assoc}: FAILED: {res.failure}", flush=True)
                    else:
                        print(f"  {kind:<10} {name:<5} x{assoc}: {res.seconds:8.3f} s  {res.inst_per_s:9.1f} inst/s", flush=True)
        if args.postgresql and args.small > 0:
            files = datasets[0][1]
            for kind in ("pacskit", "orthanc"):
                work = root / f"{kind}-pg"
                work.mkdir()
                res = Result(kind, "small-pg", 8, len(files), warm(files))
                used = []
                res.seconds, res.failure = one_run(kind, files, 8, work, storescu, args.postgresql, cpu=used)
                if used:  # the server's own process tree: its PostgreSQL's backends are not in it
                    res.server_cpu, res.client_cpu = used[0].server, used[0].clients
                results.append(res)
                print(f"  {kind:<10} small x8 PostgreSQL index: " + (f"FAILED: {res.failure}" if res.seconds is None
                      else f"{res.seconds:8.3f} s  {res.inst_per_s:9.1f} inst/s"), flush=True)
        if args.strace > 0:
            files = ensure_series("small-64x64", args.strace, 64, 64)[: args.strace]
            warm(files)
            print()
            print(f"flushes per instance (strace -f -c of {', '.join(FLUSH_CALLS)}; {len(files)} small instances):")
            for assoc in ASSOCIATIONS:
                for kind in SERVERS:
                    work = root / f"strace-{kind}-{assoc}"
                    work.mkdir()
                    counts: dict[str, int] = {}
                    _, failure = one_run(kind, files, assoc, work, storescu, flushes=counts)
                    total = sum(counts.values())
                    detail = ", ".join(f"{k} {v / len(files):.2f}" for k, v in sorted(counts.items()))
                    print(f"  {kind:<8} x{assoc}: {total / len(files):5.2f} per instance ({detail})"
                          + (f"  [run failed: {failure}]" if failure else ""), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    header = (f"{'server':<10} {'dataset':<7} {'assocs':>6} {'instances':>9} {'seconds':>8} {'inst/s':>9} {'MB/s':>8}"
              f"  {'server CPU ms/inst':<20} {'storescu CPU ms/inst':<20}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.server:<10} {r.dataset:<7} {r.associations:>6} {r.instances:>9,} {fmt(r.seconds or float('nan'), 3):>8}"
              f" {fmt(r.inst_per_s, 1):>9} {fmt(r.mb_per_s, 1):>8}  {r.ms_per_instance(r.server_cpu):<20}"
              f" {r.ms_per_instance(r.client_cpu):<20}{'  FAILED' if r.failure else ''}")
    print("(seconds: wall clock of the storescu phase, one run each; MB = 10^6 bytes of the Part 10 files sent;\n"
          " CPU: user+system (user+system) over the same phase, the server's process tree (workers included,\n"
          " its PostgreSQL's backends not) and the storescu processes together)")

    def get(server: str, dataset: str, assoc: int) -> Result | None:
        return next((r for r in results if (r.server, r.dataset, r.associations) == (server, dataset, assoc)), None)

    print()
    print("pacskit / Orthanc (inst/s; with 8 associations the better of 1 and N worker processes):")
    status = 0
    for label, dataset, assoc, minimum in TARGETS:
        candidates = [r for r in results if r.server.startswith("pacskit") and (r.dataset, r.associations) == (dataset, assoc)
                      and r.seconds is not None]
        a = max(candidates, key=lambda r: r.inst_per_s) if candidates else get("pacskit", dataset, assoc)
        o = get("orthanc", dataset, assoc)
        if not (a and o):
            print(f"  {label}: not measured (target >= {minimum})")
            continue
        if a.seconds is None or o.seconds is None:
            print(f"  {label}: n/a (a run failed; target >= {minimum})  FAIL")
            status = 1
            continue
        ratio = a.inst_per_s / o.inst_per_s
        ok = ratio >= minimum
        status |= 0 if ok else 1
        print(f"  {label}: {ratio:6.2f}  (target >= {minimum})  {'PASS' if ok else 'FAIL'}  [{a.server}]")
        if not ok and assoc > 1:  # one association is a round trip at a time: latency, not CPU, bounds it
            print("    " + cpu_budget(a, o, minimum))
    return status


def cpu_budget(ours: Result, theirs: Result, minimum: float) -> str:
    """What ``minimum`` x Orthanc's rate would leave of this machine's CPU per instance, against what
    each server and its storescu clients used: whether a target can be met here at all by a server
    that spends what these do (the clients share the machine's cores with the server)."""
    cores = os.cpu_count() or 1
    wanted = minimum * theirs.inst_per_s
    budget = 1000 * cores / wanted  # ms of CPU per instance with every core busy
    server, clients = ours.cpu_ms(ours.server_cpu), ours.cpu_ms(ours.client_cpu)
    ceiling = 1000 * cores / (server + clients)
    return (f"{minimum:g}x = {wanted:,.0f} inst/s = at most {budget:.2f} ms of CPU per instance for everything on "
            f"{cores} cores; less storescu's {clients:.2f}, <= {budget - clients:.2f} ms for the server "
            f"(pacskit used {server:.2f}, Orthanc {theirs.cpu_ms(theirs.server_cpu):.2f}: at pacskit's, "
            f"every core busy, {ceiling:,.0f} inst/s = {ceiling / theirs.inst_per_s:.2f}x at most)")


if __name__ == "__main__":
    sys.exit(main())
