"""A/B of two pacskit source trees on the ingest path: flushes and server CPU per instance.

Runs ``pacskit serve`` from tree A and tree B (``--a /work/main --b .``: each tree's ``src`` on
PYTHONPATH, the same interpreter) alternately, round after round, on the same disk, with DCMTK
storescu sending small (64x64) and CT-sized (512x512) instances over 1 and 8 associations, one server
process (``--workers 1``) so that its CPU is one number. For each run it reports:

* the server's CPU seconds per instance (``/proc/<pid>/stat`` utime + stime, before and after the
  send): does not depend on the machine's load the way wall time does;
* the flush system calls per instance (fsync, fdatasync, syncfs, sync_file_range, msync) from
  ``strace -f -c`` attached to the server, in a separate, untimed pass;
* the wall time of the send (noisy on a shared machine: read it beside the load average printed).

    .venv/bin/python benchmarks/flush_ab.py --a /work/main --b . [--small 1000] [--ct 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import LOCALHOST, PYTHON, cpu_seconds, dcmtk_tool, ensure_series, free_port, stop_process, wait_for_port, warm  # noqa: E402
from ingest import Server, send, strace_flushes  # noqa: E402


def serve(tree: Path, data_dir: Path) -> tuple[subprocess.Popen[bytes], Server]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    log = open(data_dir.parent / f"{data_dir.name}.log", "wb")  # noqa: SIM115 (the server writes it)
    proc = subprocess.Popen([PYTHON, "-m", "pacskit", "serve", "--data-dir", str(data_dir), "--port", str(port),
                             "--ae", "PACSKIT", "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env)
    log.close()
    wait_for_port(LOCALHOST, port, 60, proc=proc)
    return proc, Server("PACSKIT", port, None, lambda: "", proc.pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, required=True, help="source tree A (e.g. /work/main)")
    parser.add_argument("--b", type=Path, required=True, help="source tree B (e.g. the branch's worktree)")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--ct", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--strace", type=int, default=300, help="instances of each strace pass (0: none)")
    parser.add_argument("--work-root", type=Path, default=Path(".bench-data/flush-ab"))
    args = parser.parse_args()
    storescu = dcmtk_tool("storescu")
    import compileall

    # Byte-compile tree B (PYTHONDONTWRITEBYTECODE may be set): each server then starts as an installed
    # application would. Tree A (the main checkout) is expected compiled already and is not written to.
    compileall.compile_dir(str(args.b.resolve() / "src" / "pacskit"), quiet=1)
    datasets = [("small", ensure_series("small-64x64", args.small, 64, 64)),
                ("CT", ensure_series("ct-512x512", args.ct, 512, 512))]
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    args.work_root.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, int, int, float, float, float, str]] = []
    for rnd in range(args.rounds):
        order = ["A", "B"] if rnd % 2 == 0 else ["B", "A"]
        for name, files in datasets:
            for assocs in (1, 8):
                for label in order:
                    data = Path(tempfile.mkdtemp(prefix=f"{label}-{name}-{assocs}-", dir=args.work_root))
                    warm(files)
                    flushes = float("nan")
                    if args.strace:  # its own server and data folder: the timed pass sends no duplicate
                        proc, server = serve(trees[label], data / "strace")
                        try:
                            subset = files[: args.strace]
                            with strace_flushes(server.pid, data / "strace.txt") as counts:
                                _, problems = send(storescu, server, subset, assocs)
                            flushes = sum(counts.values()) / len(subset)
                        finally:
                            stop_process(proc, timeout=30)
                    proc, server = serve(trees[label], data / "pacs")
                    try:
                        load = os.getloadavg()[0]
                        cpu0 = cpu_seconds(server.pid)
                        seconds, problems = send(storescu, server, files, assocs)
                        cpu = (cpu_seconds(server.pid) - cpu0) / len(files)
                    finally:
                        stop_process(proc, timeout=30)
                    shutil.rmtree(data, ignore_errors=True)
                    rows.append((label, name, assocs, len(files), seconds, cpu, flushes,
                                 f"load {load:.1f}" + (f" PROBLEMS {problems[:2]}" if problems else "")))
                    r = rows[-1]
                    print(f"round {rnd} {label} {name:5s} x{assocs}: {r[3] / r[4]:7.0f} inst/s, "
                          f"{r[5] * 1e3:.3f} ms CPU/inst, {r[6]:.2f} flushes/inst ({r[7]})", flush=True)
    print("\nmedian over rounds (B/A wall ratio is inst/s B over A):")
    for name, _files in datasets:
        for assocs in (1, 8):
            def med(label: str, col: int, name: str = name, assocs: int = assocs) -> float:
                vals = sorted(r[col] if col != 4 else r[3] / r[4] for r in rows
                              if r[0] == label and r[1] == name and r[2] == assocs)
                return vals[len(vals) // 2]
            print(f"  {name:5s} x{assocs}: A {med('A', 4):6.0f} inst/s {med('A', 5) * 1e3:.3f} ms CPU "
                  f"{med('A', 6):.2f} fl | B {med('B', 4):6.0f} inst/s {med('B', 5) * 1e3:.3f} ms CPU "
                  f"{med('B', 6):.2f} fl | B/A {med('B', 4) / med('A', 4):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
