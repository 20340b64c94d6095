"""Anonymization throughput: pacskit.dicom.anonymize vs dicognito on the same 1,000-instance CT study.

    python benchmarks/anonymize.py [--count 1000] [--size 512] [--dicognito-python PATH]

Both read each Part 10 file, de-identify it and write it to another folder, one process, files in the
page cache (the study is written, then read once, before timing). dicognito runs in the interpreter
given (it need not be installed in pacskit's environment: ``python -m venv /tmp/v && /tmp/v/bin/pip
install dicognito``). Prints instances/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from pacskit.dicom.anonymize import Anonymizer
from pacskit.testing.synth import make_series

_DICOGNITO = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import pydicom
    from dicognito.anonymizer import Anonymizer
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    anonymizer = Anonymizer(seed="benchmark key")
    files = sorted(src.iterdir())
    start = time.perf_counter()
    for f in files:
        with pydicom.dcmread(f) as ds:
            anonymizer.anonymize(ds)
            ds.save_as(dst / f.name)
    print(time.perf_counter() - start)
""")


def _pacskit(src: Path, dst: Path) -> float:
    anonymizer = Anonymizer("benchmark key")
    files = sorted(src.iterdir())
    start = time.perf_counter()
    for f in files:
        anonymizer.anonymize_file(f, dst / f.name)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each CT slice")
    parser.add_argument("--dicognito-python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=2, help="best of N for each tool")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pacskit-anon-bench-") as tmp:
        root = Path(tmp)
        src = root / "study"
        make_series(src, args.count, args.size, args.size, patient_id="BENCH^1", attrs={
            "InstitutionName": "General Hospital", "ReferringPhysicianName": "SMITH^JOHN",
            "StudyDescription": "CT CHEST", "OperatorsName": "DOE^JANE", "AccessionNumber": "A123456",
            "PatientBirthDate": "19700101", "PatientSex": "F", "StationName": "CT01"})
        for f in src.iterdir():
            f.read_bytes()  # into the page cache for both
        ours, theirs = [], []
        for _ in range(args.rounds):
            for name, times in (("pacskit", ours), ("dicognito", theirs)):
                dst = root / name
                shutil.rmtree(dst, ignore_errors=True)
                dst.mkdir()
                if name == "pacskit":
                    times.append(_pacskit(src, dst))
                else:
                    out = subprocess.run([args.dicognito_python, "-c", _DICOGNITO, str(src), str(dst)],
                                         capture_output=True, text=True, check=False)
                    if out.returncode != 0:
                        print(f"dicognito failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                        return 2
                    times.append(float(out.stdout.strip()))
        best_ours, best_theirs = min(ours), min(theirs)
        print(f"{args.count} CT instances {args.size}x{args.size}")
        print(f"pacskit   {args.count / best_ours:8.1f} instances/s  ({best_ours:.2f} s)")
        print(f"dicognito {args.count / best_theirs:8.1f} instances/s  ({best_theirs:.2f} s)")
        print(f"ratio     {best_theirs / best_ours:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
