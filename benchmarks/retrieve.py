"""Retrieve throughput: DCMTK movescu asks (a) pacskit, (b) Orthanc to C-MOVE one study to DCMTK storescp.

(a) ``python -m pacskit serve --data-dir <fresh dir>`` as a subprocess (Storage + Retrieve add-ins,
    SQLite index, default settings), STORESCP registered with ``pacskit ae add``.
(b) Debian's Orthanc via :func:`pacskit.testing.peers.orthanc` (default SQLite index, storage without
    compression), STORESCP in its DicomModalities.

Each server is loaded with the study by DCMTK storescu first (not timed), then ``--repeat`` (3)
``movescu -S -aem STORESCP`` for the study are timed (wall clock from spawning movescu to its exit;
the median is reported). A move counts only if movescu reports a final Success and storescp wrote
exactly as many files as the study has.
storescp writes into ``--work-root`` (a disk, like the servers' data) unless ``--ignore`` is given
(storescp ``--ignore``: receive, do not store). Peak RSS is the server's VmHWM over the move only
(reset through ``/proc/<pid>/clear_refs`` just before; not every kernel allows it: then "since start").

Datasets come from the shared cache (``.bench-data/``): ``small`` = 64x64 16-bit CT, ``CT`` =
512x512 16-bit CT (512 KiB each), one study of N instances each (1,000 by default).

    .venv/bin/python benchmarks/retrieve.py [--small N] [--ct N] [--ignore]

Targets (issue 4): pacskit >= 1.2x Orthanc's inst/s on CT-sized, >= 1.0x on small; peak RSS flat
whatever the study size (compare runs with different N: the "growth" column, what the move added on
top of the server's RSS before it, is the one to compare; the RSS before includes what loading left).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DATA, LOCALHOST, PYTHON, dcmtk_env, dcmtk_tool, ensure_series, free_port, stop_process, wait_for_port, warm  # noqa: E402

from pacskit.testing.peers import orthanc, storescp  # noqa: E402

SERVERS = ("pacskit", "orthanc")
TARGETS = {"CT": 1.2, "small": 1.0}


@dataclass
class Result:
    server: str
    dataset: str
    instances: int
    nbytes: int
    seconds: float | None = None
    peak_rss_kib: int | None = None
    start_rss_kib: int | None = None  # VmRSS just before the move: peak - start is what the move added
    rss_scope: str = "move"
    all_seconds: list[float] = field(default_factory=list)
    failure: str = ""

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds else float("nan")


def _reset_peak(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss(pid: int, field: str = "VmHWM") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _load(server_ae: str, port: int, files: list[Path]) -> None:
    folder = files[0].parent
    out = subprocess.run([dcmtk_tool("storescu"), "-aet", "LOADER", "-aec", server_ae, LOCALHOST, str(port),
                          *[p.name for p in files]], cwd=folder,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dcmtk_env(), text=True, errors="replace")
    if out.returncode != 0 or any(ln.startswith(("E:", "F:")) for ln in out.stdout.splitlines()):
        raise RuntimeError(f"loading failed: {out.stdout[-1000:]}")


def _movescu(server_ae: str, port: int, study_uid: str) -> tuple[float, str]:
    argv = [dcmtk_tool("movescu"), "-v", "-S", "-aet", "BENCHMOVE", "-aec", server_ae, "-aem", "STORESCP",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", LOCALHOST, str(port)]
    start = time.perf_counter()
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dcmtk_env(), text=True, errors="replace")
    return time.perf_counter() - start, out.stdout


@contextlib.contextmanager
def pacskit_server(data_dir: Path, scp_port: int) -> Iterator[tuple[str, int, int]]:
    data_dir.mkdir(parents=True)
    subprocess.run([PYTHON, "-m", "pacskit", "ae", "add", "STORESCP", "--host", LOCALHOST, "--port", str(scp_port),
                    "--data-dir", str(data_dir)], check=True, capture_output=True)
    port = free_port()
    log_path = data_dir.parent / "pacskit.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([PYTHON, "-m", "pacskit", "serve", "--data-dir", str(data_dir), "--port", str(port), "--ae", "PACSKIT"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for_port(LOCALHOST, port, 60, proc=proc)
        yield "PACSKIT", port, proc.pid
    finally:
        stop_process(proc, timeout=30)


@contextlib.contextmanager
def orthanc_server(work: Path, scp_port: int) -> Iterator[tuple[str, int, int]]:
    with orthanc(work, modalities={"storescp": ["STORESCP", LOCALHOST, scp_port]}, startup_timeout=60) as peer:
        yield peer.ae_title, peer.dicom_port, peer.proc.pid


def one_run(kind: str, files: list[Path], work: Path, ignore: bool, repeat: int = 1) -> Result:
    """Load the study once, then time ``repeat`` moves of it (the median is reported: one move of a
    small study takes well under a second, and single runs on a shared VM vary by a third)."""
    from pydicom import dcmread

    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    res = Result(kind, "", len(files), sum(p.stat().st_size for p in files))
    scp_dir = work / "storescp"
    times: list[float] = []
    with storescp(scp_dir, extra_args=["--ignore"] if ignore else ()) as scp:
        cm = pacskit_server(work / "data", scp.port) if kind == "pacskit" else orthanc_server(work / "orthanc", scp.port)
        with cm as (ae, port, pid):
            _load(ae, port, files)
            os.sync()
            if not _reset_peak(pid):
                res.rss_scope = "since start"
            res.start_rss_kib = _peak_rss(pid, "VmRSS")
            for _ in range(repeat):
                for old in scp_dir.glob("*.dcm"):
                    old.unlink()
                seconds, out = _movescu(ae, port, study_uid)
                received = len(list(scp_dir.glob("*.dcm")))
                if "Received Final Move Response (Success)" not in out:
                    res.failure = "movescu: " + " | ".join(out.strip().splitlines()[-3:])
                    break
                if not ignore and received != len(files):
                    res.failure = f"storescp wrote {received} files, {len(files)} expected"
                    break
                times.append(seconds)
            res.peak_rss_kib = _peak_rss(pid)
    if not res.failure:
        res.seconds = statistics.median(times)
        res.all_seconds = times
    return res


def fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or x != x else f"{x:,.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1000, metavar="N", help="64x64 instances in the study (0 skips)")
    parser.add_argument("--ct", type=int, default=1000, metavar="N", help="512x512 instances in the study (0 skips)")
    parser.add_argument("--ignore", action="store_true", help="storescp receives but does not write files")
    parser.add_argument("--repeat", type=int, default=3, metavar="N", help="moves timed per server and dataset (median)")
    parser.add_argument("--work-root", type=Path, default=BENCH_DATA / "retrieve", help="where servers and storescp write")
    args = parser.parse_args()

    datasets: list[tuple[str, list[Path]]] = []
    if args.small > 0:
        datasets.append(("small", ensure_series("small-64x64", args.small, 64, 64)))
    if args.ct > 0:
        datasets.append(("CT", ensure_series("ct-512x512", args.ct, 512, 512)))
    args.work_root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="retrieve-", dir=args.work_root.resolve()))
    print(f"movescu -> server -> storescp{' --ignore' if args.ignore else ''} (TCP_NODELAY=1), data under {root}", flush=True)
    results: list[Result] = []
    try:
        for name, files in datasets:
            warm(files)
            for kind in SERVERS:
                work = root / f"{kind}-{name}"
                work.mkdir()
                try:
                    res = one_run(kind, files, work, args.ignore, args.repeat)
                except Exception as exc:  # noqa: BLE001 - report and go on with the other runs
                    res = Result(kind, name, len(files), 0, failure=f"{type(exc).__name__}: {exc}")
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                res.dataset = name
                results.append(res)
                if res.seconds is None:
                    print(f"  {kind:<8} {name:<5}: FAILED: {res.failure}", flush=True)
                else:
                    runs = ", ".join(f"{t:.3f}" for t in res.all_seconds)
                    print(f"  {kind:<8} {name:<5}: {res.seconds:8.3f} s  {res.inst_per_s:9.1f} inst/s  "
                          f"peak RSS {fmt((res.peak_rss_kib or 0) / 1024)} MiB  (runs: {runs} s)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    header = (f"{'server':<8} {'dataset':<7} {'instances':>9} {'seconds':>8} {'inst/s':>9} {'MB/s':>8} {'peak RSS MiB':>13}"
              f" {'growth MiB':>11}")
    print(header)
    print("-" * len(header))
    for r in results:
        mbps = r.nbytes / 1e6 / r.seconds if r.seconds else None
        rss = (r.peak_rss_kib / 1024) if r.peak_rss_kib else None
        growth = (r.peak_rss_kib - r.start_rss_kib) / 1024 if r.peak_rss_kib and r.start_rss_kib else None
        print(f"{r.server:<8} {r.dataset:<7} {r.instances:>9,} {fmt(r.seconds, 3):>8} {fmt(r.inst_per_s):>9} {fmt(mbps):>8}"
              f" {fmt(rss):>13} {fmt(growth):>11}{'' if r.rss_scope == 'move' else ' (since start)'}"
              f"{'  FAILED' if r.failure else ''}")
    print("(seconds: wall clock of movescu, median of --repeat moves of the loaded study; peak RSS: VmHWM of")
    print(" the server during the moves; growth: peak minus VmRSS just before them, what the moves added)")
    print()
    print("pacskit / Orthanc (inst/s):")
    status = 0
    for name, minimum in TARGETS.items():
        a = next((r for r in results if (r.server, r.dataset) == ("pacskit", name)), None)
        o = next((r for r in results if (r.server, r.dataset) == ("orthanc", name)), None)
        if not (a and o):
            print(f"  {name:<5}: not measured (target >= {minimum})")
            continue
        if a.seconds is None or o.seconds is None:
            print(f"  {name:<5}: n/a (a run failed; target >= {minimum})  FAIL")
            status = 1
            continue
        ratio = a.inst_per_s / o.inst_per_s
        status |= 0 if ratio >= minimum else 1
        print(f"  {name:<5}: {ratio:6.2f}  (target >= {minimum})  {'PASS' if ratio >= minimum else 'FAIL'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
