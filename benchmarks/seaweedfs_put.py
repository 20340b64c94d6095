"""What SeaweedFS's CPU per stored instance depends on: its settings, measured one PUT at a time.

For each ``--setting`` (a name from :data:`SETTINGS`: extra ``weed server`` / ``weed volume`` arguments
and environment) a SeaweedFS cluster as the scale-out benchmark runs it (``weed server -s3`` + a
second volume server, replication 001), then ``--count`` conditional PUTs of a received-instance-sized
file (:meth:`pacskit.store.s3.S3BlobStore.put_file`, as a node sends them) from ``--threads`` threads.
Reported per setting and round: the SeaweedFS processes' CPU ms per PUT (utime + stime from /proc,
per process: ``server`` is master + volume 1 + filer + S3 gateway), the client process's, PUTs per
second and the load average. Settings are interleaved round by round (a busy spell hits all).

    .venv/bin/python benchmarks/seaweedfs_put.py [--setting default --setting gogc400 ...] [--count 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_seconds, ensure_series  # noqa: E402

from pacskit.testing.seaweedfs import seaweedfs_cluster  # noqa: E402

#: name -> (weed server arguments, other volume servers' arguments, environment)
SETTINGS: dict[str, tuple[list[str], list[str], dict[str, str]]] = {
    "default": ([], [], {}),
    # the Go garbage collector runs a quarter as often (heap may grow 4x the live set instead of 2x)
    "gogc400": ([], [], {"GOGC": "400"}),
    # objects below 16 KiB kept in the filer's store, not on the volume servers: NOT replicated by
    # the volume servers (the replication 001 would not hold): measured to know, not to use
    "inline16k": (["-filer.saveToFilerLimit=16384"], [], {}),
    "noindex-leveldb": (["-volume.index=leveldb"], ["-index=leveldb"], {}),
    "gomaxprocs1": ([], [], {"GOMAXPROCS": "1"}),
}


def _put_all(store: Any, files: list[Path], work: Path, count: int, threads: int) -> float:
    """Wall seconds of ``count`` put_file calls (each of a fresh copy of a file: put_file deletes it)."""
    copies = []
    for i in range(count):
        dst = work / f"{i:06d}.dcm"
        shutil.copyfile(files[i % len(files)], dst)
        copies.append(dst)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: store.put_file(str(p)), copies))
    return time.perf_counter() - start


def one_run(setting: str, files: list[Path], count: int, threads: int, work: Path) -> dict[str, float]:
    from pacskit.store.s3 import S3BlobStore

    server_args, volume_args, env = SETTINGS[setting]
    folder = work / f"weed-{setting}-{time.monotonic_ns()}"
    try:
        with seaweedfs_cluster(folder, volumes=2, replication="001", server_args=server_args,
                               volume_args=volume_args, env=env) as weed:
            weed.create_bucket("bench")
            store = S3BlobStore(folder / "local", **weed.store_options("bench", "p/"))
            _put_all(store, files, folder / "local" / "tmp", min(200, count), threads)  # warm: volumes grown
            procs = {p.role: p.proc.pid for p in weed.processes or []}
            before = {role: cpu_seconds(pid) for role, pid in procs.items()}
            mine = time.process_time()
            load = os.getloadavg()[0]
            wall = _put_all(store, files, folder / "local" / "tmp", count, threads)
            client = time.process_time() - mine
            out = {f"{role} ms": 1000 * (cpu_seconds(pid) - before[role]) / count for role, pid in procs.items()}
            out["weed ms"] = sum(v for k, v in out.items())
            out["client ms"] = 1000 * client / count
            out["PUT/s"] = count / wall
            out["load"] = load
            return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", action="append", choices=sorted(SETTINGS))
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=1000, help="the cached 64x64 CT instances to send")
    args = parser.parse_args()
    settings = args.setting or ["default"]
    files = ensure_series("small", args.small, 64, 64)
    work = Path(tempfile.mkdtemp(prefix="pacskit-bench-weedput-"))
    results: dict[str, list[dict[str, float]]] = {s: [] for s in settings}
    try:
        for r in range(args.rounds):
            for setting in settings:
                res = one_run(setting, files, args.count, args.threads, work)
                results[setting].append(res)
                print(f"round {r + 1} {setting}: " + ", ".join(f"{k} {v:.2f}" for k, v in res.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    for setting, runs in results.items():
        print(f"{setting} (median of {len(runs)}): " + ", ".join(
            f"{k} {statistics.median(r[k] for r in runs):.2f}" for k in runs[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
