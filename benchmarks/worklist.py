"""Modality Worklist C-FIND latency: pacskit serve (SQLite) vs DCMTK wlmscpfs over the same entries.

``--entries`` (default 10,000) scheduled steps over 50 stations, 6 modalities and 30 days are imported
into pacskit (``WorklistStore.add_many``, timed) and written as ``.wl`` files for wlmscpfs (its
database is a folder it reads on every query). Each server runs as its own process and is driven over
one association from pacskit's engine, ``--queries`` (30) queries per kind, each timed from the
C-FIND-RQ to the final response:

1. a modality's daily worklist: ScheduledStationAETitle + ScheduledProcedureStepStartDate (~7 matches);
2. by PatientID (1 match);
3. one modality over a week (date range, ~230 matches at 10,000 entries).

Prints p50 / p95 (ms) and mean matches per kind and server.

    .venv/bin/python benchmarks/worklist.py [--entries N] [--queries N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import LOCALHOST, PYTHON, free_port, stop_process, wait_for_port  # noqa: E402

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from pacskit.client import apply_keys  # noqa: E402
from pacskit.net import NetConfig, RequestedContext, connect  # noqa: E402
from pacskit.store import Index  # noqa: E402
from pacskit.store.workflow.worklist import MODALITY_WORKLIST_FIND, WorklistStore, entry_from_json  # noqa: E402
from pacskit.testing.peers import dcmtk_env, dcmtk_tool  # noqa: E402

SPS = "ScheduledProcedureStepSequence"
MODALITIES = ("CT", "MR", "US", "CR", "DX", "NM")
DAY0 = dt.date(2026, 12, 1)


def entries(n: int, rng: random.Random) -> list[dict]:
    out = []
    for i in range(n):
        day = DAY0 + dt.timedelta(days=rng.randrange(30))
        station = rng.randrange(50)
        out.append({
            "PatientName": f"PATIENT{i % 3000:04d}^TEST", "PatientID": f"P{i:06d}", "AccessionNumber": f"A{i:07d}",
            "StudyInstanceUID": generate_uid(), "RequestedProcedureID": f"RP{i}", "RequestedProcedureDescription": "exam",
            SPS: [{"Modality": MODALITIES[station % 6], "ScheduledStationAETitle": f"ST{station:02d}",
                   "ScheduledProcedureStepStartDate": day.strftime("%Y%m%d"),
                   "ScheduledProcedureStepStartTime": f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}00",
                   "ScheduledProcedureStepID": f"S{i}", "ScheduledProcedureStepDescription": "step",
                   "ScheduledPerformingPhysicianName": "DOC^TOR"}],
        })
    return out


def plan(n: int, queries: int, rng: random.Random) -> dict[str, list[Dataset]]:
    returns = {"PatientName": "", "PatientID": "", "AccessionNumber": "", "StudyInstanceUID": "",
               f"{SPS}[0].Modality": "", f"{SPS}[0].ScheduledStationAETitle": "",
               f"{SPS}[0].ScheduledProcedureStepStartDate": "", f"{SPS}[0].ScheduledProcedureStepStartTime": "",
               f"{SPS}[0].ScheduledProcedureStepID": ""}

    def q(**keys: str) -> Dataset:
        ds = Dataset()
        apply_keys(ds, returns)
        apply_keys(ds, keys)
        return ds

    def day(offset: int) -> str:
        return (DAY0 + dt.timedelta(days=offset)).strftime("%Y%m%d")

    kinds: dict[str, list[Dataset]] = {"station + day": [], "patient id": [], "modality + week": []}
    for _ in range(queries):
        kinds["station + day"].append(q(**{f"{SPS}[0].ScheduledStationAETitle": f"ST{rng.randrange(50):02d}",
                                           f"{SPS}[0].ScheduledProcedureStepStartDate": day(rng.randrange(30))}))
        kinds["patient id"].append(q(PatientID=f"P{rng.randrange(n):06d}"))
        start = rng.randrange(23)
        kinds["modality + week"].append(q(**{f"{SPS}[0].Modality": rng.choice(MODALITIES),
                                             f"{SPS}[0].ScheduledProcedureStepStartDate": f"{day(start)}-{day(start + 6)}"}))
    return kinds


async def drive(port: int, ae: str, kinds: dict[str, list[Dataset]]) -> dict[str, tuple[float, float, float]]:
    assoc = await connect(LOCALHOST, port, called_ae=ae, calling_ae="BENCH", config=NetConfig(dimse_timeout=600),
                          contexts=[RequestedContext(MODALITY_WORKLIST_FIND)])
    results = {}
    async with assoc:
        for kind, items in kinds.items():
            times, counts = [], []
            for ds in items:
                n = 0
                t0 = time.perf_counter()
                async for status, _ in assoc.find(MODALITY_WORKLIST_FIND, ds):
                    if status in (0xFF00, 0xFF01):
                        n += 1
                    elif status != 0x0000:
                        raise RuntimeError(f"{kind}: 0x{status:04X}")
                times.append((time.perf_counter() - t0) * 1000)
                counts.append(n)
            times.sort()
            results[kind] = (statistics.median(times), times[int(round(0.95 * (len(times) - 1)))], statistics.mean(counts))
    return results


@contextlib.contextmanager
def process(argv: list[str], port: int, log: Path, env: dict | None = None) -> Iterator[None]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        wait_for_port(LOCALHOST, port, 60, proc=proc)
        yield
    finally:
        stop_process(proc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=30)
    args = parser.parse_args()
    rng = random.Random(8)
    data = entries(args.entries, rng)
    kinds = plan(args.entries, args.queries, rng)
    with tempfile.TemporaryDirectory(prefix="wl-bench-") as tmp:
        work = Path(tmp)
        folder = work / "pacs"
        folder.mkdir()
        port = free_port()
        (folder / "server.toml").write_text(f'ae_title = "PACSKIT"\nport = {port}\ndata_dir = "data"\n'
                                            "[addins.worklist]\nmax_results = 100000\n")
        (folder / "data").mkdir()
        index = Index.open(f"sqlite:///{folder}/data/index.db")
        index.migrate()
        t0 = time.perf_counter()
        WorklistStore(index).add_many([entry_from_json(e) for e in data])
        imported = time.perf_counter() - t0
        index.close()
        print(f"import of {args.entries} entries into pacskit: {imported:.1f} s ({args.entries / imported:.0f}/s)")
        wl_db = work / "wlm" / "WLM"
        wl_db.mkdir(parents=True)
        (wl_db / "lockfile").write_bytes(b"")
        for n, e in enumerate(data):
            ds = entry_from_json(e)
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.save_as(wl_db / f"e{n:06d}.wl", enforce_file_format=False)
        results = {}
        with process([PYTHON, "-m", "pacskit", "serve", "--config", str(folder / "server.toml")], port, work / "pacs.log"):
            asyncio.run(drive(port, "PACSKIT", {k: v[:3] for k, v in kinds.items()}))
            results["pacskit"] = asyncio.run(drive(port, "PACSKIT", kinds))
        wport = free_port()
        with process([dcmtk_tool("wlmscpfs"), "-dfp", str(work / "wlm"), str(wport)], wport, work / "wlm.log",
                     env=dcmtk_env()):
            results["wlmscpfs"] = asyncio.run(drive(wport, "WLM", kinds))
    print(f"{'kind':<18} {'server':<9} {'p50 ms':>8} {'p95 ms':>8} {'matches':>8}")
    for kind in kinds:
        for server, r in results.items():
            print(f"{kind:<18} {server:<9} {r[kind][0]:8.1f} {r[kind][1]:8.1f} {r[kind][2]:8.1f}")


if __name__ == "__main__":
    main()
