"""The pacskit sender of benchmarks/store_scu.py, alone in its process like DCMTK's storescu.

``python benchmarks/_pacskit_store_scu.py AE PORT FILE...`` = ``StoreScu(...).store_sync(files)``. It
imports nothing but pacskit's client, so the process pays what an application using StoreScu pays
(Python start-up, pacskit, pydicom, pydantic), not the benchmark harness.
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    from pacskit.client import StoreScu

    ae, port, *names = argv
    start = time.perf_counter()
    report = StoreScu(f"{ae}@127.0.0.1:{port}", calling_ae="BENCHSCU").store_sync(names)
    # For the report: the time inside store_sync(), i.e. without starting Python and importing pacskit.
    print(f"in-process {time.perf_counter() - start:.3f}")
    if not report.ok:
        print(report.summary(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
