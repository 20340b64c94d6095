"""The workstation's study search: first page of a 10,000-study archive (target <= 300 ms), pacskit's
``GET /api/studies`` vs Orthanc's ``POST /tools/find`` (what Orthanc Explorer 2 pages with) in the
same run.

pacskit: a workstation server (``pacskit.testing.workstation``, in this process, SQLite) whose index
is bulk-loaded (:mod:`pacskit.testing.bulk`, rows only) to ``--studies`` studies; Orthanc 1.10 from
Debian loaded through DICOM with one 2x2-pixel instance per study carrying the same values (files
cached under ``.bench-data/ws-search-files-<n>``). Each request is timed on one keep-alive HTTP
connection from sending to the last byte of the answer; ``--requests`` (30) of each kind, p50 / p95.

Kinds:

1. first page: 50 studies, newest first (pacskit: ``sort=StudyDate&order=desc``, with the total);
   Orthanc: ``{"Level": "Study", "Query": {}, "Limit": 50, "Expand": true}`` (no sort, no total:
   Orthanc 1.10 cannot do either, so it does less work for its answer);
2. patient name ``SMITH*``, first page (both);
3. page 100 sorted by name (pacskit ``sort=PatientName&offset=4950``; Orthanc has no equivalent).

Prints the figures and the pacskit/Orthanc ratios.

    .venv/bin/python benchmarks/workstation_search.py [--studies 10000] [--requests 30] [--no-orthanc]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DATA  # noqa: E402

import httpx  # noqa: E402

from pacskit.config.settings import load_settings  # noqa: E402
from pacskit.server.server import open_store  # noqa: E402
from pacskit.testing import bulk  # noqa: E402
from pacskit.testing.peers import count_store_successes, orthanc, run_storescu  # noqa: E402
from pacskit.testing.server import running_server  # noqa: E402
from pacskit.testing.synth import make_instance  # noqa: E402
from pacskit.testing.workstation import ADDINS, USERS, write_server_folder  # noqa: E402

TARGET_MS = 300.0


def timed(call: Callable[[], Any], count: int) -> tuple[float, float, Any]:
    call()  # warm-up (connection, caches)
    times = []
    result = None
    for _ in range(count):
        t0 = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)], result


def pacskit_figures(tmp: Path, shape: bulk.BulkShape, count: int) -> dict[str, tuple[float, float, int]]:
    folder = write_server_folder(tmp / "pacskit")
    store = open_store(load_settings(folder))
    try:
        t0 = time.perf_counter()
        bulk.bulk_load(store, shape)
        print(f"  pacskit index: {shape.studies:,} studies bulk-loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        store.close()
    out = {}
    with running_server(folder, addin_classes=ADDINS, name="bench-workstation") as server:
        url = f"http://127.0.0.1:{server.http.port}"
        with httpx.Client(base_url=url, timeout=60) as client:
            username, password = USERS["viewer"]
            client.post("/api/session", json={"username": username, "password": password}).raise_for_status()
            kinds = {
                "first page": {"sort": "StudyDate", "order": "desc", "limit": 50},
                "name SMITH*": {"PatientName": "SMITH*", "sort": "StudyDate", "order": "desc", "limit": 50},
                "page 100 by name": {"sort": "PatientName", "order": "asc", "limit": 50, "offset": 4950},
            }
            for kind, params in kinds.items():
                def call(params: dict[str, Any] = params) -> Any:
                    response = client.get("/api/studies", params=params)
                    response.raise_for_status()
                    return response.json()
                p50, p95, page = timed(call, count)
                out[kind] = (p50, p95, len(page["items"]))
                print(f"  pacskit  {kind:<18} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  ({len(page['items'])} of "
                      f"{page['total']:,})", flush=True)
    return out


def orthanc_files(shape: bulk.BulkShape) -> Path:
    folder = BENCH_DATA / f"ws-search-files-{shape.studies}"
    done = folder.with_name(folder.name + ".complete")
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    for j in range(1, shape.studies + 1):
        modality = bulk.MODALITIES[j % len(bulk.MODALITIES)]
        make_instance(folder / f"{j // 1000:04d}" / f"{j}.dcm", rows=2, cols=2, patient_id=bulk.patient_id(j),
                      patient_name=bulk.patient_name(j), study_uid=bulk.study_uid(j), sop_uid=bulk.instance_uid(j),
                      modality=modality, sop_class_uid=bulk.SOP_CLASS[modality],
                      attrs={"StudyDate": bulk.study_date(j), "AccessionNumber": f"AN{j:08d}",
                             "StudyDescription": f"Bulk study {j % 50}"})
    done.write_text("ok")
    print(f"  wrote {shape.studies:,} files for Orthanc in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def orthanc_figures(tmp: Path, shape: bulk.BulkShape, count: int) -> dict[str, tuple[float, float, int]]:
    files = orthanc_files(shape)
    out = {}
    with orthanc(tmp / "orthanc") as peer:
        t0 = time.perf_counter()
        sent = run_storescu("127.0.0.1", peer.dicom_port, files, called="ORTHANC")
        stored = peer.instance_count()
        print(f"  Orthanc: {stored:,} instances loaded in {time.perf_counter() - t0:.0f} s "
              f"({count_store_successes(sent):,} C-STORE successes)", flush=True)
        with httpx.Client(base_url=peer.url, timeout=60) as client:
            kinds = {
                "first page": {"Level": "Study", "Query": {}, "Limit": 50, "Expand": True},
                "name SMITH*": {"Level": "Study", "Query": {"PatientName": "SMITH*"}, "Limit": 50, "Expand": True},
            }
            for kind, body in kinds.items():
                def call(body: dict[str, Any] = body) -> Any:
                    response = client.post("/tools/find", json=body)
                    response.raise_for_status()
                    return response.json()
                p50, p95, page = timed(call, count)
                out[kind] = (p50, p95, len(page))
                print(f"  Orthanc  {kind:<18} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  ({len(page)} answers)", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--no-orthanc", action="store_true")
    args = parser.parse_args()
    shape = bulk.BulkShape(patients=args.studies, studies_per_patient=1, series_per_study=2, instances_per_series=5)
    with tempfile.TemporaryDirectory(prefix="pacskit-ws-bench-") as tmp_name:
        tmp = Path(tmp_name)
        print(f"workstation study search, {shape.studies:,} studies, {args.requests} requests per kind", flush=True)
        ours = pacskit_figures(tmp, shape, args.requests)
        theirs = {} if args.no_orthanc else orthanc_figures(tmp, shape, args.requests)
    first = ours["first page"][0]
    print(f"first page p50 {first:.1f} ms: {'meets' if first <= TARGET_MS else 'MISSES'} the {TARGET_MS:.0f} ms target")
    for kind, (p50, _, _) in theirs.items():
        print(f"ratio pacskit/Orthanc {kind}: {ours[kind][0] / p50:.2f} (p50)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
