"""Scale-out: ingest and retrieve through HAProxy with 1, 2 and 3 pacskit nodes on one PostgreSQL + SeaweedFS,
against two Orthancs on one PostgreSQL (orthanc-postgresql index plugin), and the PostgreSQL commit rate.

Set-up, once per run: a SeaweedFS cluster (``weed server`` + a second volume server, replication 001)
and the local PostgreSQL server (``PACSKIT_TEST_POSTGRES_URL``). For each configuration, a fresh
database and a fresh bucket prefix (pacskit) or storage folder (Orthanc), fresh server processes and
HAProxy in front (DICOM in TCP mode, ``leastconn``; HTTP round robin):

* **ingest**: ``--small`` 64x64 CT instances (the benchmarks' cache) dealt round-robin to
  ``--associations`` DCMTK storescu processes started at once through HAProxy; wall time from the first
  spawn to the last exit. A run counts only if every storescu reports Success for all its files and the
  servers then hold exactly that many instances.
* **retrieve**: every instance once by WADO-RS (``/studies/../series/../instances/..``, Part 10 as
  stored), ``--associations`` HTTP clients in parallel through HAProxy.
* **where the time goes**: CPU seconds per instance of the servers (pacskit nodes / Orthancs), of the
  PostgreSQL backends serving the run's database, of SeaweedFS, of HAProxy and of the storescu clients
  (``/proc/<pid>/stat``; the machine has 2 cores, so N nodes cannot scale here: the model in
  docs/deployment.md says what N machines would do).
* **pgbench**: one-row INSERT transactions (each a commit: one WAL flush), 1 and 8 clients, and the S3
  PUT latency of one instance-sized object (SeaweedFS, 4 threads).

The instances are one series of one study (``_common.ensure_series``: after its first instance, every
one takes the PostgreSQL lane's known-series statement), or with ``--per-study N`` studies of N
instances, one series each, over 50 patients (``--per-study 1``: a CR/DX/MG-like load, every instance
the first of its study).

SeaweedFS runs with ``--weed``'s settings (``benchmarks/seaweedfs_put.py``'s names): by default
``gomaxprocs1``, each weed process with ``GOMAXPROCS=1``: at the few hundred PUTs per second of this
machine Go's idle processors spin for work between requests, and one fewer costs SeaweedFS 18% less
CPU per PUT (``node_cpu.py --weed default --weed gomaxprocs1``); ``--weed default`` as before.

Target (issue 23): ingest through 2 pacskit nodes >= 1.5x two Orthancs on one PostgreSQL. pacskit's
files are in the object store; the Orthancs' (``--orthanc-storage``, comma-separated, each run every
round; default all but ``seaweedfs``):

* ``folder``: a local folder both Orthancs share. Only possible with both on one machine, and on this
  one the object store's CPU (SeaweedFS, ~2 ms per PUT) is pacskit's alone.
* ``s3``: the same SeaweedFS bucket through its S3 gateway, Orthanc's Python plugin
  (``orthanc-python``) running :mod:`pacskit.testing.orthanc_s3_storage` as its storage area with the
  S3 client pacskit uses; Orthanc's own S3 plugin (orthanc-object-storage) is not packaged in Debian.
  Such a storage area cannot read byte ranges, so Orthanc also stores each instance's "DICOM until
  pixel data": two PUTs per instance.
* ``s3-1put``: as ``s3`` with that second attachment in a local folder: one PUT per instance, the
  object store's load under orthanc-object-storage (which reads ranges). The like-for-like figure.
* ``seaweedfs``: the SeaweedFS filer mounted with ``weed mount`` (FUSE), which acknowledges writes
  before they reach the volume servers (favours Orthanc) and costs SeaweedFS ~8 ms per instance.

    ./run bench scaleout [--small 600] [--associations 4] [--nodes 1,2,3] [--repeat 3] [--orthanc-storage folder,s3,s3-1put]
        [--per-study 1]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_seconds, dcmtk_env, dcmtk_tool, ensure_series, ensure_studies, warm  # noqa: E402
from seaweedfs_put import SETTINGS as WEED_SETTINGS  # noqa: E402

from pacskit.testing.cluster import POSTGRES_URL, fresh_postgres_database, pacs_nodes  # noqa: E402
from pacskit.testing.haproxy import Backend, haproxy  # noqa: E402
from pacskit.testing.peers import orthanc  # noqa: E402
from pacskit.testing.seaweedfs import seaweedfs_cluster  # noqa: E402

AE = "PACS"
ORTHANC_INDEX_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
ORTHANC_DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Phase:
    """One timed phase: wall seconds and CPU seconds per component."""

    instances: int
    wall: float
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.instances / self.wall

    def cpu_ms_per_instance(self) -> str:
        return ", ".join(f"{k} {1000 * v / self.instances:.1f}" for k, v in self.cpu.items())


# --------------------------------------------------------------------------- CPU accounting


def _pg_backends(database: str) -> dict[int, float]:
    """pid -> CPU seconds of the PostgreSQL backends connected to ``database`` (as root, /proc)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as conn:
            pids = [r[0] for r in conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :d"),
                                               {"d": database})]
    finally:
        engine.dispose()
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            out[pid] = cpu_seconds(pid)
    return out


class CpuMeter:
    """CPU seconds of named groups of processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, groups: dict[str, Sequence[int]], database: str | None) -> None:
        self.groups = groups
        self.database = database
        self.before: dict[str, float] = {}
        self.pg_before: dict[int, float] = {}

    def _now(self) -> dict[str, float]:
        out = {}
        for name, pids in self.groups.items():
            total = 0.0
            for pid in pids:
                with contextlib.suppress(OSError):
                    total += cpu_seconds(pid)
            out[name] = total
        return out

    def start(self) -> None:
        self.before = self._now()
        if self.database:
            self.pg_before = _pg_backends(self.database)

    def stop(self) -> dict[str, float]:
        after = self._now()
        out = {name: after[name] - self.before[name] for name in self.groups}
        if self.database:
            pg_after = _pg_backends(self.database)
            out["postgres"] = sum(cpu - self.pg_before.get(pid, 0.0) for pid, cpu in pg_after.items())
        return out


# --------------------------------------------------------------------------- load


def _ingest(port: int, files: list[Path], associations: int, called: str) -> tuple[float, int]:
    """(wall seconds, successes): ``associations`` storescu processes started at once."""
    lists = [files[i::associations] for i in range(associations)]
    with tempfile.TemporaryDirectory(prefix="pacskit-bench-lists-") as tmp:
        procs = []
        start = time.perf_counter()
        for i, part in enumerate(lists):
            folder = Path(tmp) / f"a{i}"
            folder.mkdir()
            for n, p in enumerate(part):
                (folder / f"{n:06d}.dcm").symlink_to(p)
            procs.append(subprocess.Popen(
                [dcmtk_tool("storescu"), "-v", "-aet", "STORESCU", "-aec", called, "+sd", "+r", "127.0.0.1",
                 str(port), str(folder)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dcmtk_env()))
        outputs = [proc.communicate()[0].decode(errors="replace") for proc in procs]
        wall = time.perf_counter() - start
    return wall, sum(out.count("Received Store Response (Success)") for out in outputs)


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _uids(files: list[Path]) -> list[tuple[str, str, str]]:
    from pydicom import dcmread

    out = []
    for p in files:
        ds = dcmread(p, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        out.append((str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
    return out


def _retrieve(http_port: int, uids: list[tuple[str, str, str]], clients: int) -> tuple[float, int, int]:
    """(wall seconds, instances fetched, bytes): every instance once by WADO-RS, ``clients`` in parallel."""
    import httpx

    def fetch(part: list[tuple[str, str, str]]) -> tuple[int, int]:
        got = size = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{http_port}/dicom-web", timeout=60) as client:
            for study, series, sop in part:
                r = client.get(f"/studies/{study}/series/{series}/instances/{sop}", headers={"Accept": ACCEPT_DICOM})
                if r.status_code == 200 and len(r.content) > 132:
                    got += 1
                    size += len(r.content)
        return got, size

    parts = [uids[i::clients] for i in range(clients)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(fetch, parts))
    return time.perf_counter() - start, sum(r[0] for r in results), sum(r[1] for r in results)


def _count_pacskit(database_url: str) -> int:
    from sqlalchemy import create_engine, text

    from pacskit.store.engine import make_url

    engine = create_engine(make_url(database_url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM instances")).scalar_one())
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- configurations


def _measure(label: str, lb: Any, meter: CpuMeter, files: list[Path], uids: list[tuple[str, str, str]],
             associations: int, stored: Callable[[], int]) -> tuple[Phase, Phase]:
    """Ingest ``files`` through the load balancer (DCMTK storescu), then retrieve them (WADO-RS), the
    CPU of each process group metered per phase; a run that lost anything stops the benchmark."""
    meter.start()
    children = _children_cpu()
    wall, ok = _ingest(lb.dicom_port, files, associations, AE)
    cpu = meter.stop()
    cpu["storescu"] = _children_cpu() - children
    count = stored()
    if ok != len(files) or count != len(files):
        raise SystemExit(f"{label}: {ok} successes, {count} stored of {len(files)}")
    ingest = Phase(len(files), wall, cpu)
    meter.start()
    wall, got, _size = _retrieve(lb.http_port, uids, associations)
    cpu = meter.stop()
    if got != len(uids):
        raise SystemExit(f"{label}: WADO-RS returned {got} of {len(uids)}")
    return ingest, Phase(got, wall, cpu)


def run_pacskit(weed: Any, n: int, files: list[Path], uids: list[tuple[str, str, str]], associations: int,
                work: Path) -> tuple[Phase, Phase]:
    prefix = f"bench-{n}-{os.getpid()}-{int(time.time())}/"
    with fresh_postgres_database(POSTGRES_URL, prefix="pacskit_bench") as url:
        database = url.rsplit("/", 1)[1].split("?", 1)[0]
        names = ["a", "b", "c", "d", "e"][:n]
        folder = work / f"pacskit-{n}"
        with pacs_nodes(folder, names, ae_title=AE, database_url=url, s3_options=weed.store_options("bench", prefix),
                        lease_seconds=30) as nodes:
            with haproxy([Backend(x.name, x.dicom_port, x.http_port) for x in nodes]) as lb:
                groups = {"pacskit": [x.proc.pid for x in nodes],
                          "seaweedfs": [p.proc.pid for p in weed.processes], "haproxy": [lb.proc.pid]}
                ingest, retrieve = _measure(f"pacskit x{n}", lb, CpuMeter(groups, database), files, uids,
                                            associations, lambda: _count_pacskit(url))
        shutil.rmtree(folder, ignore_errors=True)
    return ingest, retrieve


@contextlib.contextmanager
def _orthancs(n: int, database: str, work: Path, storage: Path | None = None,
              s3: dict[str, Any] | None = None) -> Iterator[list[Any]]:
    """``n`` Orthancs on one PostgreSQL database; their files in ``storage`` (a folder they share), or
    with ``s3`` (:func:`pacskit.testing.peers.orthanc_s3_storage`'s entries) in an S3 bucket."""
    from sqlalchemy.engine import make_url

    u = make_url(POSTGRES_URL)
    storage = storage or work / "orthanc-storage"
    with contextlib.ExitStack() as stack:
        peers = []
        for i in range(n):
            extra = {
                **(s3 or {}),
                "StorageDirectory": str(storage),  # shared by the Orthancs (one archive)
                "Plugins": [ORTHANC_INDEX_PLUGIN, ORTHANC_DICOMWEB_PLUGIN, *(s3 or {}).get("Plugins", [])],
                "PostgreSQL": {"EnableIndex": True, "EnableStorage": False, "Host": u.host or "127.0.0.1",
                               "Port": u.port or 5432, "Database": database, "Username": u.username or "postgres",
                               "Password": u.password or "", "EnableSsl": False,
                               "Lock": False},  # several Orthancs on one database
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                "DicomCheckCalledAet": False,
                "ConcurrentJobs": 2,
            }
            peers.append(stack.enter_context(orthanc(work / f"orthanc-{i}", ae_title=AE, extra_config=extra,
                                                     startup_timeout=90)))
            # the first one creates the schema; the others start once it exists
        yield peers


ORTHANC_STORAGES = {
    "folder": "a local folder the Orthancs share (the issue's comparison)",
    "seaweedfs": "the SeaweedFS cluster's filer mounted with weed mount (FUSE; acknowledges before the volume "
                 "servers have the data)",
    "s3": "the SeaweedFS cluster's S3 gateway, through Orthanc's Python plugin as its storage area "
          "(pacskit.testing.orthanc_s3_storage, the same S3 client as pacskit's; Debian has no orthanc-object-storage): "
          "two PUTs per instance, since such a storage area cannot read ranges",
    "s3-1put": "as s3, but the attachment Orthanc adds for a storage area without range reads kept in a local "
               "folder: one PUT per instance, the object store's load of orthanc-object-storage",
}


def run_orthanc(n: int, files: list[Path], uids: list[tuple[str, str, str]], associations: int,
                work: Path, weed: Any = None, storage: str = "folder") -> tuple[Phase, Phase]:
    """Two Orthancs on one PostgreSQL; their storage one of :data:`ORTHANC_STORAGES` (``seaweedfs`` and
    ``s3``: the same object store as the pacskit nodes')."""
    import httpx

    from pacskit.testing.peers import orthanc_s3_storage
    from pacskit.testing.seaweedfs import weed_mount

    with fresh_postgres_database(POSTGRES_URL, prefix="orthanc_bench") as url, contextlib.ExitStack() as stack:
        database = url.rsplit("/", 1)[1].split("?", 1)[0]
        folder = work / f"orthanc-{n}-{storage}"
        mount_folder, s3 = None, None
        if storage == "seaweedfs":
            mount_folder = work / f"orthanc-mount-{database}"
            mount = stack.enter_context(weed_mount(weed, mount_folder, f"/{database}"))
        elif storage in ("s3", "s3-1put"):
            local = None
            if storage == "s3-1put":
                (local := work / f"orthanc-until-pixel-data-{database}").mkdir()
            s3 = orthanc_s3_storage(**weed.store_options("bench", f"{database}/"), until_pixel_data_folder=local)
        with _orthancs(n, database, folder, mount_folder, s3) as peers:
            with haproxy([Backend(f"o{i}", p.port, p.http_port) for i, p in enumerate(peers)],
                         health_path="/system") as lb:
                groups = {"orthanc": [p.proc.pid for p in peers], "haproxy": [lb.proc.pid]}
                if storage == "seaweedfs":
                    groups["seaweedfs"] = [p.proc.pid for p in weed.processes] + [mount.proc.pid]
                elif s3 is not None:
                    groups["seaweedfs"] = [p.proc.pid for p in weed.processes]
                statistics = f"http://127.0.0.1:{peers[0].http_port}/statistics"
                ingest, retrieve = _measure(
                    f"Orthanc x{n} {storage}", lb, CpuMeter(groups, database), files, uids, associations,
                    lambda: int(httpx.get(statistics, timeout=30).json()["CountInstances"]))
        if s3 is not None:
            objects = weed.count_objects("bench", f"{database}/")
            print(f"    Orthanc x{n} {storage}: {objects} objects for {ingest.instances} instances "
                  f"({objects / max(1, ingest.instances):.2f} PUTs per instance)", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return ingest, retrieve


# --------------------------------------------------------------------------- PostgreSQL and S3 figures


def pgbench(clients: int, seconds: int) -> float:
    """Commits per second of one-row INSERT transactions (synchronous_commit on: one WAL flush each)."""
    from sqlalchemy.engine import make_url

    with fresh_postgres_database(POSTGRES_URL, prefix="pgbench") as url:
        u = make_url(url)
        conninfo = f"host={u.host or '127.0.0.1'} port={u.port or 5432} user={u.username or 'postgres'} dbname={u.database}"
        subprocess.run(["psql", conninfo, "-qc", "CREATE TABLE commits (id bigint, at timestamptz)"], check=True)
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
            script.write("\\set id random(1, 1000000000)\nINSERT INTO commits VALUES (:id, now());\n")
        try:
            out = subprocess.run(["pgbench", "-n", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds),
                                  "-f", script.name, conninfo], capture_output=True, text=True, check=True).stdout
        finally:
            os.unlink(script.name)
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    assert match, out
    return float(match.group(1))


def s3_put_latency(weed: Any, size: int, work: Path, count: int = 200, threads: int = 4) -> tuple[float, float]:
    """(p50 ms, PUTs per second) of ``count`` objects of ``size`` bytes, ``threads`` in parallel, as the
    nodes send them (:meth:`pacskit.store.s3.S3BlobStore.put_bytes`: one conditional PUT each)."""
    from pacskit.store.s3 import S3BlobStore

    store = S3BlobStore(work / "latency", **weed.store_options("bench", "latency/"))
    body = os.urandom(size)
    times: list[float] = []

    def put(_i: int) -> None:
        start = time.perf_counter()
        store.put_bytes(body)
        times.append(time.perf_counter() - start)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(count)))
    wall = time.perf_counter() - start
    times.sort()
    return 1000 * times[len(times) // 2], count / wall


# --------------------------------------------------------------------------- main


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=600, help="64x64 CT instances per run")
    parser.add_argument("--associations", type=int, default=4, help="parallel storescu / HTTP clients")
    parser.add_argument("--nodes", default="1,2,3", help="pacskit node counts")
    parser.add_argument("--orthancs", type=int, default=2, help="Orthancs on one PostgreSQL (0: skip)")
    parser.add_argument("--orthanc-storage", default="folder,s3,s3-1put",
                        help="the Orthancs' storage, comma-separated, each run every round: "
                             + "; ".join(f"{k}: {v}" for k, v in ORTHANC_STORAGES.items())
                             + " ('both' = folder,seaweedfs)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds, each every configuration once (interleaved: a busy spell hits all)")
    parser.add_argument("--pgbench-seconds", type=int, default=8)
    parser.add_argument("--weed", choices=sorted(WEED_SETTINGS), default="gomaxprocs1",
                        help="SeaweedFS's settings (benchmarks/seaweedfs_put.py): gomaxprocs1 (default) runs each "
                             "weed process with GOMAXPROCS=1, as docs/deployment.md advises where it shares a "
                             "few cores with the nodes")
    parser.add_argument("--per-study", type=int, default=0,
                        help="instances per study (one series each, 50 patients): 1 is a CR/DX/MG-like load; "
                             "0 (default): every instance in one series of one study")
    args = parser.parse_args()
    storages = ["folder", "seaweedfs"] if args.orthanc_storage == "both" else args.orthanc_storage.split(",")
    if unknown := set(storages) - set(ORTHANC_STORAGES):
        parser.error(f"--orthanc-storage: unknown {', '.join(sorted(unknown))}")

    os.environ.setdefault("TCP_NODELAY", "1")
    files = (ensure_studies("studies", args.small, args.per_study, 64, 64) if args.per_study
             else ensure_series("small", args.small, 64, 64))
    size = warm(files)
    uids = _uids(files)
    load = os.getloadavg()[0]
    shape = f"{args.per_study} per study" if args.per_study else "one series"
    print(f"scale-out benchmark: {len(files)} instances ({shape}, {size / len(files) / 1024:.1f} KiB each), "
          f"{args.associations} associations, {args.repeat} round(s), SeaweedFS {args.weed}, load average {load:.2f} on "
          f"{os.cpu_count()} CPUs{' (busy machine)' if load > 1.0 else ''}", flush=True)
    rounds: list[dict[str, tuple[Phase, Phase]]] = []
    loads: list[float] = []
    work = Path(tempfile.mkdtemp(prefix="pacskit-bench-scaleout-"))
    orthanc_keys = [f"Orthanc x{args.orthancs} {storage}" for storage in storages] if args.orthancs else []
    try:
        server_args, volume_args, env = WEED_SETTINGS[args.weed]
        with seaweedfs_cluster(work / "weed", volumes=2, replication="001", server_args=server_args,
                               volume_args=volume_args, env=env) as weed:
            weed.create_bucket("bench")
            p50, puts = s3_put_latency(weed, size // len(files), work)
            print(f"SeaweedFS PUT of one instance ({size // len(files)} B): p50 {p50:.1f} ms, "
                  f"{puts:.0f} PUT/s with 4 threads", flush=True)
            for r in range(args.repeat):
                results: dict[str, tuple[Phase, Phase]] = {}
                loads.append(os.getloadavg()[0])
                for n in [int(x) for x in args.nodes.split(",") if x]:
                    results[f"pacskit x{n}"] = run_pacskit(weed, n, files, uids, args.associations, work)
                    print(f"  round {r + 1}: pacskit x{n} {results[f'pacskit x{n}'][0].rate:.1f} inst/s", flush=True)
                for storage, key in zip(storages, orthanc_keys):
                    results[key] = run_orthanc(args.orthancs, files, uids, args.associations, work, weed, storage)
                    print(f"  round {r + 1}: {key} {results[key][0].rate:.1f} inst/s "
                          f"(load average {os.getloadavg()[0]:.2f})", flush=True)
                rounds.append(results)
        one, eight = pgbench(1, args.pgbench_seconds), pgbench(8, args.pgbench_seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for r, results in enumerate(rounds):
        print()
        print(f"round {r + 1} (load average {loads[r]:.2f} at its start)")
        print(f"{'configuration':<20} {'ingest inst/s':>13} {'retrieve inst/s':>15}   ingest CPU ms per instance")
        for name, (ingest, retrieve) in results.items():
            print(f"{name:<20} {ingest.rate:>13.1f} {retrieve.rate:>15.1f}   {ingest.cpu_ms_per_instance()}")
        print("retrieve CPU ms per instance:")
        for name, (_ingest_phase, retrieve) in results.items():
            print(f"  {name:<20} {retrieve.cpu_ms_per_instance()}")
    print()
    print(f"PostgreSQL commits/s (one-row INSERT transactions): {one:.0f} with 1 client, {eight:.0f} with 8 clients")
    for key in orthanc_keys:
        ratios = [res["pacskit x2"][0].rate / res[key][0].rate for res in rounds if key in res and "pacskit x2" in res]
        if not ratios:
            continue
        retr = [res["pacskit x2"][1].rate / res[key][1].rate for res in rounds]
        median = _median(ratios)
        print(f"ingest, 2 pacskit nodes / {key}: {', '.join(f'{x:.2f}x' for x in ratios)} "
              f"(median {median:.2f}x; target >= 1.5x: {'met' if median >= 1.5 else 'NOT met'}); "
              f"retrieve {', '.join(f'{x:.2f}x' for x in retr)}")
        for name in ("pacskit x2", key):
            cpu = {part: _median([1000 * res[name][0].cpu.get(part, 0.0) / res[name][0].instances for res in rounds])
                   for part in rounds[0][name][0].cpu}
            print(f"  median ingest CPU ms per instance, {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
