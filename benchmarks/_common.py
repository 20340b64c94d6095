"""Shared helpers for the benchmarks: cached synthetic data, receiver processes, CPU time.

Builds on :mod:`pacskit.testing` (``synth.make_series``, ``peers.dcmtk_tool`` / ``dcmtk_env`` /
``free_port`` / ``wait_for_port``, and the baseline SCP ``pacskit.testing.pynd_scp``).

Also runnable as the baseline pynetdicom SCP with a configurable association limit (pynetdicom's
default is 10), for ``idle.py``::

    python benchmarks/_common.py pynd-scp --port P --out DIR [--aet AE] [--max-associations N]

which is :mod:`pacskit.testing.pynd_scp` (same AE, same C-STORE handler) with
``maximum_associations`` raised and no network timeout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pacskit.testing.peers import dcmtk_env, dcmtk_tool, free_port, wait_for_port  # noqa: F401 (re-exported)

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BENCH_DATA = REPO_ROOT / ".bench-data"
PYTHON = sys.executable
LOCALHOST = "127.0.0.1"


# --------------------------------------------------------------------------- processes


def compile_pacskit() -> None:
    """Byte-compile pacskit's modules (an editable install does not, and PYTHONDONTWRITEBYTECODE stops
    the interpreter doing it): a timed process then starts as an installed application would, not
    compiling every module from source first."""
    import compileall

    compileall.compile_dir(str(REPO_ROOT / "src" / "pacskit"), quiet=1)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only ever this one process."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout)


@dataclass
class Receiver:
    """A running receiver process."""

    name: str
    ae_title: str
    port: int
    proc: subprocess.Popen[bytes]
    out_dir: Path
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


RECEIVERS = ("pacskit", "pynetdicom", "storescp")
RECEIVER_LABELS = {
    "pacskit": "(a) pacskit acceptor",
    "pynetdicom": "(b) pynetdicom SCP",
    "storescp": "(c) DCMTK storescp",
}


def receiver_argv(kind: str, port: int, out_dir: Path, ae_title: str, *, extra: Sequence[str] = ()) -> tuple[list[str], dict[str, str]]:
    if kind == "pacskit":
        argv = [PYTHON, str(BENCH_DIR / "_pacskit_store_scp.py"), "--port", str(port), "--out", str(out_dir), "--aet", ae_title, *extra]
        return argv, dict(os.environ)
    if kind == "pynetdicom":
        if extra:  # options pacskit.testing.pynd_scp lacks (--max-associations): our wrapper
            argv = [PYTHON, str(BENCH_DIR / "_common.py"), "pynd-scp", "--port", str(port), "--out", str(out_dir), "--aet", ae_title, *extra]
        else:
            argv = [PYTHON, "-m", "pacskit.testing.pynd_scp", "--port", str(port), "--out", str(out_dir), "--aet", ae_title]
        return argv, dict(os.environ)
    if kind == "storescp":
        argv = [
            dcmtk_tool("storescp"),
            "--aetitle", ae_title,
            "--output-directory", str(out_dir),
            "--filename-extension", ".dcm",
            "--disable-host-lookup",
            *extra,
            str(port),
        ]
        return argv, dcmtk_env()
    raise ValueError(kind)


@contextlib.contextmanager
def receiver(kind: str, out_dir: Path, *, ae_title: str | None = None, extra: Sequence[str] = ()) -> Iterator[Receiver]:
    """Start one receiver process on 127.0.0.1 (a free port), writing into ``out_dir``; stop it on exit."""
    ae_title = ae_title or {"pacskit": "PACSKIT", "pynetdicom": "PYNETDICOM", "storescp": "STORESCP"}[kind]
    out_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv, env = receiver_argv(kind, port, out_dir, ae_title, extra=extra)
    fd, log_name = tempfile.mkstemp(prefix=f"bench-{kind}-", suffix=".log")
    log_path = Path(log_name)
    try:
        with os.fdopen(fd, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        rx = Receiver(kind, ae_title, port, proc, out_dir, log_path)
        try:
            try:
                wait_for_port(LOCALHOST, port, 20, proc=proc)
            except Exception as exc:
                raise RuntimeError(f"{kind} did not start: {exc}\n{rx.log_tail()}") from None
            yield rx
        finally:
            stop_process(proc)
    finally:
        with contextlib.suppress(OSError):
            log_path.unlink()


def _proc_stat(pid: int | str) -> tuple[int, float, float]:
    """(parent pid, user seconds, system seconds) of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        raw = fh.read().decode()
    fields = raw[raw.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    # fields 4, 14 and 15 of proc(5), counting from 1
    return int(fields[1]), int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc/<pid>/stat."""
    _, user, system = _proc_stat(pid)
    return user + system


def tree_cpu(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``root`` and every process below it (a server and its worker
    processes), from /proc/<pid>/stat; 0 for a process that has gone."""
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[float, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            parent, user, system = _proc_stat(name)
        except OSError:
            continue
        children.setdefault(parent, []).append(int(name))
        stats[int(name)] = (user, system)
    user = system = 0.0
    todo = [root]
    while todo:
        pid = todo.pop()
        u, s = stats.get(pid, (0.0, 0.0))
        user, system = user + u, system + s
        todo += children.get(pid, [])
    return user, system


def thread_cpu_ns(pid: int) -> int:
    """Sum of the per-thread run time in nanoseconds (/proc/<pid>/task/*/schedstat): finer than clock ticks."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
    return total


# --------------------------------------------------------------------------- synthetic data


def ensure_series(name: str, count: int, rows: int, cols: int) -> list[Path]:
    """``count`` CT Image Storage instances (16-bit, Explicit VR Little Endian, one series) of
    ``rows``x``cols`` made by :func:`pacskit.testing.synth.make_series` in ``.bench-data/<name>-<count>/``;
    generated once and reused (a ``.complete`` marker guards against half-written caches)."""
    from pacskit.testing.synth import make_series

    folder = BENCH_DATA / f"{name}-{count}"
    marker = folder / ".complete"
    paths = [folder / f"IM{n:06d}.dcm" for n in range(1, count + 1)]
    if marker.exists() and all(p.exists() for p in paths):
        return paths
    if folder.exists():
        shutil.rmtree(folder)
    print(f"generating {count} {rows}x{cols} instances in {folder} ...", file=sys.stderr, flush=True)
    made = make_series(folder, count, rows, cols, bits=16, modality="CT", prefix="IM")
    assert made == paths, "make_series naming changed"
    marker.write_text(f"{count} {rows}x{cols} CT Explicit VR Little Endian\n")
    return paths


def ensure_studies(name: str, count: int, per_study: int, rows: int, cols: int, patients: int = 50) -> list[Path]:
    """``count`` 64x64-like CR-style instances in studies of ``per_study`` instances (one series each),
    the studies' patients cycling over ``patients`` PatientIDs (a CR/DX/MG load: ``per_study`` 1, every
    instance a new study and series, most of their patients known), in ``.bench-data/<name>-<count>-per<per_study>/``;
    generated once and reused, as :func:`ensure_series`."""
    from pacskit.testing.synth import make_series

    folder = BENCH_DATA / f"{name}-{count}-per{per_study}"
    marker = folder / ".complete"
    paths = [folder / f"S{s:05d}-{n:06d}.dcm" for s in range(-(-count // per_study))
             for n in range(1, per_study + 1)][:count]
    if marker.exists() and all(p.exists() for p in paths):
        return paths
    if folder.exists():
        shutil.rmtree(folder)
    print(f"generating {count} {rows}x{cols} instances, {per_study} per study, in {folder} ...", file=sys.stderr, flush=True)
    made: list[Path] = []
    for s in range(-(-count // per_study)):
        made += make_series(folder, min(per_study, count - len(made)), rows, cols, bits=16, modality="CR",
                            patient_id=f"BENCH{s % patients:03d}", prefix=f"S{s:05d}-")
    assert made == paths, "make_series naming changed"
    marker.write_text(f"{count} {rows}x{cols} CR Explicit VR Little Endian, {per_study} per study\n")
    return paths


def count_files(folder: Path, suffix: str = ".dcm") -> tuple[int, int]:
    """(number of files ending in ``suffix``, their total size) directly in ``folder``."""
    n = size = 0
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.endswith(suffix) and entry.is_file():
                n += 1
                size += entry.stat().st_size
    return n, size


# --------------------------------------------------------------------------- baseline pynetdicom SCP


def pynd_scp_main(argv: Sequence[str]) -> int:
    """:mod:`pacskit.testing.pynd_scp` with ``maximum_associations`` raised and no network timeout."""
    import argparse
    import logging

    from pynetdicom import evt

    from pacskit.testing.pynd_scp import build_ae, make_store_handler

    parser = argparse.ArgumentParser(prog="_common.py pynd-scp")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--aet", default="PYNETDICOM")
    parser.add_argument("--max-associations", type=int, default=10, help="pynetdicom's default is 10")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    ae = build_ae(args.aet)
    ae.maximum_associations = args.max_associations
    ae.network_timeout = None  # idle associations must not be dropped while we measure

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        ae.start_server((LOCALHOST, args.port), block=True, evt_handlers=[(evt.EVT_C_STORE, make_store_handler(args.out))])
    except KeyboardInterrupt:
        pass
    finally:
        ae.shutdown()
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "pynd-scp":
        sys.exit(pynd_scp_main(sys.argv[2:]))
    sys.exit("usage: python benchmarks/_common.py pynd-scp --port P --out DIR [--aet AE] [--max-associations N]")


def drop_page_cache() -> bool:
    """Write back and drop the kernel's clean page cache (root only; ``False`` when not allowed), so
    that each run starts with free memory: after a few runs of CT-sized ingest the cache is full of
    earlier runs' files, and every new page then costs a reclaim, which showed as 0.5 to 1.9 ms of
    system CPU per 512 KiB instance for the same server depending on what ran before it."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
    except OSError:
        return False
    return True


def warm(files: list[Path]) -> int:
    """Read every input file once (page cache) and return their total size."""
    total = 0
    for p in files:
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
    return total
