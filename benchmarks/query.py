"""C-FIND latency: pacskit serve (SQLite, optionally PostgreSQL) vs Orthanc, one association, many queries.

Index sizes: pacskit's index is bulk-loaded (rows only, :mod:`pacskit.testing.bulk`: 10 instances per
study, 2 series of 5) to ``--instances`` (default 1,000,000: 100,000 studies) and, for the comparison,
to Orthanc's size. Orthanc can only be loaded through DICOM: ``--orthanc-instances`` (default 100,000)
synthetic 2x2-pixel files with the *same* attribute values are written once (cached under
``.bench-data/query-files-<n>``) and sent with one DCMTK storescu; its count is checked over REST.

Each server runs as its own process (``python -m pacskit serve`` with default settings except the Query
add-in's result cap, raised to 1,000,000; Orthanc 1.10 from Debian with default settings) and is driven the same way: one
association from pacskit's client in this process, ``--queries`` (50) queries of each kind, each timed
from sending the C-FIND-RQ to receiving the final response (so network and encoding are included,
client start-up is not). Answers are received whole but not decoded into pydicom datasets: that is
the client's cost (~0.1 ms an answer in this process, the same whichever server answered), not the
server's latency, and at a few hundred matches it would dominate both figures. Kinds (all at STUDY level unless said; returns UIDs and a few keys):

1. study by PatientID (one patient, 1 study);
2. study by PatientName wildcard ``SURNAME^G*`` (a few hundred matches at 100,000 studies);
3. study by StudyDate range (7 days);
4. series of a study (SERIES level, StudyInstanceUID);
5. instances of a series (IMAGE level, StudyInstanceUID + SeriesInstanceUID).

Prints p50 / p95 (ms) per kind and server, the matches per query, and pacskit/Orthanc latency ratios at
equal size (target <= 0.5) and the 1M study-level p50s (target < 20 ms). Don't run the full sizes on a
machine others are using; ``--instances 20000 --orthanc-instances 2000`` checks that the script works.

    .venv/bin/python benchmarks/query.py [--instances N] [--orthanc-instances N] [--no-orthanc]
                                         [--postgres-url URL] [--queries N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DATA, LOCALHOST, PYTHON, free_port, stop_process, wait_for_port  # noqa: E402

from pydicom.dataset import Dataset  # noqa: E402

from pacskit.net import CommandField, NetConfig, RequestedContext, connect  # noqa: E402
from pacskit.store import DataStore, FilesystemBlobStore  # noqa: E402
from pacskit.store.query import PATIENT_ROOT_FIND, STUDY_ROOT_FIND  # noqa: E402
from pacskit.testing import bulk  # noqa: E402
from pacskit.testing.peers import count_store_successes, orthanc, run_storescu  # noqa: E402
from pacskit.testing.synth import make_instance  # noqa: E402

KINDS = ("study by PatientID", "study by PatientName*", "study by StudyDate range", "series of a study",
         "instances of a series")
STUDY_KINDS = KINDS[:3]


def shape_for(instances: int) -> bulk.BulkShape:
    return bulk.BulkShape(patients=max(1, instances // 10), studies_per_patient=1, series_per_study=2,
                          instances_per_series=5)


# --------------------------------------------------------------------------- data


def load_pacskit(folder: Path, shape: bulk.BulkShape, db_url: str | None) -> Path:
    """A server folder whose index holds ``shape`` (bulk rows); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    url = db_url or f"sqlite:///{folder.resolve()}/index.db"
    lines = ['ae_title = "PACSKIT"', f"port = {free_port()}", 'data_dir = "."', "[database]", f"url = {url!r}",
             "[logging]", 'level = "WARNING"', "[addins.query]", "max_results = 1000000"]
    (folder / "server.toml").write_text("\n".join(lines) + "\n")
    store = DataStore.open(url, blobs=FilesystemBlobStore(folder / "files"))
    try:
        store.index.run_write(store.index.clear)
        t0 = time.perf_counter()
        bulk.bulk_load(store, shape)
        print(f"  bulk-loaded {shape.instances:,} instances ({shape.studies:,} studies) into "
              f"{store.index.backend} in {time.perf_counter() - t0:.1f} s", flush=True)
        if store.index.backend == "postgresql":
            # What a DBA runs after a bulk load (PostgreSQL docs, "Populating a Database"): planner
            # statistics (without them it plans a hash join over every study for each query), and
            # VACUUM so the visibility map and hint bits are set, as autovacuum leaves them in
            # service; without it the first reads of every row write hint bits.
            with store.index.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
        elif store.index.backend == "sqlite":
            with store.index.engine.begin() as conn:  # committed, like any statistics
                conn.exec_driver_sql("ANALYZE")
    finally:
        store.close()
    return folder


def synthetic_files(shape: bulk.BulkShape) -> Path:
    """Part 10 files with the bulk rows' values (cached): what Orthanc is loaded with."""
    folder = BENCH_DATA / f"query-files-{shape.instances}"
    done = folder.with_name(folder.name + ".complete")  # not inside: storescu +sd would send it and halt
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    for i in range(1, shape.patients + 1):
        j = i  # one study per patient
        for b in range(shape.series_per_study):
            k = (j - 1) * shape.series_per_study + b + 1
            modality = bulk.MODALITIES[(j + b) % len(bulk.MODALITIES)]
            for c in range(shape.instances_per_series):
                n = (k - 1) * shape.instances_per_series + c + 1
                make_instance(
                    folder / f"{j // 1000:04d}" / f"{n}.dcm", rows=2, cols=2, patient_id=bulk.patient_id(i),
                    patient_name=bulk.patient_name(i), study_uid=bulk.study_uid(j), series_uid=bulk.series_uid(k),
                    sop_uid=bulk.instance_uid(n), modality=modality, sop_class_uid=bulk.SOP_CLASS[modality],
                    instance_number=c + 1,
                    attrs={"StudyDate": bulk.study_date(j), "StudyTime": f"{(j * 37) % 24:02d}{(j * 11) % 60:02d}00",
                           "AccessionNumber": f"AN{j:08d}", "SeriesNumber": b + 1},
                )
    done.write_text("ok")
    print(f"  wrote {shape.instances:,} files for Orthanc in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


# --------------------------------------------------------------------------- queries


def queries(shape: bulk.BulkShape, count: int, seed: int = 7) -> dict[str, list[tuple[str, Dataset]]]:
    rnd = random.Random(seed)
    out: dict[str, list[tuple[str, Dataset]]] = {k: [] for k in KINDS}

    def study(**keys: Any) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        for key in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "AccessionNumber",
                    "ModalitiesInStudy", "NumberOfStudyRelatedInstances"):
            setattr(ds, key, "")
        for key, value in keys.items():
            setattr(ds, key, value)
        return ds

    for _ in range(count):
        i = rnd.randint(1, shape.patients)
        out[KINDS[0]].append((STUDY_ROOT_FIND, study(PatientID=bulk.patient_id(i))))
        surname = rnd.choice(bulk.SURNAMES)
        given = rnd.choice(bulk.GIVEN)
        out[KINDS[1]].append((STUDY_ROOT_FIND, study(PatientName=f"{surname}^{given[0]}*")))
        start = bulk.study_date(rnd.randint(1, 9000))
        end = (dt.date(int(start[:4]), int(start[4:6]), int(start[6:])) + dt.timedelta(days=6)).strftime("%Y%m%d")
        out[KINDS[2]].append((STUDY_ROOT_FIND, study(StudyDate=f"{start}-{end}")))
        j = rnd.randint(1, shape.studies)
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = bulk.study_uid(j)
        ds.SeriesInstanceUID = ""
        ds.Modality = ""
        ds.SeriesNumber = ""
        ds.NumberOfSeriesRelatedInstances = ""
        out[KINDS[3]].append((STUDY_ROOT_FIND, ds))
        k = (j - 1) * shape.series_per_study + 1
        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        ds.StudyInstanceUID = bulk.study_uid(j)
        ds.SeriesInstanceUID = bulk.series_uid(k)
        ds.SOPInstanceUID = ""
        ds.SOPClassUID = ""
        ds.InstanceNumber = ""
        out[KINDS[4]].append((STUDY_ROOT_FIND, ds))
    return out


@dataclass
class Timing:
    p50: float
    p95: float
    matches: float


async def drive(port: int, ae: str, plan: dict[str, list[tuple[str, Dataset]]]) -> dict[str, Timing]:
    """All queries over one association; per kind p50/p95 in ms and mean matches."""
    config = NetConfig(dimse_timeout=600)
    assoc = await connect(LOCALHOST, port, called_ae=ae, calling_ae="BENCH", config=config,
                          contexts=[RequestedContext(STUDY_ROOT_FIND), RequestedContext(PATIENT_ROOT_FIND)])
    results: dict[str, Timing] = {}
    async with assoc:
        for kind, items in plan.items():
            times, counts = [], []
            for sop_class, ds in items:
                n = 0
                t0 = time.perf_counter()
                async for rsp, _received in assoc.request(CommandField.C_FIND_RQ, sop_class, ds, Priority=0):
                    status = rsp.status
                    if status in (0xFF00, 0xFF01):
                        n += 1
                    elif status != 0x0000:
                        raise RuntimeError(f"{kind}: C-FIND failed with 0x{status:04X}")
                times.append((time.perf_counter() - t0) * 1000)
                counts.append(n)
            times.sort()
            p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
            results[kind] = Timing(statistics.median(times), p95, statistics.mean(counts))
    return results


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def pacskit_server(folder: Path) -> Iterator[int]:
    import tomllib

    port = tomllib.loads((folder / "server.toml").read_text())["port"]
    log_path = folder / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([PYTHON, "-m", "pacskit", "serve", "--config", str(folder / "server.toml")],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for_port(LOCALHOST, port, 120, proc=proc)
        yield port
    finally:
        stop_process(proc, timeout=30)


def run_pacskit(label: str, folder: Path, plan: dict[str, list[tuple[str, Dataset]]]) -> dict[str, Timing]:
    with pacskit_server(folder) as port:
        asyncio.run(drive(port, "PACSKIT", {k: v[:3] for k, v in plan.items()}))  # warm caches
        result = asyncio.run(drive(port, "PACSKIT", plan))
    print(f"  {label}: done", flush=True)
    return result


def run_orthanc(work: Path, files: Path, shape: bulk.BulkShape, plan: dict[str, list[tuple[str, Dataset]]]
                ) -> dict[str, Timing]:
    with orthanc(work, startup_timeout=120) as peer:
        t0 = time.perf_counter()
        out = run_storescu(LOCALHOST, peer.dicom_port, files, called=peer.ae_title, timeout=None)
        stored = count_store_successes(out)
        count = peer.instance_count() if hasattr(peer, "instance_count") else stored
        print(f"  Orthanc: stored {stored:,} instances in {time.perf_counter() - t0:.0f} s (index holds {count:,})",
              flush=True)
        if count != shape.instances:
            raise RuntimeError(f"Orthanc holds {count} instances, expected {shape.instances}")
        asyncio.run(drive(peer.dicom_port, peer.ae_title, {k: v[:3] for k, v in plan.items()}))
        return asyncio.run(drive(peer.dicom_port, peer.ae_title, plan))


# --------------------------------------------------------------------------- main


def table(title: str, results: dict[str, dict[str, Timing]]) -> None:
    print(f"\n{title}")
    names = list(results)
    print(f"  {'query':28s}" + "".join(f"{n:>26s}" for n in names))
    print(f"  {'':28s}" + "".join(f"{'p50 / p95 ms (matches)':>26s}" for _ in names))
    for kind in KINDS:
        row = f"  {kind:28s}"
        for n in names:
            t = results[n][kind]
            row += f"{f'{t.p50:7.1f} / {t.p95:7.1f} ({t.matches:.0f})':>26s}"
        print(row)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--orthanc-instances", type=int, default=100_000)
    parser.add_argument("--no-orthanc", action="store_true")
    parser.add_argument("--postgres-url", default=None, help="also run pacskit on this (empty, scratch) database")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--work-root", type=Path, default=BENCH_DATA / "query")
    args = parser.parse_args()

    big = shape_for(args.instances)
    small = shape_for(args.orthanc_instances)
    args.work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.work_root))
    try:
        print(f"pacskit at {big.instances:,} instances", flush=True)
        plan_big = queries(big, args.queries)
        large: dict[str, dict[str, Timing]] = {}
        large["pacskit SQLite"] = run_pacskit("SQLite", load_pacskit(work / "sqlite-big", big, None), plan_big)
        if args.postgres_url:
            large["pacskit PostgreSQL"] = run_pacskit(
                "PostgreSQL", load_pacskit(work / "pg-big", big, args.postgres_url), plan_big)
        table(f"{big.instances:,} instances ({big.studies:,} studies), {args.queries} queries per kind, "
              "one association", large)
        for name, res in large.items():
            worst = max(res[k].p50 for k in STUDY_KINDS)
            verdict = "meets" if worst < 20 else "misses"
            print(f"  {name}: worst study-level p50 {worst:.1f} ms ({verdict} the < 20 ms target)")

        if not args.no_orthanc:
            print(f"\nOrthanc comparison at {small.instances:,} instances", flush=True)
            plan_small = queries(small, args.queries)
            equal: dict[str, dict[str, Timing]] = {}
            equal["pacskit SQLite"] = run_pacskit("SQLite", load_pacskit(work / "sqlite-small", small, None), plan_small)
            files = synthetic_files(small)
            equal["Orthanc"] = run_orthanc(work / "orthanc", files, small, plan_small)
            table(f"{small.instances:,} instances ({small.studies:,} studies), same data, same queries", equal)
            print("\n  pacskit / Orthanc latency (p50; target <= 0.5):")
            for kind in KINDS:
                ratio = equal["pacskit SQLite"][kind].p50 / equal["Orthanc"][kind].p50
                same = equal["pacskit SQLite"][kind].matches == equal["Orthanc"][kind].matches
                print(f"    {kind:28s} {ratio:5.2f}x{'' if same else '  (match counts differ!)'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
