"""DICOMweb: pacskit's add-in vs Orthanc 1.10 + its DICOMweb plugin (Debian), same data, same run.

(a) pacskit: a server process (this script with ``--serve FOLDER``: Storage, Query, Retrieve and
    DICOMweb add-ins, SQLite index, files on disk), loaded before it starts (the CT study ingested
    through ``DataStore.ingest``, the QIDO rows bulk-loaded as in benchmarks/query.py).
(b) Orthanc with ``libOrthancDicomWeb.so`` (:func:`pacskit.testing.dicomweb.orthanc_dicomweb`), loaded
    through its REST API (the CT study) and DCMTK storescu (the QIDO files, the same values as the
    pacskit rows).

Both servers run side by side and every measurement alternates between them (pacskit first, then
Orthanc first, ...), so that a machine whose load changes from minute to minute weighs on both
alike; medians are reported. Measured, each on both servers:

* WADO-RS retrieve of a ``--ct`` (500) instance 512x512 CT study by curl (and by httpx, which is
  slower than both servers: see :func:`retrieve_mbps`), ``Accept: multipart/related;
  type="application/dicom"`` (the stored syntax, Explicit VR LE, on both: nothing is converted),
  median MB/s of ``--repeat`` runs; pacskit's RSS growth during the retrieve (peak minus before,
  sampled every 5 ms by psutil). ``--big N`` adds a retrieve of an N-instance study (2,000 = 1 GiB)
  from pacskit alone, for the flat-memory check;
* QIDO-RS study searches (by PatientID, PatientName wildcard, StudyDate range) at ``--qido-instances``
  (100,000) instances: p50 / p95 ms over ``--queries`` (100) of each kind;
* STOW-RS of ``--stow`` (1,000) 64x64 instances in one request, ``--stow-rounds`` requests each (new
  instances every time): median instances/s, and the server's CPU seconds per 1,000 instances;
* rendered JPEG of one CT frame (``/rendered``): p50 ms over 50 requests.

    .venv/bin/python benchmarks/dicomweb.py [--ct 500] [--qido-instances 100000] [--stow 1000] [--big 2000]

``--ct 0`` leaves out WADO-RS and rendered, ``--qido-instances 0`` QIDO, ``--stow 0`` STOW-RS (e.g. STOW-RS
alone: ``--ct 0 --qido-instances 0``).

Targets (issue 18): WADO-RS >= 1.5x Orthanc's MB/s; QIDO p50 <= 0.5x Orthanc's; STOW-RS >= 1.5x
Orthanc's instances/s; rendered p50 <= Orthanc's; RSS growth during a 1 GiB retrieve < 64 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import LOCALHOST, PYTHON, ensure_series, free_port, stop_process, wait_for_port  # noqa: E402

import httpx  # noqa: E402


# --------------------------------------------------------------------------- the pacskit server process


def serve(folder: Path) -> None:
    """Run the pacskit server of ``folder`` until killed (the benchmark's subprocess)."""
    from pacskit.addins.dicomweb import DicomWebAddIn
    from pacskit.addins.query import QueryAddIn
    from pacskit.addins.retrieve import RetrieveAddIn
    from pacskit.addins.storage import StorageAddIn
    from pacskit.addins.verification import VerificationAddIn
    from pacskit.config.settings import load_settings
    from pacskit.server.server import Server

    async def main() -> None:
        async with Server(load_settings(folder), use_entry_points=False,
                          addin_classes=[VerificationAddIn, StorageAddIn, QueryAddIn, RetrieveAddIn, DicomWebAddIn]):
            await asyncio.Event().wait()

    asyncio.run(main())


def write_settings(folder: Path, http_port: int) -> None:
    lines = ['ae_title = "PACSKIT"', f"port = {free_port()}", 'data_dir = "."',
             "[database]", f"url = 'sqlite:///{folder.resolve()}/index.db'", "[storage]", 'path = "files"',
             "[logging]", 'level = "WARNING"', "[admin]", "enabled = false",
             "[http]", f'host = "{LOCALHOST}"', f"port = {http_port}",
             "[addins.dicomweb]", "enabled = true", "max_results = 1000000"]
    (folder / "server.toml").write_text("\n".join(lines) + "\n")


class PacskitProcess:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        write_settings(folder, self.port)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PacskitProcess:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
        self.proc = subprocess.Popen([PYTHON, __file__, "--serve", str(self.folder)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=open(self.folder / "server.log", "wb"))
        wait_for_port(LOCALHOST, self.port, 120)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        stop_process(self.proc)

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}/dicom-web"


# --------------------------------------------------------------------------- measurements


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 without a pid)."""
    if not pid:
        return 0.0
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def retrieve_mbps(url: str, study: str, repeat: int, pid: int | None = None, *, rss: bool = True,
                  client: str = "curl") -> tuple[float, int, int | None, float]:
    """(median MB/s, bytes, RSS growth in bytes of process ``pid`` during the runs, the server's CPU
    seconds per GB sent: what the retrieve costs whatever else the machine is doing).

    ``client``: ``curl`` (one process, one keep-alive connection, the body to /dev/null) or ``httpx``
    (``iter_raw`` in this process). The Python client tops out near 1 GB/s on this machine, below
    what both servers can send, so its figures measure the client as much as the server; curl is the
    one that tells the servers apart (issue 18 profiling: pacskit 3.7 GB/s to curl, 1.0 GB/s to httpx)."""
    accept = 'multipart/related; type="application/dicom"'
    speeds, nbytes, growth = [], 0, None
    cpu0 = cpu_seconds(pid)
    total = 0
    target = f"{url}/studies/{study}"
    if client == "curl":
        sampler = RssSampler(pid) if pid and rss else None
        fmt = "%{size_download} %{time_total}\\n"
        args = ["curl", "-sS", "--fail", "-H", f"Accept: {accept}"]
        for _ in range(repeat):
            args += ["-o", "/dev/null", "-w", fmt, target]
        out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=600).stdout.split()
        for size, seconds in zip(out[0::2], out[1::2], strict=True):
            nbytes = int(size)
            speeds.append(nbytes / float(seconds) / 1e6)
            total += nbytes
        if sampler is not None:
            growth = sampler.stop()
    else:
        with httpx.Client(timeout=600) as c:
            for _ in range(repeat):
                sampler = RssSampler(pid) if pid and rss else None
                t0 = time.perf_counter()
                nbytes = 0
                with c.stream("GET", target, headers={"Accept": accept}) as r:
                    r.raise_for_status()
                    for chunk in r.iter_raw(1 << 20):
                        nbytes += len(chunk)
                speeds.append(nbytes / (time.perf_counter() - t0) / 1e6)
                total += nbytes
                if sampler is not None:
                    g = sampler.stop()
                    growth = g if growth is None else max(growth, g)
    cpu_per_gb = (cpu_seconds(pid) - cpu0) / (total / 1e9) if pid and total else 0.0
    return statistics.median(speeds), nbytes, growth, cpu_per_gb


class RssSampler:
    """Peak RSS of a process minus its RSS at the start, sampled every 5 ms."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self.thread.join()
        return self.peak - self.start


def latencies(url: str, paths: list[tuple[str, dict[str, str]]], accept: str) -> list[float]:
    out = []
    with httpx.Client(timeout=120) as c:
        for path, params in paths:
            # the query string as written: Orthanc 1.10 does not percent-decode values
            query = "&".join(f"{k}={v}" for k, v in params.items())
            t0 = time.perf_counter()
            r = c.get(f"{url}{path}" + (f"?{query}" if query else ""), headers={"Accept": accept})
            r.raise_for_status()
            _ = r.content
            out.append((time.perf_counter() - t0) * 1000)
    return out


def p50_p95(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.95))]


def stow(url: str, files: list[Path], pid: int | None = None) -> tuple[float, float]:
    """(instances per second of one STOW-RS request with every file, the server's CPU seconds per
    1,000 instances: what it costs whatever else the machine is doing)."""
    boundary = uuid.uuid4().hex
    datas = [f.read_bytes() for f in files]

    def body() -> Iterator[bytes]:
        for d in datas:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + d + b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    cpu0 = cpu_seconds(pid)
    with httpx.Client(timeout=600) as c:
        t0 = time.perf_counter()
        r = c.post(f"{url}/studies", content=body(),
                   headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                            "Accept": "application/dicom+json"})
        seconds = time.perf_counter() - t0
    cpu = (cpu_seconds(pid) - cpu0) / len(files) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"STOW-RS answered {r.status_code}: {r.text[:300]}")
    return len(files) / seconds, cpu


def qido_plan(shape: Any, count: int) -> dict[str, list[tuple[str, dict[str, str]]]]:
    import query as qbench  # benchmarks/query.py: the same rows and values

    rnd = random.Random(11)
    plan: dict[str, list[tuple[str, dict[str, str]]]] = {"study by PatientID": [], "study by PatientName*": [],
                                                          "study by StudyDate range": []}
    bulk = qbench.bulk
    for _ in range(count):
        i = rnd.randint(1, shape.patients)
        plan["study by PatientID"].append(("/studies", {"PatientID": bulk.patient_id(i)}))
        name = bulk.patient_name(i).split("^")[0]
        plan["study by PatientName*"].append(("/studies", {"PatientName": f"{name[:4]}*", "limit": "100"}))
        year = rnd.randint(2000, 2024)
        month = rnd.randint(1, 12)
        plan["study by StudyDate range"].append(
            ("/studies", {"StudyDate": f"{year}{month:02d}01-{year}{month:02d}07", "limit": "100"}))
    return plan


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ct", type=int, default=500)
    parser.add_argument("--qido-instances", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--stow", type=int, default=1000)
    parser.add_argument("--big", type=int, default=0, help="also retrieve an N-instance CT study from pacskit (RSS)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stow-rounds", type=int, default=3, help="STOW-RS requests per server (new instances each)")
    parser.add_argument("--work-root", type=Path, default=None)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    import query as qbench
    from pacskit.store import DataStore, FilesystemBlobStore
    from pacskit.testing.dicomweb import orthanc_dicomweb
    from pacskit.testing.peers import count_store_successes, run_storescu
    from pacskit.testing.synth import make_series

    work = Path(tempfile.mkdtemp(prefix="pacskit-dicomweb-bench-", dir=args.work_root))
    results: dict[str, dict[str, Any]] = {"pacskit": {}, "orthanc": {}}
    try:
        ct = ensure_series("CT", args.ct, 512, 512) if args.ct else []  # --ct 0: no WADO-RS, no rendered
        from pydicom import dcmread

        if ct:
            ct_study = str(dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
            ct_sop = str(dcmread(ct[0], stop_before_pixels=True).SOPInstanceUID)
            ct_series = str(dcmread(ct[0], stop_before_pixels=True).SeriesInstanceUID)
        shape = qbench.shape_for(args.qido_instances) if args.qido_instances else None
        plan = qido_plan(shape, args.queries) if shape else {}

        # ---- pacskit
        folder = work / "pacskit"
        folder.mkdir()
        if shape is not None:
            qbench.load_pacskit(folder, shape, None)
        store = DataStore.open(f"sqlite:///{folder.resolve()}/index.db", blobs=FilesystemBlobStore(folder / "files"))
        t0 = time.perf_counter()
        for f in ct:
            tmp = Path(store.temp_dir) / f"load-{f.name}"
            shutil.copyfile(f, tmp)
            store.ingest(tmp, source_ae="BENCH")
        big_study = None
        if args.big:
            big = ensure_series("CT", args.big, 512, 512) if args.big != args.ct else ct
            big_study = str(dcmread(big[0], stop_before_pixels=True).StudyInstanceUID)
            if big is not ct:
                for f in big:
                    tmp = Path(store.temp_dir) / f"load-{f.name}"
                    shutil.copyfile(f, tmp)
                    store.ingest(tmp, source_ae="BENCH")
        store.close()
        print(f"pacskit loaded in {time.perf_counter() - t0:.0f} s", flush=True)
        # both servers run side by side and every measurement alternates between them, so that a
        # machine whose load changes from minute to minute weighs on both alike
        with PacskitProcess(folder) as pacs, orthanc_dicomweb(work / "orthanc", startup_timeout=120) as orthanc:
            assert pacs.proc is not None
            t0 = time.perf_counter()
            with httpx.Client(timeout=120) as c:
                for f in ct:
                    c.post(f"{orthanc.url}/instances", content=f.read_bytes()).raise_for_status()
            if shape is not None:
                files = qbench.synthetic_files(shape)
                out = run_storescu(LOCALHOST, orthanc.dicom_port, files, called=orthanc.ae_title, timeout=None)
                print(f"Orthanc: {count_store_successes(out):,} QIDO instances stored", flush=True)
            print(f"Orthanc loaded in {time.perf_counter() - t0:.0f} s", flush=True)
            servers = {"pacskit": (pacs.url, pacs.proc.pid), "orthanc": (f"{orthanc.url}/dicom-web", orthanc.proc.pid)}

            def turns(n: int) -> Iterator[tuple[int, str]]:
                """``n`` rounds over both servers, the first one alternating."""
                for i in range(n):
                    for name in (("pacskit", "orthanc") if i % 2 == 0 else ("orthanc", "pacskit")):
                        yield i, name

            for name, (url, _) in servers.items():
                if ct:
                    retrieve_mbps(url, ct_study, 1, rss=False)  # warm the page cache and the server
            for client in ("curl", "httpx") if ct else ():
                speeds: dict[str, list[float]] = {"pacskit": [], "orthanc": []}
                cpu: dict[str, list[float]] = {"pacskit": [], "orthanc": []}
                growth = 0
                for _, name in turns(args.repeat):
                    url, pid = servers[name]
                    mbps, nbytes, g, cpu_gb = retrieve_mbps(url, ct_study, 1, pid, rss=name == "pacskit", client=client)
                    speeds[name].append(mbps)
                    cpu[name].append(cpu_gb)
                    growth = max(growth, g or 0)
                for name in servers:
                    key = "wado" if client == "curl" else "wado-httpx"
                    results[name][key] = (statistics.median(speeds[name]), nbytes, growth if name == "pacskit" else None,
                                          statistics.median(cpu[name]))
                    print(f"{name} WADO-RS ({client}): {' '.join(f'{v:.0f}' for v in speeds[name])} MB/s, "
                          f"{statistics.median(cpu[name]):.2f} CPU s/GB", flush=True)
            if big_study is not None:
                bmbps, bbytes, bgrowth, _ = retrieve_mbps(pacs.url, big_study, 1, pacs.proc.pid)
                results["pacskit"]["big"] = (bmbps, bbytes, bgrowth)
                print(f"pacskit WADO-RS big study: {bmbps:.0f} MB/s ({bbytes / 2**30:.2f} GiB), "
                      f"RSS growth {bgrowth / 2**20:.1f} MiB", flush=True)
            for kind, paths in plan.items():
                lat: dict[str, list[float]] = {"pacskit": [], "orthanc": []}
                for name, (url, _) in servers.items():
                    latencies(url, paths[:5], "application/dicom+json")
                for i, name in turns(len(paths)):
                    lat[name] += latencies(servers[name][0], paths[i:i + 1], "application/dicom+json")
                for name in servers:
                    results[name][kind] = p50_p95(lat[name])
            if ct:
                render_path = f"/studies/{ct_study}/series/{ct_series}/instances/{ct_sop}/rendered"
                lat = {"pacskit": [], "orthanc": []}
                for name, (url, _) in servers.items():
                    latencies(url, [(render_path, {})] * 3, "image/jpeg")
                for _, name in turns(50):
                    lat[name] += latencies(servers[name][0], [(render_path, {})], "image/jpeg")
                for name in servers:
                    results[name]["rendered"] = p50_p95(lat[name])
            if args.stow:
                rates: dict[str, list[float]] = {"pacskit": [], "orthanc": []}
                stow_cpu: dict[str, list[float]] = {"pacskit": [], "orthanc": []}
                for i, name in turns(args.stow_rounds):
                    batch = make_series(work / f"stow-{name}-{i}", args.stow, 64, 64)  # new UIDs every time
                    os.sync()  # the previous round's writeback does not land on this one's fsyncs
                    rate, cpu_k = stow(servers[name][0], batch, servers[name][1])
                    rates[name].append(rate)
                    stow_cpu[name].append(cpu_k)
                for name in servers:
                    results[name]["stow"] = (statistics.median(rates[name]), statistics.median(stow_cpu[name]))
                    print(f"{name} STOW-RS: {' '.join(f'{v:.0f}' for v in rates[name])} inst/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    p, o = results["pacskit"], results["orthanc"]
    print("\nresults (pacskit vs Orthanc + DICOMweb plugin)")
    if "wado" in p:
        print(f"  WADO-RS {args.ct} CT instances: {p['wado'][0]:.0f} vs {o['wado'][0]:.0f} MB/s "
              f"-> {p['wado'][0] / o['wado'][0]:.2f}x (target >= 1.5); server CPU {p['wado'][3]:.2f} vs "
              f"{o['wado'][3]:.2f} s/GB (client: curl)")
        ph, oh = p["wado-httpx"][0], o["wado-httpx"][0]
        print(f"  WADO-RS, Python client (httpx iter_raw): {ph:.0f} vs {oh:.0f} MB/s -> {ph / oh:.2f}x (client-bound)")
        print(f"  pacskit RSS growth during the retrieve: {p['wado'][2] / 2**20:.1f} MiB")
    if "big" in p:
        print(f"  pacskit {p['big'][1] / 2**30:.2f} GiB study: {p['big'][0]:.0f} MB/s, RSS growth "
              f"{p['big'][2] / 2**20:.1f} MiB (target < 64)")
    for kind in plan:
        print(f"  QIDO {kind} at {args.qido_instances:,} instances: p50 {p[kind][0]:.1f} vs {o[kind][0]:.1f} ms "
              f"(p95 {p[kind][1]:.1f} vs {o[kind][1]:.1f}) -> {p[kind][0] / o[kind][0]:.2f}x (target <= 0.5)")
    if "stow" in p:
        print(f"  STOW-RS {args.stow} small instances: {p['stow'][0]:.0f} vs {o['stow'][0]:.0f} inst/s "
              f"-> {p['stow'][0] / o['stow'][0]:.2f}x (target >= 1.5); server CPU {p['stow'][1]:.2f} vs "
              f"{o['stow'][1]:.2f} s per 1,000")
    if "rendered" in p:
        print(f"  rendered JPEG (512x512 CT): p50 {p['rendered'][0]:.1f} vs {o['rendered'][0]:.1f} ms "
              f"-> {p['rendered'][0] / o['rendered'][0]:.2f}x (target <= 1.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
