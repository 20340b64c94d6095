"""Server CPU per received instance, A/B between source trees, runs interleaved.

Starts ``python -m pacskit serve`` (default settings, SQLite index, fresh data folder) from each
``--tree`` in turn (``PYTHONPATH=<tree>/src``), sends the same small instances with DCMTK storescu
(TCP_NODELAY=1) over 1 and 8 associations, and reports for each run the CPU seconds the server used
while the instances arrived (utime + stime of the server process and its worker processes, from
/proc, read just before the first storescu starts and just after the last one exits) per instance,
and the wall-clock rate. CPU per instance barely depends on the machine's load, the rate does: on a
shared machine decide on CPU, and read the rates beside the load average printed with them.

    .venv/bin/python benchmarks/ingest_cpu.py --tree /path/to/A --tree /path/to/B [--small N] [--rounds R]
        [--ct] [--workers N] [--cases 1,8,8w,1w]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DATA, LOCALHOST, PYTHON, dcmtk_env, dcmtk_tool, ensure_series, free_port, stop_process, wait_for_port, warm  # noqa: E402


def _tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                raw = fh.read().decode()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        pid = int(name)
        children.setdefault(int(fields[1]), []).append(pid)
        stats[pid] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def one_run(tree: Path, files: list[Path], associations: int, workers: int, work: Path, storescu: str) -> tuple[float, float]:
    """(server CPU seconds, wall seconds) of sending ``files`` over ``associations``."""
    data = work / "data"
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
        cpu0 = _tree_cpu(proc.pid)
        t0 = time.perf_counter()
        procs = [subprocess.Popen(a, cwd=folder, env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for a in argvs]
        outs = [p.communicate()[0].decode(errors="replace") for p in procs]
        wall = time.perf_counter() - t0
        cpu = _tree_cpu(proc.pid) - cpu0
        for p, text in zip(procs, outs):
            if p.returncode != 0 or any(ln.startswith(("E:", "F:")) for ln in text.splitlines()):
                raise RuntimeError(f"storescu failed: {text[-500:]}")
    finally:
        stop_process(proc, timeout=30)
    out = subprocess.run([PYTHON, "-m", "pacskit", "check", "--no-hash", "--data-dir", str(data)], env=env,
                         capture_output=True, text=True)
    if not out.stdout.startswith(f"{len(files)} instances"):
        raise RuntimeError(f"check: {out.stdout} {out.stderr}")
    return cpu, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", required=True, help="a source tree (its src/ is used)")
    parser.add_argument("--small", type=int, default=1000, metavar="N")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="also run 8 associations with N workers (1 skips)")
    parser.add_argument("--cases", default="1,8,8w", help="comma list of associations (1, 8, ...), with w: with --workers processes")
    parser.add_argument("--ct", action="store_true", help="CT-sized instances (512x512, 16-bit) instead of 64x64")
    args = parser.parse_args()
    storescu = dcmtk_tool("storescu")
    files = ensure_series("ct-512x512", args.small, 512, 512) if args.ct else ensure_series("small-64x64", args.small, 64, 64)
    warm(files)
    root = Path(tempfile.mkdtemp(prefix="ingest-cpu-", dir=(BENCH_DATA / "ingest").resolve()
                                 if (BENCH_DATA / "ingest").exists() else None))
    cases = [(int(c.rstrip("w")), args.workers if c.endswith("w") else 1) for c in args.cases.split(",")]
    results: dict[tuple[int, int, int], list[tuple[float, float]]] = {}
    try:
        for r in range(args.rounds):
            for assoc, workers in cases:
                for t, tree in enumerate(args.tree):
                    work = root / f"{t}-{assoc}-{workers}-{r}"
                    work.mkdir()
                    os.sync()
                    load = os.getloadavg()[0]
                    cpu, wall = one_run(tree, files, assoc, workers, work, storescu)
                    shutil.rmtree(work, ignore_errors=True)
                    results.setdefault((t, assoc, workers), []).append((cpu, wall))
                    print(f"round {r} tree {t} x{assoc} w{workers}: CPU {cpu / len(files) * 1e3:.3f} ms/inst, "
                          f"{len(files) / wall:.0f} inst/s (load {load:.2f})", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    for t, tree in enumerate(args.tree):
        print(f"tree {t}: {tree}")
    for assoc, workers in cases:
        for t in range(len(args.tree)):
            runs = results[(t, assoc, workers)]
            cpu = statistics.median(c for c, _ in runs) / len(files) * 1e3
            rate = statistics.median(len(files) / w for _, w in runs)
            print(f"  x{assoc} workers {workers} tree {t}: median CPU {cpu:.3f} ms/inst, median {rate:.0f} inst/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
