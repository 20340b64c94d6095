"""Q/R gateway: DCMTK movescu of one study held by Orthanc to DCMTK storescp, asked of Orthanc itself
and of pacskit's gateway add-in in front of it, in the same run.

(a) ``orthanc``: movescu -> Orthanc -> storescp (the baseline: no gateway).
(b) ``fetch-cold``: movescu -> pacskit -> C-GET from Orthanc into pacskit's store -> storescp; the
    study is deleted from pacskit (not timed) before each repeat, so every move fetches it.
(c) ``fetch-cached``: the same, the study already in pacskit's store (one C-FIND to Orthanc finds its
    instance count equal: nothing fetched, sent from pacskit's store).
(d) ``direct``: movescu -> pacskit -> C-MOVE to Orthanc with the same destination -> storescp.

pacskit runs as a subprocess (Verification, Storage and Gateway add-ins, SQLite index). Each figure is
the median wall time of ``--repeat`` moves (spawning movescu to its exit); a move counts only if movescu
reports a final Success and storescp wrote every instance. Ratios are pacskit's time over Orthanc's
(lower is better; fetch-cold moves the data twice by design: Orthanc -> pacskit -> storescp, each
instance stored durably in pacskit before the next comes, so it is also compared with Orthanc's own
ingest of the study by storescu plus its move: what a store-and-forward through Orthanc costs).

    .venv/bin/python benchmarks/gateway.py [--ct N] [--repeat N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DATA, LOCALHOST, PYTHON, dcmtk_env, dcmtk_tool, ensure_series, free_port, stop_process, wait_for_port, warm  # noqa: E402

from pacskit.config.aetitles import FileAeRegistry, RemoteAE  # noqa: E402
from pacskit.testing.peers import orthanc, storescp  # noqa: E402

_SERVER = textwrap.dedent("""
    import asyncio, sys
    from pacskit.config.settings import load_settings
    from pacskit.server.server import Server
    from pacskit.addins.gateway import GatewayAddIn
    from pacskit.addins.storage import StorageAddIn
    from pacskit.addins.verification import VerificationAddIn

    async def main():
        server = Server(load_settings(sys.argv[1]), addin_classes=[VerificationAddIn, StorageAddIn, GatewayAddIn])
        await server.start()
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def _load(port: int, files: list[Path]) -> None:
    out = subprocess.run([dcmtk_tool("storescu"), "-aet", "LOADER", "-aec", "ORTHANC", LOCALHOST, str(port),
                          *[p.name for p in files]], cwd=files[0].parent, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=dcmtk_env(), text=True, errors="replace")
    if out.returncode != 0 or any(ln.startswith(("E:", "F:")) for ln in out.stdout.splitlines()):
        raise RuntimeError(f"loading failed: {out.stdout[-1000:]}")


def _movescu(called: str, port: int, study_uid: str) -> tuple[float, str]:
    argv = [dcmtk_tool("movescu"), "-v", "-S", "-aet", "BENCHMOVE", "-aec", called, "-aem", "STORESCP",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", LOCALHOST, str(port)]
    start = time.perf_counter()
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dcmtk_env(), text=True, errors="replace")
    return time.perf_counter() - start, out.stdout


def _timed(called: str, port: int, study_uid: str, scp_dir: Path, expected: int, repeat: int,
           before_each: object = None) -> tuple[float | None, list[float], str]:
    times: list[float] = []
    for _ in range(repeat):
        if callable(before_each):
            before_each()
        for old in scp_dir.glob("*.dcm"):
            old.unlink()
        seconds, out = _movescu(called, port, study_uid)
        if "Received Final Move Response (Success)" not in out:
            return None, times, "movescu: " + " | ".join(out.strip().splitlines()[-3:])
        received = len(list(scp_dir.glob("*.dcm")))
        if received != expected:
            return None, times, f"storescp wrote {received} files, {expected} expected"
        times.append(seconds)
    return statistics.median(times), times, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", type=int, default=200, metavar="N", help="512x512 instances in the study")
    parser.add_argument("--repeat", type=int, default=3, metavar="N", help="moves timed per case (median)")
    parser.add_argument("--work-root", type=Path, default=BENCH_DATA / "gateway")
    args = parser.parse_args()

    from pydicom import dcmread

    files = ensure_series("ct-512x512", args.ct, 512, 512)
    warm(files)
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    args.work_root.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="gateway-", dir=args.work_root.resolve()))
    results: dict[str, tuple[float | None, list[float], str]] = {}
    load_seconds = float("nan")
    print(f"movescu of {len(files)} CT instances (512x512) -> storescp, TCP_NODELAY=1, data under {root}", flush=True)
    try:
        scp_dir = root / "storescp"
        with storescp(scp_dir) as scp:
            gateway_port = free_port()
            with orthanc(root / "orthanc", modalities={"storescp": ["STORESCP", LOCALHOST, scp.port],
                                                        "gateway": ["GATEWAY", LOCALHOST, gateway_port]},
                         startup_timeout=60) as orth:
                started = time.perf_counter()
                _load(orth.dicom_port, files)
                load_seconds = time.perf_counter() - started
                results["orthanc"] = _timed("ORTHANC", orth.dicom_port, study_uid, scp_dir, len(files), args.repeat)
                for mode in ("fetch", "direct"):
                    folder = root / f"pacskit-{mode}"
                    folder.mkdir()
                    registry = FileAeRegistry(folder / "ae-titles.toml")
                    registry.add(RemoteAE(title="ORTHANC", host=LOCALHOST, port=orth.dicom_port))
                    registry.add(RemoteAE(title="STORESCP", host=LOCALHOST, port=scp.port))
                    (folder / "server.toml").write_text(
                        f'ae_title = "GATEWAY"\nport = {gateway_port}\n'
                        "[addins.query]\nenabled = false\n[addins.retrieve]\nenabled = false\n"
                        f'[addins.gateway]\nenabled = true\nremotes = ["ORTHANC"]\nmove_mode = "{mode}"\n'
                        + ("local = false\n" if mode == "direct" else ""))
                    log = open(root / f"pacskit-{mode}.log", "wb")  # noqa: SIM115
                    proc = subprocess.Popen([PYTHON, "-c", _SERVER, str(folder)], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
                    try:
                        wait_for_port(LOCALHOST, gateway_port, 60, proc=proc)
                        if mode == "direct":
                            results["direct"] = _timed("GATEWAY", gateway_port, study_uid, scp_dir, len(files),
                                                       args.repeat)
                            continue

                        def forget(folder: Path = folder) -> None:
                            subprocess.run([PYTHON, "-m", "pacskit", "delete", "study", study_uid, "--data-dir",
                                            str(folder)], capture_output=True, check=False)

                        results["fetch-cold"] = _timed("GATEWAY", gateway_port, study_uid, scp_dir, len(files),
                                                       args.repeat, before_each=forget)
                        results["fetch-cached"] = _timed("GATEWAY", gateway_port, study_uid, scp_dir, len(files),
                                                         args.repeat)
                    finally:
                        stop_process(proc, timeout=30)
                        log.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = results.get("orthanc", (None, [], ""))[0]
    print(f"storescu -> Orthanc (its ingest of the study, for scale): {load_seconds:.2f} s, "
          f"{len(files) / load_seconds:.1f} inst/s")
    print(f"{'case':<14} {'median s':>9} {'inst/s':>8} {'ratio to Orthanc':>17}  all runs")
    for case, (seconds, times, failure) in results.items():
        if seconds is None:
            print(f"{case:<14} failed: {failure}")
            continue
        ratio = f"{seconds / base:.2f}x" if base else "n/a"
        print(f"{case:<14} {seconds:>9.2f} {len(files) / seconds:>8.1f} {ratio:>17}  "
              + ", ".join(f"{t:.2f}" for t in times))
    cold = results.get("fetch-cold", (None, [], ""))[0]
    if cold and base:
        print(f"fetch-cold / (Orthanc's ingest + Orthanc's move), a store-and-forward through Orthanc: "
              f"{cold / (load_seconds + base):.2f}x")
    return 0 if all(r[0] is not None for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
