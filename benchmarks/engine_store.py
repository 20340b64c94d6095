"""C-STORE throughput: DCMTK storescu -> (a) pacskit acceptor, (b) pynetdicom SCP, (c) DCMTK storescp.

One storescu process sends every instance of a dataset over one association to a receiver running as
its own process on 127.0.0.1. Every receiver writes each received dataset to its own file:

(a) ``benchmarks/_pacskit_store_scp.py``: datasets stream into temp files in the output folder, the
    async C-STORE handler renames each to ``<counter>.dcm``; engine defaults (max PDU 256 KiB).
(b) ``python -m pacskit.testing.pynd_scp``: pynetdicom AE, all storage contexts, the handler writes
    preamble + file meta + the raw dataset bytes; pynetdicom defaults (max PDU 16382).
(c) DCMTK ``storescp -od OUT -fe .dcm``: DCMTK defaults (max PDU 16384, normal (not bit-preserving)
    write mode).

Datasets (generated once, cached in ``.bench-data/``): ``small`` = 64x64 16-bit CT Image Storage, Explicit
VR Little Endian (3,000 by default); ``CT`` = 512x512 16-bit (1,000 by default).

Only the storescu process is timed (wall clock from spawn to exit: it includes storescu reading its
input files and the association setup and release). Each (receiver, dataset) pair runs ``--repeat``
times, each time with a fresh receiver process and a fresh, empty output folder; the table shows the
MEDIAN of the runs (all runs are listed too; 5 by default, because a shared 2-core VM has outliers
in both directions). A run counts only if storescu exits 0, prints no error, and the output folder
holds exactly as many ``.dcm`` files as were sent. Each run also reports the CPU seconds used by
storescu, by the receiver and by every other process on the machine (``/proc/stat``), and runs where
other processes took more than 15% of a core are flagged ``<- busy machine``.

Received files go to a tmpfs (``/dev/shm``) by default, the same for all three receivers: on this
development VM's disk (ext4) creating a file right after thousands were deleted cost ~0.2-0.3 ms
(perf: the inode allocator, ``find_inode_bit`` / ``recently_deleted``), against ~10 us otherwise, which
swamped and randomised the small-instance figures. ``--out-root DIR`` writes elsewhere (on a disk, outputs are then kept until the
end of the whole benchmark rather than deleted between runs).

    .venv/bin/python benchmarks/engine_store.py [--small N] [--ct N] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    warm,
    BENCH_DATA,
    RECEIVER_LABELS,
    RECEIVERS,
    count_files,
    cpu_seconds,
    dcmtk_env,
    dcmtk_tool,
    ensure_series,
    receiver,
)

#: Other processes using more than this share of a core during a run make it suspect (2-core machines).
BUSY = 0.15

TARGETS = (
    # (label, numerator, denominator, dataset, minimum ratio)
    ("a/c small (pacskit vs storescp)", "pacskit", "storescp", "small", 0.6),
    ("a/c CT    (pacskit vs storescp)", "pacskit", "storescp", "CT", 0.8),
    ("a/b small (pacskit vs pynetdicom)", "pacskit", "pynetdicom", "small", 3.0),
)


@dataclass
class Result:
    receiver: str
    dataset: str
    instances: int
    nbytes: int
    runs: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    max_background: float = 0.0  # highest share of a core other processes used during one of the runs

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.seconds if self.runs else float("nan")

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.seconds if self.runs else float("nan")


def busy_seconds() -> float:
    """CPU time all processes on the machine used so far (non-idle ticks of /proc/stat, all cores)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class RunInfo:
    """CPU seconds used during one timed transfer: by storescu, by the receiver, by everything else."""

    storescu_cpu: float
    receiver_cpu: float
    other_cpu: float


def one_run(
    kind: str, name: str, files: list[Path], out: Path, storescu: str, extra: dict[str, list[str]]
) -> tuple[float | None, str, RunInfo | None]:
    """Send ``files`` with storescu to a fresh ``kind`` receiver writing into the new folder ``out``;
    (seconds, "", cpu info) or (None, why, None)."""
    out.mkdir(parents=True)
    folder = files[0].parent
    with receiver(kind, out, extra=extra.get(kind, ())) as rx:
        argv = [storescu, "-aet", "BENCHSCU", "-aec", rx.ae_title, "127.0.0.1", str(rx.port)]
        argv += [str(p.relative_to(folder)) for p in files]
        os.sync()
        children0, rx0, busy0 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_seconds(rx.proc.pid), busy_seconds()
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=folder, env=dcmtk_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
        elapsed = time.perf_counter() - start
        children1, rx1, busy1 = resource.getrusage(resource.RUSAGE_CHILDREN), cpu_seconds(rx.proc.pid), busy_seconds()
        log_tail = rx.log_tail()
    scu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    info = RunInfo(scu, rx1 - rx0, max(0.0, (busy1 - busy0) - scu - (rx1 - rx0)))
    received, _ = count_files(out)
    problems = []
    if proc.returncode != 0:
        problems.append(f"storescu exited {proc.returncode}")
    errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith(("E:", "F:"))]
    if errors:
        problems.append(f"storescu reported {len(errors)} error line(s), first: {errors[0]}")
    if received != len(files):
        problems.append(f"{received} files received, {len(files)} sent")
    if problems:
        detail = "; ".join(problems)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        return None, f"{detail}\n    storescu: {' | '.join(tail)}\n    receiver log: {log_tail[-800:]}", None
    return elapsed, "", info


def is_tmpfs(path: Path) -> bool:
    best, fstype = "", ""
    with open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            mount = parts[1]
            if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, fstype = mount, parts[2]
    return fstype == "tmpfs"


def default_out_root() -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and is_tmpfs(shm) and shutil.disk_usage(shm).free > 2 * 1024**3:
        return shm
    return BENCH_DATA / "out"


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x != x else f"{x:,.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=3000, metavar="N", help="64x64 instances (default 3000; 0 skips)")
    parser.add_argument("--ct", type=int, default=1000, metavar="N", help="512x512 instances (default 1000; 0 skips)")
    parser.add_argument("--repeat", type=int, default=5, metavar="R", help="runs per receiver and dataset; the median is reported (default 5)")
    parser.add_argument("--receivers", default=",".join(RECEIVERS), help=f"comma-separated subset of {','.join(RECEIVERS)}")
    parser.add_argument("--out-root", type=Path, default=None,
                        help="where receivers write (default: /dev/shm if it is a tmpfs with 2 GiB free, else .bench-data/out)")
    parser.add_argument("--storescp-args", default="", help="extra storescp options, e.g. '+B' (bit-preserving)")
    parser.add_argument("--pacskit-args", default="", help="extra options for _pacskit_store_scp.py, e.g. '--profile FILE'")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.receivers.split(",") if k.strip()]
    for k in kinds:
        if k not in RECEIVERS:
            parser.error(f"unknown receiver {k!r}")
    extra = {"storescp": shlex.split(args.storescp_args), "pacskit": shlex.split(args.pacskit_args)}
    storescu = dcmtk_tool("storescu")

    datasets: list[tuple[str, list[Path]]] = []
    if args.small > 0:
        datasets.append(("small", ensure_series("small-64x64", args.small, 64, 64)))
    if args.ct > 0:
        datasets.append(("CT", ensure_series("ct-512x512", args.ct, 512, 512)))
    results: dict[tuple[str, str], Result] = {}
    for name, files in datasets:
        nbytes = warm(files)
        for k in kinds:
            results[(k, name)] = Result(k, name, len(files), nbytes)

    base = (args.out_root or default_out_root()).resolve()
    base.mkdir(parents=True, exist_ok=True)
    out_root = Path(tempfile.mkdtemp(prefix="pacskit-bench-", dir=base))
    on_tmpfs = is_tmpfs(out_root)
    print(f"storescu: {storescu}; {args.repeat} run(s) per cell, median reported; receivers on 127.0.0.1", flush=True)
    print(f"received files go to {out_root} ({'tmpfs' if on_tmpfs else 'not tmpfs'})", flush=True)
    try:
        for rep in range(args.repeat):
            order = kinds[rep % len(kinds):] + kinds[: rep % len(kinds)]  # rotate to spread drift evenly
            for name, files in datasets:
                for k in order:
                    out = out_root / f"{k}-{name}-{rep}"
                    try:
                        seconds, why, info = one_run(k, name, files, out, storescu, extra)
                    finally:
                        if on_tmpfs:  # memory: free it now. On a disk keep everything until the end, because
                            # mass deletes make the next runs' file creation slow (ext4 inode allocation)
                            shutil.rmtree(out, ignore_errors=True)
                    res = results[(k, name)]
                    if seconds is None:
                        res.failures.append(why)
                        print(f"  run {rep + 1}: {k:<10} {name:<5} FAILED: {why}", flush=True)
                    else:
                        assert info is not None
                        res.runs.append(seconds)
                        # /proc/stat counts 10 ms ticks: ignore what tick rounding alone can produce
                        busy = info.other_cpu / seconds if info.other_cpu >= 0.05 else 0.0
                        res.max_background = max(res.max_background, busy)
                        print(
                            f"  run {rep + 1}: {k:<10} {name:<5} {seconds:8.3f} s  {len(files) / seconds:9.1f} inst/s"
                            f"   CPU s: storescu {info.storescu_cpu:.2f}, receiver {info.receiver_cpu:.2f},"
                            f" other processes {info.other_cpu:.2f}{'  <- busy machine' if busy > BUSY else ''}",
                            flush=True,
                        )
    finally:
        shutil.rmtree(out_root, ignore_errors=True)

    print()
    header = f"{'receiver':<22} {'dataset':<7} {'instances':>9} {'seconds':>8} {'inst/s':>9} {'MB/s':>8}  runs (s)"
    print(header)
    print("-" * len(header))
    for name, _ in datasets:
        for k in kinds:
            r = results[(k, name)]
            runs = " ".join(f"{x:.3f}" for x in r.runs) + (f" +{len(r.failures)} failed" if r.failures else "")
            print(f"{RECEIVER_LABELS[k]:<22} {name:<7} {r.instances:>9,} {fmt(r.seconds, 3):>8} {fmt(r.inst_per_s, 1):>9} {fmt(r.mb_per_s, 1):>8}  {runs}")
    print("(seconds: median wall clock of the storescu process; MB = 10^6 bytes of the Part 10 files sent;")
    print(f" received files written to {'tmpfs' if on_tmpfs else 'disk'}: {base})")

    print()
    print("Throughput ratios (inst/s, same run):")
    for name, _ in datasets:
        a = results.get(("pacskit", name))
        for other, letter in (("pynetdicom", "b"), ("storescp", "c")):
            o = results.get((other, name))
            if a and o and a.runs and o.runs:
                print(f"  a/{letter} {name:<5}: {a.inst_per_s / o.inst_per_s:6.2f}")
    print()
    print("Targets:")
    status = 0
    for label, num, den, name, minimum in TARGETS:
        a, b = results.get((num, name)), results.get((den, name))
        if not (a and b and a.runs and b.runs):
            print(f"  {label}: >= {minimum:<4} not measured")
            continue
        ratio = a.inst_per_s / b.inst_per_s
        ok = ratio >= minimum and not a.failures and not b.failures
        status |= 0 if ok else 1
        print(f"  {label}: {ratio:6.2f} (target >= {minimum})  {'PASS' if ok else 'FAIL'}")
    noisy = sorted({name for r in results.values() if r.max_background > BUSY for name in [r.dataset]})
    if noisy:
        print(f"WARNING: other processes used > {BUSY:.0%} of a core during some {', '.join(noisy)} runs "
              "(marked '<- busy machine' above): figures may be skewed; rerun on a quiet machine.")
    if any(r.failures for r in results.values()):
        print("Some runs FAILED (see above).")
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
