"""C-STORE SCU throughput: (a) pacskit StoreScu vs (b) DCMTK storescu vs (c) pynetdicom's storescu app,
each sending to a DCMTK storescp (TCP_NODELAY=1), one association, in the same run.

Datasets (cached in ``.bench-data/`` by :func:`_common.ensure_series`): ``small`` = 64x64 16-bit CT
(3,000 by default), ``CT`` = 512x512 16-bit CT (1,000 by default), Explicit VR Little Endian.

Each sender is its own process and is timed wall clock from spawn to exit (interpreter start, reading
the files, association set-up and release included); each run gets a fresh storescp and an empty
output folder (tmpfs ``/dev/shm`` when available, as in engine_store.py). A run counts only if the
sender exits 0 and the output folder holds exactly as many files as were sent. For pacskit the time
spent inside ``StoreScu.store_sync`` is printed too: Python start-up and imports (~1 s on the
development VM, mostly pydicom + numpy and pydantic) are in the wall-clock figure, but an application
that embeds StoreScu pays them once. The median of
``--repeat`` runs is reported, with other processes' CPU use flagged as in engine_store.py.

(a) ``python benchmarks/_pacskit_store_scu.py`` = ``StoreScu(...).store_sync(files)``, a script that
    imports only pacskit's client (not this harness)
(b) ``storescu files...``      (c) ``python -m pynetdicom storescu files...`` (the same file list for all)

    .venv/bin/python benchmarks/store_scu.py [--small N] [--ct N] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PYTHON, compile_pacskit, count_files, dcmtk_env, dcmtk_tool, ensure_series, receiver, warm  # noqa: E402
from engine_store import BUSY, busy_seconds, default_out_root  # noqa: E402

SENDERS = ("pacskit", "storescu", "pynetdicom")
SENDER = Path(__file__).resolve().parent / "_pacskit_store_scu.py"  # alone in its process, like storescu
LABELS = {"pacskit": "(a) pacskit StoreScu", "storescu": "(b) DCMTK storescu", "pynetdicom": "(c) pynetdicom storescu"}
TARGETS = (("pacskit", "storescu", 0.7), ("pacskit", "pynetdicom", 3.0))


def sender_argv(kind: str, names: list[str], ae: str, port: int) -> tuple[list[str], dict[str, str]]:
    """Every sender gets the same explicit list of file names (relative to the data folder, its cwd)."""
    if kind == "pacskit":
        return [PYTHON, str(SENDER), ae, str(port), *names], dict(os.environ)
    if kind == "storescu":
        return [dcmtk_tool("storescu"), "-aet", "BENCHSCU", "-aec", ae, "127.0.0.1", str(port), *names], dcmtk_env()
    if kind == "pynetdicom":
        return [PYTHON, "-m", "pynetdicom", "storescu", "-aet", "BENCHSCU", "-aec", ae, "127.0.0.1", str(port), *names], dict(os.environ)
    raise ValueError(kind)


def one_run(kind: str, files: list[Path], out: Path) -> tuple[float | None, str, float]:
    out.mkdir(parents=True)
    with receiver("storescp", out) as rx:
        argv, env = sender_argv(kind, [p.name for p in files], rx.ae_title, rx.port)
        busy0 = busy_seconds()
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=files[0].parent, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
        elapsed = time.perf_counter() - start
        busy1 = busy_seconds()
    received, _ = count_files(out)
    if proc.returncode != 0 or received != len(files):
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-4:])
        return None, f"exit {proc.returncode}, {received}/{len(files)} received: {tail}", 0.0
    # The machine's busy cores during the run (sender + receiver + everything else): near 2 on this
    # 2-core machine means other work competed with the benchmark.
    note = ""
    for line in proc.stdout.splitlines():
        if line.startswith("in-process "):
            note = f" (in StoreScu.store_sync: {float(line.split()[1]):.2f})"
    return elapsed, note, (busy1 - busy0) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=3000)
    parser.add_argument("--ct", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--senders", default=",".join(SENDERS))
    args = parser.parse_args()
    kinds = [k for k in args.senders.split(",") if k]
    compile_pacskit()
    datasets = []
    if args.small:
        datasets.append(("small", ensure_series("small-64x64", args.small, 64, 64)))
    if args.ct:
        datasets.append(("CT", ensure_series("ct-512x512", args.ct, 512, 512)))
    out_root = Path(tempfile.mkdtemp(prefix="bench-store-scu-", dir=default_out_root()))
    medians: dict[tuple[str, str], float] = {}
    print(f"{'sender':28} {'dataset':8} {'instances':>9} {'median s':>9} {'inst/s':>9} {'MB/s':>8}  runs (s; machine busy cores)")
    try:
        for name, files in datasets:
            nbytes = warm(files)
            for kind in kinds:
                runs: list[float] = []
                notes: list[str] = []
                for r in range(args.repeat):
                    out = out_root / f"{kind}-{name}-{r}"
                    seconds, problem, busy = one_run(kind, files, out)  # problem: a note when it worked
                    subprocess.run(["rm", "-rf", str(out)], check=False)
                    if seconds is None:
                        notes.append(f"FAILED: {problem}")
                        continue
                    runs.append(seconds)
                    notes.append(f"{seconds:.2f}{problem}; {busy:.2f}" + (" <- busy machine" if busy > 2 - BUSY else ""))
                if runs:
                    med = statistics.median(runs)
                    medians[(kind, name)] = med
                    print(f"{LABELS[kind]:28} {name:8} {len(files):9d} {med:9.2f} {len(files) / med:9.0f} {nbytes / 1e6 / med:8.1f}  {', '.join(notes)}")
                else:
                    print(f"{LABELS[kind]:28} {name:8} {len(files):9d} {'n/a':>9}  {', '.join(notes)}")
                sys.stdout.flush()
    finally:
        subprocess.run(["rm", "-rf", str(out_root)], check=False)
    print("\ntargets (throughput ratio = their time / our time):")
    for name, _ in datasets:
        for num, den, minimum in TARGETS:
            if (num, name) in medians and (den, name) in medians:
                ratio = medians[(den, name)] / medians[(num, name)]
                print(f"  {name:6} pacskit vs {den:10}: {ratio:5.2f}x (target >= {minimum}x) {'met' if ratio >= minimum else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
