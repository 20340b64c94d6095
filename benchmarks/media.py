"""Media creation speed and memory: ``pacskit media build`` of a 1,000-instance CT study (512x512 16-bit,
~520 MB) into an ISO image, against ``cp -r`` of the same files plus ``xorriso -as mkisofs -J -R`` of
the copy (what a script around standard tools would do).

The study is loaded into a fresh server folder first (not timed). Then, ``--repeat`` (3) times, in
turn:

(a) baseline: ``cp -r`` of the study's files (the synthetic series, byte-identical to the stored
    blobs) into a scratch folder, then ``xorriso -as mkisofs -J -R -V DICOM -o base.iso`` of it;
(b) pacskit: a process that opens the store, records its RSS (the idle level), runs
    :func:`pacskit.media.build_media` (DICOMDIR, ISO 9660 + Joliet + Rock Ridge, fsync), and reports
    its wall time and the peak RSS (VmHWM) above the idle level;
(c) the CLI: ``python -m pacskit media build STUDY --out disc.iso`` wall time (process start and
    imports included).

The page cache is warm for all three (the files were just written and read). Medians are printed.

    .venv/bin/python benchmarks/media.py [--count 1000] [--rows 512] [--repeat 3]

Targets (issue 20): (b) <= 2x (a); peak RSS growth < 64 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PYTHON, REPO_ROOT, ensure_series  # noqa: E402

INNER = r"""
import json, os, sys, time
from pacskit.config.settings import load_settings
from pacskit.server.server import open_store
from pacskit.media import MediaOptions, build_media, select_sources

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0

folder, study, out = sys.argv[1:4]
store = open_store(load_settings(folder), recover=False)
sources, missing = select_sources(store, studies=[study])
assert not missing
idle = status("VmRSS:")
t0 = time.perf_counter()
result = build_media(sources, out, MediaOptions(label="BENCH"))
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "idle": idle, "peak": status("VmHWM:"), "instances": result.instances,
                  "bytes": os.path.getsize(out)}))
"""


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work-root", type=Path, default=None)
    args = parser.parse_args()

    files = ensure_series("CT", args.count, args.rows, args.rows)
    series_dir = files[0].parent
    total = sum(p.stat().st_size for p in files)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "src"))
    work = Path(tempfile.mkdtemp(prefix="pacskit-media-bench-", dir=args.work_root))
    try:
        folder = work / "pacs"
        folder.mkdir()
        (folder / "server.toml").write_text('ae_title = "BENCH"\nport = 0\ndata_dir = "data"\n')
        loader = (
            "import shutil, sys, tempfile, os\n"
            "from pydicom import dcmread\n"
            "from pacskit.config.settings import load_settings\n"
            "from pacskit.server.server import open_store\n"
            "store = open_store(load_settings(sys.argv[1]))\n"
            "study = None\n"
            "for p in sys.argv[2:]:\n"
            "    tmp = os.path.join(store.temp_dir, os.path.basename(p))\n"
            "    shutil.copyfile(p, tmp)\n"
            "    store.ingest(tmp, source_ae='BENCH')\n"
            "print(dcmread(sys.argv[2], stop_before_pixels=True).StudyInstanceUID)\n"
        )
        study = subprocess.run([PYTHON, "-c", loader, str(folder)] + [str(p) for p in files], check=True,
                               capture_output=True, text=True, env=env).stdout.strip()
        print(f"study {study}: {len(files)} instances, {total / 1e6:.0f} MB")
        base, ours, cli, growth = [], [], [], []
        for n in range(args.repeat):
            copy, base_iso = work / "copy", work / "base.iso"
            shutil.rmtree(copy, ignore_errors=True)
            base_iso.unlink(missing_ok=True)
            t_cp = timed(["cp", "-r", str(series_dir), str(copy)])
            t_x = timed(["xorriso", "-as", "mkisofs", "-J", "-R", "-V", "DICOM", "-o", str(base_iso), str(copy)])
            base.append(t_cp + t_x)
            out = work / "disc.iso"
            out.unlink(missing_ok=True)
            res = json.loads(subprocess.run([PYTHON, "-c", INNER, str(folder), study, str(out)], check=True,
                                            capture_output=True, text=True, env=env).stdout)
            ours.append(res["wall"])
            growth.append((res["peak"] - res["idle"]) / 2**20)
            out.unlink()
            cli.append(timed([PYTHON, "-m", "pacskit", "media", "build", study, "--out", str(out), "--data-dir",
                              str(folder)], env=env))
            print(f"run {n + 1}: cp -r {t_cp:.2f} s + xorriso {t_x:.2f} s = {t_cp + t_x:.2f} s | "
                  f"build_media {res['wall']:.2f} s, peak RSS +{growth[-1]:.1f} MB | CLI {cli[-1]:.2f} s | "
                  f"ISO {res['bytes'] / 1e6:.0f} MB vs {base_iso.stat().st_size / 1e6:.0f} MB")
        b, o, c = statistics.median(base), statistics.median(ours), statistics.median(cli)
        print(f"median: baseline {b:.2f} s, pacskit {o:.2f} s ({o / b:.2f}x), CLI {c:.2f} s ({c / b:.2f}x), "
              f"peak RSS growth {max(growth):.1f} MB (max)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
