"""Lossless compression of stored instances: pixels byte-exact after the round trip for each codec on
pydicom's real files (CT, MR, US RGB, RT Dose multi-frame), index and files in agreement, the compressed
copy retrievable as stored; a codec whose encoder is missing is refused with the reason."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from pacskit.config.settings import load_settings
from pacskit.server.server import open_store
from pacskit.store.compression import SYNTAXES, compress

FILES = ["CT_small.dcm", "MR_small_implicit.dcm", "examples_rgb_color.dcm", "rtdose.dcm", "SC_rgb_small_odd.dcm",
         "SC_rgb_rle.dcm"]  # the last is compressed already: left as it is


@pytest.mark.parametrize("syntax", ["rle", "j2k", "jpeg-ls"])
def test_round_trip_is_byte_exact(tmp_path: Path, syntax: str) -> None:
    folder = tmp_path / "pacs"
    folder.mkdir()
    (folder / "server.toml").write_text('ae_title = "ZIP"\nport = 0\n')
    store = open_store(load_settings(folder))
    originals = {}
    try:
        for name in FILES:
            src = get_testdata_file(name)
            ds = pydicom.dcmread(src)
            shutil.copy(src, tmp_path / name)
            uid = store.ingest(tmp_path / name, source_ae="MOD").sop_instance_uid
            originals[uid] = (ds.pixel_array.tobytes(), ds.pixel_array.dtype, ds.pixel_array.shape)
        report = compress(store, "instance", list(originals), syntax)
        assert report.compressed + len(report.skipped) == len(originals) == len(FILES)
        assert report.compressed >= 3, report.skipped  # the encoders refuse 32-bit (and openjpeg a 3x3 image)
        assert any("not uncompressed" in why for _uid, why in report.skipped)
        for uid, (pixels, dtype, shape) in originals.items():
            inst = store.get_instance(uid)
            ds = pydicom.dcmread(store.instance_path(uid))
            assert ds.file_meta.TransferSyntaxUID == inst.transfer_syntax_uid
            decoded = ds.pixel_array
            assert (decoded.tobytes(), decoded.dtype, decoded.shape) == (pixels, dtype, shape), uid
            if uid not in dict(report.skipped):
                assert inst.transfer_syntax_uid == SYNTAXES[syntax]
        assert store.check().ok
    finally:
        store.close()
    proc = subprocess.run([sys.executable, "-m", "pacskit", "compress", "instance", *originals, "--syntax", syntax,
                           "--data-dir", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "compressed 0 instances" in proc.stdout  # already compressed: left as is


def test_missing_encoder_is_refused(tmp_path: Path) -> None:
    """Without pyjpegls (its module made unimportable in a fresh interpreter, as on a server installed
    without the codecs extra) JPEG-LS is refused naming the package, and nothing is changed."""
    folder = tmp_path / "pacs"
    folder.mkdir()
    (folder / "server.toml").write_text('ae_title = "ZIP"\nport = 0\n')
    script = (
        "import sys\n"
        "sys.modules['jpeg_ls'] = None  # pyjpegls not installed\n"
        "from pacskit.config.settings import load_settings\n"
        "from pacskit.server.server import open_store\n"
        "from pacskit.store.compression import CompressionError, compress\n"
        f"store = open_store(load_settings({str(folder)!r}))\n"
        "try:\n"
        "    compress(store, 'study', ['1.2.3'], 'jpeg-ls')\n"
        "except CompressionError as exc:\n"
        "    print('refused:', exc)\n"
        "finally:\n"
        "    store.close()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused:") and "pyjpegls" in proc.stdout, proc.stdout


@pytest.mark.dcmtk
@pytest.mark.parametrize("syntax", ["j2k", "jpeg-ls"])
def test_compression_addin_compresses_what_storescu_sends(tmp_path: Path, syntax: str) -> None:
    """DCMTK storescu sends uncompressed CT slices; the add-in stores them as JPEG 2000 / JPEG-LS lossless, pixels
    identical (the add-in only takes what was received uncompressed: the event's transfer syntax)."""
    import asyncio

    from pacskit.addins.compression import CompressionAddIn
    from pacskit.addins.storage import StorageAddIn
    from pacskit.server.server import Server
    from pacskit.testing.peers import count_store_successes, have_dcmtk, run_storescu
    from pacskit.testing.synth import make_series

    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    src = make_series(tmp_path / "ct", 5, 64, 64)
    pixels = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p).pixel_array.tobytes() for p in src}
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text('ae_title = "ZIP"\nport = 0\nopen_mode = true\n[admin]\nenabled = false\n'
                                        f'[addins.compression]\nenabled = true\nsyntax = "{syntax}"\n')

    async def run() -> None:
        server = Server(load_settings(folder), addin_classes=[StorageAddIn, CompressionAddIn])
        await server.start()
        try:
            sent = await asyncio.to_thread(run_storescu, "127.0.0.1", server.port, tmp_path / "ct", called="ZIP")
            assert count_store_successes(sent) == 5, sent.stdout
            addin = next(a for a in server.addins if a.name == "compression")
            for _ in range(600):
                if addin.compressed == 5:
                    break
                await asyncio.sleep(0.05)
            assert addin.compressed == 5 and addin.skipped == 0
            store = server.store
            for uid, original in pixels.items():
                assert store.get_instance(uid).transfer_syntax_uid == SYNTAXES[syntax]
                assert pydicom.dcmread(store.instance_path(uid)).pixel_array.tobytes() == original
            assert store.check().ok
        finally:
            await server.stop()

    asyncio.run(run())
