"""The web viewer (web/src/viewer, Cornerstone3D) in Chromium on loopback: the same viewer and the same
300-slice CT study fed by pacskit's DICOMweb add-in and by Orthanc 1.10 + its DICOMweb plugin, same run.

(a) pacskit: a server process (this script with ``--serve FOLDER``: the DICOMweb add-in with
    ``cors_origins``), the study ingested before it starts; the viewer page (the built front-end,
    ``npm --prefix web run build``) from a static server on another port, so DICOMweb is cross-origin;
(b) Orthanc with ``libOrthancDicomWeb.so`` and ``libServeFolders.so`` serving the same built page at
    ``/ui/`` (same origin: Orthanc has no CORS), the study uploaded through its REST API.

Measured in Debian's Chromium (Playwright, headless, a fresh browser context per run: nothing cached),
median of ``--repeat`` (5) runs:

* first image: from the navigation to ``viewer.html?study=...`` to the first image drawn on the canvas
  (``performance.now()`` of the viewer's first IMAGE_RENDERED: page load, Cornerstone start-up,
  WADO-RS study metadata, first frame fetched, decoded in a web worker and drawn); also the viewer's own
  part (from ``mountViewer`` to that image);
* all loaded: from the navigation until every image of the stack is decoded in Cornerstone's cache
  (the viewer prefetches the whole stack after the first image);
* scroll rate once loaded: ``scrollTo(i)`` for i = 0..N-1, each awaited until that image is rendered,
  images per second.

    .venv/bin/python benchmarks/web_viewer.py [--slices 300] [--size 512] [--repeat 5]

Targets (issue 19): first image <= 1 s; scroll >= 30 images/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import LOCALHOST, PYTHON, free_port, stop_process, wait_for_port  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SERVE_FOLDERS = "/usr/share/orthanc/plugins/libServeFolders.so"


def serve(folder: Path) -> None:
    """Run the pacskit server of ``folder`` until killed (the benchmark's subprocess)."""
    from pacskit.addins.dicomweb import DicomWebAddIn
    from pacskit.config.settings import load_settings
    from pacskit.server.server import Server

    async def main() -> None:
        async with Server(load_settings(folder), use_entry_points=False, addin_classes=[DicomWebAddIn]):
            await asyncio.Event().wait()

    asyncio.run(main())


def load_pacskit(folder: Path, files: list[Path], http_port: int) -> None:
    """Write the server's settings and ingest ``files`` into its store (before the server starts)."""
    from pacskit.store import DataStore, FilesystemBlobStore

    (folder / "server.toml").write_text("\n".join([
        'ae_title = "PACSKIT"', f"port = {free_port()}", 'data_dir = "."',
        "[database]", f"url = 'sqlite:///{folder.resolve()}/index.db'", "[storage]", 'path = "files"',
        "[logging]", 'level = "WARNING"', "[admin]", "enabled = false",
        "[http]", f'host = "{LOCALHOST}"', f"port = {http_port}",
        "[addins.dicomweb]", "enabled = true", 'cors_origins = ["*"]']) + "\n")
    store = DataStore.open(f"sqlite:///{folder.resolve()}/index.db", blobs=FilesystemBlobStore(folder / "files"))
    for f in files:
        tmp = Path(store.temp_dir) / f"load-{f.name}"
        shutil.copyfile(f, tmp)
        store.ingest(tmp, source_ae="BENCH")
    store.close()


def make_study(folder: Path, slices: int, size: int) -> tuple[str, list[Path]]:
    from pydicom.uid import generate_uid

    from pacskit.testing.viewer import write_ct_series

    marker = folder / "study.txt"
    if marker.exists():
        study = marker.read_text().strip()
        files = sorted((folder / "ct").glob("*.dcm"))
        if len(files) == slices:
            return study, files
    shutil.rmtree(folder / "ct", ignore_errors=True)
    study = generate_uid()
    files = write_ct_series(folder / "ct", slices, size, study_uid=study, description=f"Axial {slices}")
    marker.write_text(study)
    return study, files


JS_RUN = """async ({ slices }) => {
  const v = window.pacskitViewer;
  await v.ready;
  while (v.timings.firstImage === undefined) await new Promise((r) => requestAnimationFrame(r));
  const first = v.timings.firstImage;
  const mounted = v.timings.mounted;
  while (v.progress().loaded < slices) await new Promise((r) => setTimeout(r, 20));
  const loaded = performance.now();
  const t0 = performance.now();
  for (let i = 0; i < slices; i++) await v.scrollTo(i);
  const scroll = slices / ((performance.now() - t0) / 1000);
  return { first, viewerPart: first - mounted, metadata: v.timings.metadata - mounted, loaded, scroll,
           count: v.state().count };
}"""


def measure(browser: Any, url: str, slices: int) -> dict[str, float]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_function("() => window.pacskitViewer !== undefined", timeout=60_000)
        result: dict[str, float] = page.evaluate(JS_RUN, {"slices": slices})
        if errors or result["count"] != slices:
            raise RuntimeError(f"viewer failed on {url}: {errors or result}")
        return result
    finally:
        context.close()


def summarize(name: str, runs: list[dict[str, float]]) -> dict[str, float]:
    med = {k: statistics.median(r[k] for r in runs) for k in ("first", "viewerPart", "metadata", "loaded", "scroll")}
    per_run = ", ".join(f"{r['first']:.0f}" for r in runs)
    print(f"  {name:8s} first image {med['first']:7.0f} ms (viewer part {med['viewerPart']:5.0f} ms; study metadata in at {med['metadata']:5.0f} ms)"
          f"   all loaded {med['loaded']:7.0f} ms   scroll {med['scroll']:6.1f} images/s"
          f"   [first image per run: {per_run} ms]")
    return med


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-orthanc", action="store_true", help="pacskit only")
    parser.add_argument("--renderer", choices=["auto", "gpu", "cpu"], default="auto",
                        help="the viewer's renderer (auto: WebGL when the browser has it)")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    from playwright.sync_api import sync_playwright

    from pacskit.testing.dicomweb import have_orthanc_dicomweb, orthanc_dicomweb
    from pacskit.testing.viewer import serve_web_assets, web_assets

    assets = web_assets()
    if assets is None:
        raise SystemExit("the front-end is not built: npm --prefix web ci && npm --prefix web run build")
    data = Path(__file__).resolve().parents[1] / ".bench-data" / f"web_viewer_{args.slices}x{args.size}"
    data.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    study, files = make_study(data, args.slices, args.size)
    print(f"study: {args.slices} CT slices {args.size}x{args.size}, {sum(f.stat().st_size for f in files) / 1e6:.0f} MB"
          f" (made in {time.perf_counter() - t:.1f} s)")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            # (a) pacskit
            folder = Path(tmp) / "pacskit"
            folder.mkdir()
            http_port = free_port()
            load_pacskit(folder, files, http_port)
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
            proc = subprocess.Popen([PYTHON, __file__, "--serve", str(folder)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "wb"))
            try:
                wait_for_port(LOCALHOST, http_port, 120)
                with serve_web_assets(assets) as ui:
                    url = f"{ui}viewer.html?study={study}&dicomweb=http://{LOCALHOST}:{http_port}/dicom-web&poll=0&renderer={args.renderer}"
                    measure(browser, url, args.slices)  # warm-up: the server's caches, the OS page cache
                    results["pacskit"] = summarize("pacskit", [measure(browser, url, args.slices)
                                                               for _ in range(args.repeat)])
            finally:
                stop_process(proc)
            # (b) Orthanc
            if not args.no_orthanc:
                if not have_orthanc_dicomweb() or not Path(SERVE_FOLDERS).exists():
                    print("  orthanc  skipped: Orthanc with its DICOMweb and ServeFolders plugins is not installed")
                else:
                    from pacskit.testing.dicomweb import ORTHANC_DICOMWEB_PLUGIN

                    extra = {"Plugins": [ORTHANC_DICOMWEB_PLUGIN, SERVE_FOLDERS],
                             "ServeFolders": {"Extensions": {".wasm": "application/wasm", ".mjs": "text/javascript"},
                                              "Folders": {"/ui": str(assets)}}}
                    with orthanc_dicomweb(Path(tmp) / "orthanc", extra_config=extra) as orthanc:
                        for f in files:
                            orthanc.post("/instances", f.read_bytes())
                        url = f"{orthanc.url}/ui/viewer.html?study={study}&dicomweb={orthanc.url}/dicom-web&poll=0&renderer={args.renderer}"
                        measure(browser, url, args.slices)
                        results["orthanc"] = summarize("orthanc", [measure(browser, url, args.slices)
                                                                   for _ in range(args.repeat)])
        finally:
            browser.close()
    p = results["pacskit"]
    print(f"targets: first image {p['first']:.0f} ms (<= 1000: {'met' if p['first'] <= 1000 else 'NOT met'}),"
          f" scroll {p['scroll']:.1f} images/s (>= 30: {'met' if p['scroll'] >= 30 else 'NOT met'})")
    if "orthanc" in results:
        o = results["orthanc"]
        print(f"ratios pacskit/orthanc: first image {p['first'] / o['first']:.2f} (lower is better),"
              f" all loaded {p['loaded'] / o['loaded']:.2f} (lower is better),"
              f" scroll {p['scroll'] / o['scroll']:.2f} (higher is better)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
