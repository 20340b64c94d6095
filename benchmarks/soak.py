"""Soak: 64 concurrent storing associations against ``pacskit serve`` for a bounded time, with random
A-ABORTs and SIGKILLed client processes mixed in; then prove nothing acknowledged was lost and that the
server's memory and file descriptors came back.

Loopback only. The server is ``python -m pacskit serve`` on a temp folder and a free port. 64 client
slots run until the duration is over; each slot repeatedly picks one of:

- **store** (most): an association (``pacskit.net.connect``) that C-STOREs 1-12 small synthetic
  instances (8x8 CT, new UIDs each) and releases;
- **abort**: the same, but the association is A-ABORTed at a random moment, often while a C-STORE is
  in flight (that instance's acknowledgement never arrives, so it is not counted);
- **kill**: a child process (this script with ``--child``) that stores in a loop, printing each
  acknowledged SOP Instance UID, and is killed with SIGKILL after a random 0.3-3 s.

Only instances answered with status Success (0x0000) are "acknowledged". At the end: the server must
still answer C-ECHO; after a settle period (clients gone, up to ``--settle`` s for the server's
counts to come down), the server is stopped and every acknowledged instance must be in its index,
and ``pacskit check`` (sizes and SHA-256 of every stored file) must pass.

Figures: server RSS and open file descriptors (``/proc/<pid>/status``, ``/proc/<pid>/fd``) at baseline
(after start-up and a warm-up round of the same concurrency), peak (sampled every 0.25 s) and after the clients
finished; associations, aborts, kills, acknowledged instances, lost instances.

    .venv/bin/python benchmarks/soak.py [--duration 60] [--rounds 3] [--clients 64] [--settle 15]

Exit status 0 only when nothing acknowledged was lost, the store checks clean, the server answered to
the end, and every kind of descriptor (sockets, pipes, spare temp files, other files) is back to its
baseline count; the index's SQLite connections may stay up to the pool's bound (pool_size +
max_overflow = 20 connections, 2 fds each), because SQLAlchemy keeps what it opened at the peak.

RSS is reported after each of ``--rounds`` rounds, not judged: glibc keeps freed memory for reuse and
each SQLite connection's page cache (2 MiB by default) fills as the index grows, so RSS rises for a
while without any leak. ``--trace-heap`` runs the server under tracemalloc and also requires the
Python heap to be flat (under 2 MiB growth from the baseline to the last round).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PYTHON, free_port, stop_process, wait_for_port  # noqa: E402

from pydicom.uid import generate_uid  # noqa: E402

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS  # noqa: E402
from pacskit.net import NetConfig, RequestedContext, connect
from pacskit.testing.synth import make_dataset  # noqa: E402

LOCALHOST = "127.0.0.1"
AE = "SOAK"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CONTEXTS = [RequestedContext(VERIFICATION_SOP_CLASS), RequestedContext(CT_IMAGE_STORAGE)]
CONFIG = NetConfig(acse_timeout=30, dimse_timeout=60, network_timeout=120)

#: ``--trace-heap``: the server runs under tracemalloc and, on SIGUSR1, appends the bytes Python has
#: allocated (after a full collection) to the file named by PACSKIT_SOAK_HEAP. RSS alone cannot tell a
#: leak from memory the C allocator keeps for reuse or SQLite's page caches filling up; a flat Python
#: heap across rounds can.
HEAP_GROWTH_BOUND = 2 << 20
HEAP_BOOTSTRAP = """
import gc, os, signal, sys, tracemalloc
tracemalloc.start(1)
def _heap(*_):
    gc.collect()
    with open(os.environ["PACSKIT_SOAK_HEAP"], "a") as f:
        f.write(f"{tracemalloc.get_traced_memory()[0]}\\n")
signal.signal(signal.SIGUSR1, _heap)
sys.argv[0] = "pacskit"
from pacskit.cli import main
main()
"""


# --------------------------------------------------------------------------- process figures


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> dict[str, int]:
    """The process's descriptors by kind: sockets, pipes, the index (SQLite files), spare temp files..."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if ":[" in target or target.startswith("anon_inode:"):
            kind = target.split(":")[0] if not target.startswith("anon_inode:") else target
        elif "/index.db" in target:
            kind = "index (SQLite)"
        elif target.endswith(".part"):
            kind = "spare temp file"
        else:
            kind = "other file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


@dataclass
class Figures:
    rss: dict[str, int] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    peak_rss: int = 0
    peak_fds: int = 0
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)

    def sample(self, pid: int) -> None:
        self.peak_rss = max(self.peak_rss, rss_bytes(pid))
        self.peak_fds = max(self.peak_fds, open_fds(pid))

    heap: list[int] = field(default_factory=list)
    heap_file: Path | None = None

    def mark(self, name: str, pid: int) -> None:
        self.rss[name], self.fds[name] = rss_bytes(pid), open_fds(pid)
        self.kinds[name] = fd_kinds(pid)

    async def mark_heap(self, pid: int) -> None:
        """Ask a ``--trace-heap`` server for its traced Python heap (it answers in the heap file)."""
        if self.heap_file is None:
            return
        os.kill(pid, signal.SIGUSR1)
        for _ in range(200):
            await asyncio.sleep(0.1)
            lines = self.heap_file.read_text().split() if self.heap_file.exists() else []
            if len(lines) > len(self.heap):
                self.heap.append(int(lines[-1]))
                return
        raise TimeoutError("the server did not report its heap")


# --------------------------------------------------------------------------- clients


class Instances:
    """New synthetic instances from one template dataset (only the UIDs change)."""

    def __init__(self) -> None:
        self.template = make_dataset(rows=8, cols=8, sop_class_uid=CT_IMAGE_STORAGE)

    def new(self, study_uid: str, series_uid: str) -> tuple[str, object]:
        ds = copy.deepcopy(self.template)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        return str(ds.SOPInstanceUID), ds


@dataclass
class Tally:
    acknowledged: set[str] = field(default_factory=set)
    associations: int = 0
    aborts: int = 0
    kills: int = 0
    failures: list[str] = field(default_factory=list)  # unexpected errors (not caused by our aborts)
    refused: int = 0  # non-success C-STORE statuses


async def store_association(port: int, instances: Instances, tally: Tally, rng: random.Random, *, abort: bool) -> None:
    assoc = await connect(LOCALHOST, port, called_ae=AE, calling_ae="SOAKSCU", contexts=CONTEXTS, config=CONFIG)
    tally.associations += 1
    study, series = generate_uid(), generate_uid()
    count = rng.randint(1, 12)
    abort_at = rng.randint(0, count - 1) if abort else -1
    try:
        for i in range(count):
            uid, ds = instances.new(study, series)
            if i == abort_at:
                task = asyncio.ensure_future(assoc.store(ds))
                await asyncio.sleep(rng.uniform(0, 0.02))
                assoc.abort()
                tally.aborts += 1
                with contextlib.suppress(Exception):
                    rsp = await task
                    if rsp.status == 0x0000:  # answered before the abort left: acknowledged
                        tally.acknowledged.add(uid)
                return
            rsp = await assoc.store(ds)
            if rsp.status == 0x0000:
                tally.acknowledged.add(uid)
            else:
                tally.refused += 1
        await assoc.release()
    except Exception as exc:  # noqa: BLE001 - counted and reported, the soak goes on
        tally.failures.append(f"{type(exc).__name__}: {exc}")
        assoc.abort()


async def killed_client(port: int, tally: Tally, rng: random.Random) -> None:
    """A client process storing in a loop, SIGKILLed after a random time; its complete ACK lines count."""
    proc = await asyncio.create_subprocess_exec(PYTHON, __file__, "--child", "--port", str(port),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                                                stdin=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None

    async def read_acks() -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            if line.endswith(b"\n") and line.startswith(b"ACK "):
                tally.acknowledged.add(line[4:].strip().decode())

    reader = asyncio.ensure_future(read_acks())
    await asyncio.sleep(rng.uniform(0.3, 3.0))
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL)
    tally.kills += 1
    await proc.wait()
    await reader


async def slot(port: int, deadline: float, instances: Instances, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        pick = rng.random()
        try:
            if pick < 0.06:
                await killed_client(port, tally, rng)
            else:
                await store_association(port, instances, tally, rng, abort=pick < 0.25)
        except Exception as exc:  # noqa: BLE001 - connect failed: recorded, go on
            tally.failures.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.1)


async def child_main(port: int) -> None:
    """``--child``: store forever, one ACK line per acknowledged instance (flushed at once)."""
    instances = Instances()
    while True:
        assoc = await connect(LOCALHOST, port, called_ae=AE, calling_ae="SOAKKILL", contexts=CONTEXTS, config=CONFIG)
        study, series = generate_uid(), generate_uid()
        for _ in range(20):
            uid, ds = instances.new(study, series)
            rsp = await assoc.store(ds)
            if rsp.status == 0x0000:
                sys.stdout.write(f"ACK {uid}\n")
                sys.stdout.flush()
        await assoc.release()


# --------------------------------------------------------------------------- the run


async def echo_ok(port: int) -> bool:
    try:
        async with await connect(LOCALHOST, port, called_ae=AE, calling_ae="SOAKECHO", contexts=CONTEXTS,
                                 config=CONFIG) as assoc:
            return await assoc.echo() == 0x0000
    except Exception:  # noqa: BLE001
        return False


async def run(args: argparse.Namespace, port: int, server: subprocess.Popen[bytes], figures: Figures) -> Tally:
    instances = Instances()
    tally = Tally()
    pid = server.pid
    figures.mark("start-up", pid)
    # warm-up: the same concurrency storing a little, so lazily loaded code, the index's connection
    # pool and the spare temp files are in the baseline; then the clients leave and the server settles
    await asyncio.gather(*(store_association(port, instances, tally, random.Random(-1 - i), abort=False)
                           for i in range(args.clients)))
    await asyncio.sleep(3)
    figures.mark("baseline", pid)
    await figures.mark_heap(pid)
    figures.sample(pid)

    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                figures.sample(pid)
            await asyncio.sleep(0.25)

    sampling = asyncio.ensure_future(sampler())
    tally.server_answering = True  # type: ignore[attr-defined]
    for round_no in range(1, args.rounds + 1):
        deadline = time.monotonic() + args.duration
        await asyncio.gather(*(slot(port, deadline, instances, tally, seed + 1000 * round_no)
                               for seed in range(args.clients)))
        if round_no == 1:
            figures.mark("clients-done", pid)
        tally.server_answering &= await echo_ok(port)  # type: ignore[attr-defined]
        # settle: the server closes what the killed clients left (their sockets are closed by the kernel)
        settle_end = time.monotonic() + args.settle
        while time.monotonic() < settle_end and open_fds(pid) > figures.fds["baseline"]:
            await asyncio.sleep(0.5)
        await asyncio.sleep(1)
        figures.mark(f"after round {round_no}", pid)
        await figures.mark_heap(pid)
    figures.mark("after", pid)
    stop.set()
    await sampling
    return tally


def verify(data_dir: Path, acknowledged: set[str]) -> tuple[list[str], bool, str]:
    """(acknowledged instances missing from the index, `pacskit check` passed, its report)."""
    from pacskit.server.server import open_store
    from pacskit.config.settings import load_settings

    store = open_store(load_settings(data_dir), recover=False)
    try:
        missing = [uid for uid in sorted(acknowledged) if store.index.find_instance(uid) is None]
    finally:
        store.close()
    check = subprocess.run([PYTHON, "-m", "pacskit", "check", "--data-dir", str(data_dir)],
                           capture_output=True, text=True, timeout=600)
    return missing, check.returncode == 0, (check.stdout + check.stderr).strip()


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of storing per round (default 60)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent client slots (default 64)")
    parser.add_argument("--settle", type=float, default=15.0, help="max seconds for the server to settle after")
    parser.add_argument("--rounds", type=int, default=3,
                        help="soak rounds of --duration s, each followed by a settle (default 3): memory retained "
                             "by the allocator shows once, a leak grows with every round")
    parser.add_argument("--trace-heap", action="store_true",
                        help="run the server under tracemalloc and report its Python heap after each round "
                             "(slower start-up and throughput; the figures that tell a leak from allocator reuse)")
    parser.add_argument("--keep", action="store_true", help="keep the server folder")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import logging

    logging.getLogger("pacskit").setLevel(logging.ERROR)  # aborts are on purpose: no warning per abort
    if args.child:
        with contextlib.suppress(Exception):
            asyncio.run(child_main(args.port))
        return 0

    data_dir = Path(tempfile.mkdtemp(prefix="pacskit-soak-"))
    port = free_port()
    log_path = data_dir.parent / f"{data_dir.name}.log"
    with open(log_path, "wb") as log:
        figures = Figures()
        env = dict(os.environ)
        start = [PYTHON, "-m", "pacskit"]
        if args.trace_heap:
            figures.heap_file = data_dir.parent / f"{data_dir.name}.heap"
            env["PACSKIT_SOAK_HEAP"] = str(figures.heap_file)
            start = [PYTHON, "-c", HEAP_BOOTSTRAP]
        server = subprocess.Popen(
            [*start, "serve", "--data-dir", str(data_dir), "--port", str(port), "--ae", AE, "--host", LOCALHOST],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        wait_for_port(LOCALHOST, port, 600 if args.trace_heap else 60, proc=server)
        started = time.monotonic()
        tally = asyncio.run(run(args, port, server, figures))
        elapsed = time.monotonic() - started
    finally:
        stop_process(server, timeout=30)
    missing, check_ok, check_report = verify(data_dir, tally.acknowledged)
    answering = getattr(tally, "server_answering", False)
    # Every kind of descriptor must be back to its baseline count, except the index's: SQLAlchemy's
    # pool keeps connections it opened at the peak (2 fds each, the database and its WAL), at most
    # pool_size + max_overflow = 20 (pacskit.store.engine), which is a bound and not a leak.
    index_kind = "index (SQLite)"
    fds_back = all(n <= figures.kinds["baseline"].get(kind, 0)
                   for kind, n in figures.kinds["after"].items() if kind != index_kind)
    fds_back = fds_back and figures.kinds["after"].get(index_kind, 0) <= figures.kinds["start-up"].get(index_kind, 0) + 2 * 20

    print(f"soak: {args.clients} client slots, {args.rounds} rounds of {args.duration:.0f} s (wall {elapsed:.0f} s incl. warm-up and settle), "
          f"loopback, server pid {server.pid}")
    print(f"  associations {tally.associations}, A-ABORTs {tally.aborts}, SIGKILLed clients {tally.kills}, "
          f"unexpected client errors {len(tally.failures)}, non-success statuses {tally.refused}")
    print(f"  acknowledged instances {len(tally.acknowledged)}, missing from the index {len(missing)}, "
          f"pacskit check {'ok' if check_ok else 'FAILED'}")
    print(f"  server answered C-ECHO after the clients: {'yes' if answering else 'NO'}")
    print(f"  server RSS: start-up {mib(figures.rss['start-up'])}, baseline {mib(figures.rss['baseline'])}, peak {mib(figures.peak_rss)}, "
          f"clients done {mib(figures.rss['clients-done'])}, after settle {mib(figures.rss['after'])}")
    rounds = [figures.rss[f"after round {r}"] for r in range(1, args.rounds + 1)]
    print("  server RSS after each round: " + ", ".join(mib(n) for n in rounds)
          + (f"; growth from round 1 to {args.rounds}: {mib(rounds[-1] - rounds[0])}" if len(rounds) > 1 else ""))
    if figures.heap:
        print("  server Python heap (tracemalloc): baseline " + mib(figures.heap[0]) + ", after each round "
              + ", ".join(mib(n) for n in figures.heap[1:])
              + f"; growth from baseline to the last round: {mib(figures.heap[-1] - figures.heap[0])}")
    print(f"  server open fds: start-up {figures.fds['start-up']}, baseline {figures.fds['baseline']}, peak {figures.peak_fds}, "
          f"clients done {figures.fds['clients-done']}, after settle {figures.fds['after']}")
    print(f"  fds back to baseline (index connections within the pool bound): {'yes' if fds_back else 'NO'}")
    for name in ("start-up", "baseline", "after"):
        print(f"  fds by kind, {name}: " + ", ".join(f"{k} {n}" for k, n in sorted(figures.kinds[name].items())))
    print(f"  pacskit check: {check_report.splitlines()[-1] if check_report else '(no output)'}")
    if tally.failures:
        kinds: dict[str, int] = {}
        for f in tally.failures:
            kinds[f[:100]] = kinds.get(f[:100], 0) + 1
        for text, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:5]:
            print(f"  client error x{n}: {text}")
    for uid in missing[:10]:
        print(f"  LOST: {uid}")
    if args.keep:
        print(f"  server folder kept: {data_dir} (log {log_path})")
    else:
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
        log_path.unlink(missing_ok=True)
        if figures.heap_file is not None:
            figures.heap_file.unlink(missing_ok=True)
    # the index's bounded series cache (pacskit.store.index) may fill a little: a leak grows per round
    heap_flat = not figures.heap or figures.heap[-1] - figures.heap[0] < HEAP_GROWTH_BOUND
    ok = bool(tally.acknowledged) and not missing and check_ok and answering and fds_back and heap_flat
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
