"""The client commands as a user runs them, start-up included: ``pacskit store`` vs DCMTK ``storescu``
and ``pacskit echo`` vs DCMTK ``echoscu``, in the same run, against a DCMTK ``storescp``.

- store: ``--files`` small synthetic instances (64x64 16-bit CT, Explicit VR Little Endian, ~9.6 KB;
  cached in ``.bench-data/`` by :func:`_common.ensure_series`), one association, the same explicit file
  list for both senders; each run gets a fresh storescp (TCP_NODELAY=1, a free port) and an empty
  output folder (tmpfs ``/dev/shm`` when available); a run counts only if the sender exits 0 and every
  file arrived. Target (issue 17): pacskit's wall time <= 1.4x storescu's.
- echo: one C-ECHO per process, ``--echo-runs`` runs of each against one storescp; reported beside
  echoscu's (no target).

Each sender is its own process, timed wall clock from spawn to exit; its CPU time (user + system, from
the kernel's accounting of the reaped child) is printed beside it, because on a shared machine the
wall time of a run depends on what else runs, the CPU time much less. The two senders alternate run
by run so that a busy period hits both; the machine's busy cores during each run are printed as in
engine_store.py ("<- busy machine" when other work competed). Medians are compared.

pacskit runs as the ``pacskit`` console script next to this interpreter (``--entry module``: ``python
-m pacskit``), with this checkout's ``src`` first on ``PYTHONPATH`` and its modules byte-compiled first
(an editable install does not compile them; an installed application is compiled).

    .venv/bin/python benchmarks/client_startup.py [--files 1000] [--store-runs 7] [--echo-runs 21]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PYTHON,
    REPO_ROOT,
    compile_pacskit,
    count_files,
    dcmtk_env,
    dcmtk_tool,
    ensure_series,
    receiver,
    warm,
)
from engine_store import BUSY, busy_seconds, default_out_root  # noqa: E402

STORE_TARGET = 1.4  # pacskit store wall time / storescu wall time, at most


@dataclass
class Runs:
    label: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        if not self.wall:
            return f"{self.label:24} {'n/a':>9}  {' '.join(self.notes)}"
        return (f"{self.label:24} {statistics.median(self.wall) * 1000:9.0f} {min(self.wall) * 1000:9.0f} "
                f"{statistics.median(self.cpu) * 1000:9.0f}  {len(self.wall)} runs: {', '.join(self.notes)}")


def pacskit_argv(entry: str) -> list[str]:
    script = Path(PYTHON).parent / "pacskit"
    if entry == "script" and script.exists():
        return [str(script)]
    return [PYTHON, "-m", "pacskit"]


def timed(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], float, float, float]:
    """(the finished process, wall seconds, its CPU seconds, machine busy cores during the run)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = busy_seconds()
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    wall = time.perf_counter() - start
    busy = (busy_seconds() - busy0) / wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, wall, cpu, busy


def note(wall: float, cpu: float, busy: float) -> str:
    return f"{wall * 1000:.0f}/{cpu * 1000:.0f}" + (" <- busy machine" if busy > 2 - BUSY else "")


def store_run(kind: str, files: list[Path], out: Path, runs: Runs, entry: str, env: dict[str, str]) -> None:
    out.mkdir(parents=True)
    names = [p.name for p in files]
    try:
        with receiver("storescp", out) as rx:
            if kind == "pacskit":
                argv = [*pacskit_argv(entry), "store", "-q", "--calling", "BENCHSCU", f"{rx.ae_title}@127.0.0.1:{rx.port}", *names]
                sender_env = env
            else:
                argv = [dcmtk_tool("storescu"), "-aet", "BENCHSCU", "-aec", rx.ae_title, "127.0.0.1", str(rx.port), *names]
                sender_env = dcmtk_env()
            proc, wall, cpu, busy = timed(argv, sender_env, cwd=files[0].parent)
        received, _ = count_files(out)
    finally:
        subprocess.run(["rm", "-rf", str(out)], check=False)
    if proc.returncode != 0 or received != len(files):
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        runs.notes.append(f"FAILED (exit {proc.returncode}, {received}/{len(files)} received: {tail})")
        return
    runs.wall.append(wall)
    runs.cpu.append(cpu)
    runs.notes.append(note(wall, cpu, busy))


def echo_run(kind: str, ae: str, port: int, runs: Runs, entry: str, env: dict[str, str]) -> None:
    if kind == "pacskit":
        proc, wall, cpu, busy = timed([*pacskit_argv(entry), "echo", "--calling", "BENCHSCU", f"{ae}@127.0.0.1:{port}"], env)
    else:
        proc, wall, cpu, busy = timed([dcmtk_tool("echoscu"), "-aet", "BENCHSCU", "-aec", ae, "127.0.0.1", str(port)], dcmtk_env())
    if proc.returncode != 0:
        runs.notes.append(f"FAILED (exit {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-200:]})")
        return
    runs.wall.append(wall)
    runs.cpu.append(cpu)
    runs.notes.append(note(wall, cpu, busy))


def ratio(num: Runs, den: Runs) -> float:
    if not num.wall or not den.wall:
        return float("nan")
    return statistics.median(num.wall) / statistics.median(den.wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000, help="small instances per store run [1000]")
    parser.add_argument("--store-runs", type=int, default=7, help="store runs of each sender [7]")
    parser.add_argument("--echo-runs", type=int, default=21, help="echo runs of each [21]")
    parser.add_argument("--entry", choices=("script", "module"), default="script",
                        help="run pacskit as the console script or as python -m pacskit [script]")
    args = parser.parse_args()
    compile_pacskit()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    files = ensure_series("small-64x64", args.files, 64, 64)
    nbytes = warm(files)
    print(f"pacskit: {' '.join(pacskit_argv(args.entry))}; {len(files)} files, {nbytes / 1e6:.1f} MB; "
          f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"\n{'sender':24} {'median ms':>9} {'min ms':>9} {'cpu ms':>9}  runs (wall/cpu ms)")

    out_root = Path(tempfile.mkdtemp(prefix="bench-client-startup-", dir=default_out_root()))
    store = {"pacskit": Runs("pacskit store"), "storescu": Runs("DCMTK storescu")}
    echo = {"pacskit": Runs("pacskit echo"), "echoscu": Runs("DCMTK echoscu")}
    try:
        for r in range(args.store_runs):
            order = ("pacskit", "storescu") if r % 2 == 0 else ("storescu", "pacskit")
            for kind in order:
                store_run(kind, files, out_root / f"{kind}-{r}", store[kind], args.entry, env)
        for runs in store.values():
            print(runs.line())
        with receiver("storescp", out_root / "echo") as rx:
            for r in range(args.echo_runs):
                order = ("pacskit", "echoscu") if r % 2 == 0 else ("echoscu", "pacskit")
                for kind in order:
                    echo_run(kind, rx.ae_title, rx.port, echo[kind], args.entry, env)
        for runs in echo.values():
            print(runs.line())
    finally:
        subprocess.run(["rm", "-rf", str(out_root)], check=False)

    store_ratio = ratio(store["pacskit"], store["storescu"])
    echo_ratio = ratio(echo["pacskit"], echo["echoscu"])
    print("\ntargets (wall time ratio, medians; lower is better):")
    verdict = "n/a" if store_ratio != store_ratio else ("met" if store_ratio <= STORE_TARGET else "NOT met")
    print(f"  store {len(files)} files: pacskit / storescu = {store_ratio:.2f}x (target <= {STORE_TARGET}x) {verdict}")
    print(f"  echo:                 pacskit / echoscu  = {echo_ratio:.2f}x (reported, no target)")
    if store["pacskit"].cpu and store["storescu"].cpu:
        print(f"  CPU, store: pacskit {statistics.median(store['pacskit'].cpu) * 1000:.0f} ms, "
              f"storescu {statistics.median(store['storescu'].cpu) * 1000:.0f} ms; echo: pacskit "
              f"{statistics.median(echo['pacskit'].cpu) * 1000:.0f} ms, echoscu {statistics.median(echo['echoscu'].cpu) * 1000:.0f} ms"
              if echo["pacskit"].cpu and echo["echoscu"].cpu else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
