"""The disk's limit for durable file writes: how many new files of S bytes per second can be made
durable, by 1 and by N concurrent writers, with nothing else in the way (no network, no DICOM, no index).

Each writer, for every file: writes S bytes to a temp file in ``<root>/tmp`` (one ``write``),
renames it into one of 256 bucket folders, then makes it durable the way a server must before
answering (``--mode``):

* ``full``: ``fdatasync`` of the file, then ``fsync`` of its folder (the name) -- what pacskit does for
  a blob too large for its ingest log (CT-sized instances: blobs.py ``_flush_direct``);
* ``file``: ``fdatasync`` of the file only (what Orthanc does: its file, not its folder);
* ``none``: no flush (the page cache's speed: the upper bound of what the CPU and the file system
  give without durability).

Writers are threads (``write``, ``fdatasync`` and ``fsync`` release the GIL). The same run also reports
the machine's load average, since other work on the disk changes the figure.

    .venv/bin/python benchmarks/disk_limit.py [--size 524288] [--files 300] [--writers 1,8]
        [--mode full,file] [--root .bench-data/disk]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DATA  # noqa: E402


def run(root: Path, size: int, files: int, writers: int, mode: str) -> float:
    """Files per second of ``writers`` threads making ``files`` new files of ``size`` bytes durable."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "tmp").mkdir(parents=True)
    for b in range(256):
        (root / f"{b:02x}").mkdir()
    os.sync()
    payload = os.urandom(size)
    counter = iter(range(files))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                tmp = root / "tmp" / f"{w}-{n}.part"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, payload)
                    dest = root / f"{n % 256:02x}" / f"{n}.dcm"
                    os.rename(tmp, dest)
                    if mode in ("full", "file"):
                        os.fdatasync(fd)
                finally:
                    os.close(fd)
                if mode == "full":
                    dfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fsync(dfd)
                    finally:
                        os.close(dfd)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    shutil.rmtree(root, ignore_errors=True)
    return files / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512 * 1024)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--writers", default="1,8")
    parser.add_argument("--mode", default="full,file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", type=Path, default=BENCH_DATA / "disk")
    args = parser.parse_args()
    root = args.root.resolve() / f"run-{os.getpid()}"
    try:
        for r in range(args.rounds):
            for mode in args.mode.split(","):
                for writers in (int(w) for w in args.writers.split(",")):
                    load = os.getloadavg()[0]
                    rate = run(root, args.size, args.files, writers, mode)
                    print(f"round {r} {mode:<4} x{writers}: {rate:7.1f} files/s, {rate * args.size / 1e6:6.1f} MB/s "
                          f"({args.size} bytes each, load {load:.2f})", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
