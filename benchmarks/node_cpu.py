"""CPU per instance of one cluster node (PostgreSQL + SeaweedFS S3), A/B between source trees, interleaved.

For each round and each ``--weed`` setting (``benchmarks/seaweedfs_put.py``'s names; default: as
``scaleout.py`` runs it, ``weed server`` + a second volume server, replication 001) a SeaweedFS
cluster; in it, for each ``--tree`` and ``--variant`` in turn: a fresh PostgreSQL database, one
``pacskit serve`` (``PYTHONPATH=<tree>/src``, a fresh bucket prefix) as a cluster node (``cluster``),
as the same server without ``[cluster]`` (``pg-s3``) or with its blobs in a local folder (``pg-fs``);
``--small`` 64x64 CT instances sent straight to it by ``--associations`` DCMTK storescu at once, then
(``--retrieve``) every instance once by WADO-RS with as many HTTP clients, then (``--move``) a C-MOVE
of the study to DCMTK ``storescp --ignore``. Reported per run: the node's CPU ms per instance (utime +
stime from /proc: less moved by the machine's load than the rate), its user / system split and CPU
per thread, SeaweedFS's and PostgreSQL's (the run database's backends), the rates and the load
average. ``--spy FILE`` records the node of the first run with py-spy (raw format, ``--gil`` with
``--spy-gil``, the phase ``--spy-phase``) and names the threads from it; ``STRACE_NODE=FILE`` counts
the node's system calls during the ingest (``strace -c -f``), ``PERF_WEED=FILE`` records the weed
server process (``perf record -g``).

    .venv/bin/python benchmarks/node_cpu.py --tree A --tree B [--small 1000] [--associations 4] [--rounds 3]
        [--retrieve] [--move] [--variant cluster --variant pg-s3] [--weed default --weed gomaxprocs1] [--per-study 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import dcmtk_env, dcmtk_tool, ensure_series, ensure_studies, free_port, wait_for_port, warm  # noqa: E402
from seaweedfs_put import SETTINGS  # noqa: E402
from scaleout import CpuMeter, _count_pacskit, _ingest, _retrieve, _uids  # noqa: E402

from pacskit.testing.cluster import POSTGRES_URL, Node, fresh_postgres_database, node_settings  # noqa: E402
from pacskit.testing.peers import _stop, storescp  # noqa: E402
from pacskit.testing.seaweedfs import seaweedfs_cluster  # noqa: E402

AE = "PACS"


def thread_cpu(pid: int) -> dict[tuple[int, str], tuple[float, float]]:
    """(user, system) CPU seconds per thread (tid, name) of ``pid``, native threads (obstore's
    runtime, psycopg's) included, which a Python profiler does not see."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[int, str], tuple[float, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as fh:
                raw = fh.read().decode(errors="replace")
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        out[int(tid), raw[raw.index("(") + 1:raw.rindex(")")]] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return out


def _thread_report(before: dict[tuple[int, str], tuple[float, float]],
                   after: dict[tuple[int, str], tuple[float, float]], count: int, spy: str | None) -> str:
    """Node CPU ms per instance: user and system, then per thread (named from the py-spy record when
    there is one: ``thread (tid): name``)."""
    names: dict[int, str] = {}
    if spy and os.path.exists(spy):
        with open(spy, errors="replace") as fh:
            for line in fh:
                m = re.match(r"thread \((\d+)\): ([^;]+)", line)
                if m:
                    names[int(m.group(1))] = m.group(2).strip()
    per: dict[str, float] = {}
    user = system = 0.0
    for (tid, comm), (u, st) in after.items():
        u0, s0 = before.get((tid, comm), (0.0, 0.0))
        user, system = user + u - u0, system + st - s0
        name = re.sub(r"[0-9]+", "N", names.get(tid, comm))
        per[name] = per.get(name, 0.0) + (u - u0 + st - s0)
    threads = ", ".join(f"{k} {1000 * v / count:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])
                        if 1000 * v / count >= 0.01)
    return f"user {1000 * user / count:.2f}, system {1000 * system / count:.2f}; by thread: {threads}"


#: what a run's node is: a cluster node (the default), or the same single server without [cluster]
#: (PostgreSQL + S3), or with its blobs in a local folder (PostgreSQL + filesystem): the differences
#: are what the cluster path and the object store cost
VARIANTS: dict[str, dict[str, object]] = {
    "cluster": {},
    "pg-s3": {"cluster": {"enabled": False}},
    "pg-fs": {"cluster": {"enabled": False}, "storage": {"backend": "filesystem", "options": {}}},
}


def _start(folder: Path, tree: Path, variant: str, url: str, s3_options: dict[str, object],
           move_port: int | None = None) -> Node:
    """``pacskit serve`` of ``tree`` in ``folder`` as ``variant`` (``move_port``: the C-MOVE destination
    STORESCP registered); returns once it listens (DICOM and HTTP)."""
    import tomli_w

    folder.mkdir(parents=True)
    if move_port is not None:  # a cluster node copies it into the shared registry at start
        (folder / "ae-titles.toml").write_text(f'[[ae]]\ntitle = "STORESCP"\nhost = "127.0.0.1"\nport = {move_port}\n')
    dicom_port, http_port = free_port(), free_port()
    (folder / "server.toml").write_text(tomli_w.dumps(node_settings(
        "a", ae_title=AE, database_url=url, s3_options=s3_options, dicom_port=dicom_port, http_port=http_port,
        **VARIANTS[variant])))  # type: ignore[arg-type]
    log_path = folder / "node.log"
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "TCP_NODELAY": "1"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pacskit", "serve", "--data-dir", str(folder)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    node = Node("a", folder, dicom_port, http_port, proc, log_path)
    try:
        wait_for_port("127.0.0.1", dicom_port, 90, proc=proc)
        wait_for_port("127.0.0.1", http_port, 30, proc=proc)
    except Exception:
        _stop(proc)
        raise SystemExit(f"{tree} {variant}: the node did not start\n{node.log_text()[-3000:]}") from None
    return node


def one_run(tree: Path, variant: str, weed: object, files: list[Path], uids: list[tuple[str, str, str]], associations: int,
            work: Path, retrieve: bool, spy: str | None, gil: bool, spy_phase: str = "ingest",
            move: tuple[int, str] | None = None) -> dict[str, float]:
    prefix = f"nodecpu-{os.getpid()}-{time.monotonic_ns()}/"
    with fresh_postgres_database(POSTGRES_URL, prefix="pacskit_nodecpu") as url:
        database = url.rsplit("/", 1)[1].split("?", 1)[0]
        folder = work / f"node-{time.monotonic_ns()}"
        node = _start(folder, tree, variant, url, weed.store_options("bench", prefix),  # type: ignore[attr-defined]
                      move[0] if move else None)
        recorder = None

        def record() -> subprocess.Popen[bytes]:
            started = subprocess.Popen(
                ["/work/tools/bin/py-spy", "record", "-p", str(node.proc.pid), "-f", "raw", "-o", str(spy), "-r", "200",
                 "--threads", *(["--gil"] if gil else [])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.5)
            return started

        try:
            if spy and spy_phase == "ingest":
                recorder = record()
            groups = {"node": [node.proc.pid],
                      "seaweedfs": [p.proc.pid for p in weed.processes]}  # type: ignore[attr-defined]
            meter = CpuMeter(groups, database)
            perf = None
            strace = None
            if os.environ.get("STRACE_NODE"):  # syscall counts of the node, every thread
                strace = subprocess.Popen(["strace", "-c", "-f", "-o", os.environ["STRACE_NODE"], "-p",
                                           str(node.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            if os.environ.get("PERF_WEED"):  # perf record of the weed server process (Go symbols)
                perf = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-o", os.environ["PERF_WEED"], "-p",
                                         str(weed.processes[0].proc.pid)],  # type: ignore[attr-defined]
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            load = os.getloadavg()[0]
            meter.start()
            threads = thread_cpu(node.proc.pid)
            wall, ok = _ingest(node.dicom_port, files, associations, AE)
            cpu = meter.stop()
            after = thread_cpu(node.proc.pid)
            if strace is not None:
                strace.send_signal(2)
                strace.wait(60)
            if perf is not None:
                perf.send_signal(2)
                perf.wait(60)
            if ok != len(files) or _count_pacskit(url) != len(files):
                raise SystemExit(f"{tree}: {ok} successes of {len(files)}\n{node.log_text()[-3000:]}")
            out = {"rate": len(files) / wall, "load": load,
                   **{f"{k} ms": 1000 * v / len(files) for k, v in cpu.items()}}
            if recorder is not None:
                recorder.send_signal(2)
                recorder.wait(60)
                recorder = None
            if retrieve:
                if spy and spy_phase == "retrieve":
                    recorder = record()
                meter.start()
                rwall, got, _size = _retrieve(node.http_port, uids, associations)
                rcpu = meter.stop()
                if got != len(uids):
                    raise SystemExit(f"{tree}: WADO-RS returned {got} of {len(uids)}")
                out["retrieve rate"] = got / rwall
                out.update({f"retrieve {k} ms": 1000 * v / got for k, v in rcpu.items()})
            if move is not None:  # C-MOVE of the study to DCMTK storescp (--ignore), one movescu
                if recorder is not None:
                    recorder.send_signal(2)
                    recorder.wait(60)
                    recorder = None
                if spy and spy_phase == "move":
                    recorder = record()
                meter.start()
                start = time.perf_counter()
                moved = subprocess.run(
                    [dcmtk_tool("movescu"), "-v", "-S", "-aet", "BENCHMOVE", "-aec", AE, "-aem", "STORESCP",
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={move[1]}", "127.0.0.1",
                     str(node.dicom_port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dcmtk_env(),
                    text=True, errors="replace")
                mwall = time.perf_counter() - start
                mcpu = meter.stop()
                if "Received Final Move Response (Success)" not in moved.stdout:
                    raise SystemExit(f"{tree}: C-MOVE failed\n{moved.stdout[-2000:]}")
                out["move rate"] = len(files) / mwall
                out.update({f"move {k} ms": 1000 * v / len(files) for k, v in mcpu.items()})
        finally:
            if recorder is not None:
                recorder.send_signal(2)
                recorder.wait(60)
            if "after" in locals():
                print("  node CPU ms per instance: " + _thread_report(threads, after, len(files), spy), flush=True)
            _stop(node.proc, timeout=15)
            shutil.rmtree(folder, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True, type=Path)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                        help="node configurations to run with each tree (default: cluster)")
    parser.add_argument("--weed", action="append", choices=sorted(SETTINGS),
                        help="SeaweedFS settings (benchmarks/seaweedfs_put.py), each its own cluster (default: default)")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--per-study", type=int, default=0,
                        help="instances per study (one series each; 1: CR/DX/MG-like); 0: all in one series")
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--retrieve", action="store_true")
    parser.add_argument("--spy", default=None, help="py-spy raw output of the first tree's first run")
    parser.add_argument("--spy-gil", action="store_true")
    parser.add_argument("--spy-phase", choices=("ingest", "retrieve", "move"), default="ingest")
    parser.add_argument("--move", action="store_true", help="then C-MOVE the study to DCMTK storescp --ignore")
    args = parser.parse_args()
    os.environ.setdefault("TCP_NODELAY", "1")
    files = (ensure_studies("studies", args.small, args.per_study, 64, 64) if args.per_study
             else ensure_series("small", args.small, 64, 64))
    warm(files)
    uids = _uids(files) if args.retrieve else []
    work = Path(tempfile.mkdtemp(prefix="pacskit-bench-nodecpu-"))
    stack = contextlib.ExitStack()
    move = None
    if args.move:
        scp = stack.enter_context(storescp(work / "storescp", ae_title="STORESCP", extra_args=["--ignore"]))
        studies = {u[0] for u in _uids(files)}
        if len(studies) != 1:
            raise SystemExit(f"--move needs the instances of one study, not {len(studies)}")
        move = (scp.port, studies.pop())
    variants = args.variant or ["cluster"]
    weeds = args.weed or ["default"]
    runs = [(t, v) for t in args.tree for v in variants]
    results: dict[tuple[Path, str, str], list[dict[str, float]]] = {(t, v, w): [] for t, v in runs for w in weeds}
    try:
        for r in range(args.rounds):
            for setting in weeds:
                server_args, volume_args, env = SETTINGS[setting]
                with seaweedfs_cluster(work / f"weed-{r}-{setting}", volumes=2, replication="001",
                                       server_args=server_args, volume_args=volume_args, env=env) as weed:
                    weed.create_bucket("bench")
                    for i, (tree, variant) in enumerate(runs):
                        spy = args.spy if (args.spy and r == 0 and i == 0) else None
                        res = one_run(tree, variant, weed, files, uids, args.associations, work, args.retrieve, spy,
                                      args.spy_gil, args.spy_phase, move)
                        results[tree, variant, setting].append(res)
                        print(f"round {r + 1} {tree} {variant} weed={setting}: "
                              + ", ".join(f"{k} {v:.2f}" for k, v in res.items()), flush=True)
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)
    print()
    for (tree, variant, setting), done in results.items():
        keys = done[0].keys()
        print(f"{tree} {variant} weed={setting} (median of {len(done)}): " + ", ".join(
            f"{k} {statistics.median(r[k] for r in done):.2f}" for k in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
