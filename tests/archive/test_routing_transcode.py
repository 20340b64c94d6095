"""Routing to a peer that accepts only JPEG-LS Lossless (a pynetdicom storage SCP): the instances,
stored uncompressed, are encoded on the fly; the peer's pixels equal the originals byte for byte."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import JPEGLSLossless
from pynetdicom import AE, evt

from pacskit.addins.routing import RoutingAddIn
from pacskit.addins.storage import StorageAddIn
from pacskit.config.aetitles import FileAeRegistry, RemoteAE
from pacskit.config.settings import load_settings
from pacskit.server.server import Server
from pacskit.testing.synth import make_series

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_forward_to_a_jpeg_ls_only_peer(tmp_path: Path) -> None:
    received: dict[str, pydicom.Dataset] = {}

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    scp = AE(ae_title="JLSONLY")
    scp.add_supported_context(CT, [JPEGLSLossless])
    peer = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        files = make_series(tmp_path / "ct", 4, 32, 40, bits=16)
        originals = {str(d.SOPInstanceUID): d.pixel_array for d in map(pydicom.dcmread, files)}
        folder = tmp_path / "srv"
        folder.mkdir()
        FileAeRegistry(folder / "ae-titles.toml").add(
            RemoteAE(title="JLSONLY", host="127.0.0.1", port=peer.server_address[1]))
        (folder / "server.toml").write_text(
            'ae_title = "ROUTER"\nport = 0\ndata_dir = "data"\n[admin]\nenabled = false\n'
            '[addins.routing]\nenabled = true\nscan_interval = 0.2\n'
            'rules = [{name = "ct", modalities = ["CT"], destinations = ["JLSONLY"]}]\n')

        async def run() -> None:
            server = Server(load_settings(folder), addin_classes=[StorageAddIn, RoutingAddIn])
            await server.start()
            try:
                routing = next(a for a in server.addins if a.name == "routing")
                while routing.queue.watermark() is None:  # the router's first scan sets its start
                    await asyncio.sleep(0.05)
                for path in files:
                    server.store.ingest(path, source_ae="MOD")
                # The peer's handler runs before its C-STORE-RSP reaches the router, which only then
                # marks the job done: wait for the queue to drain, not only for the peer's copies.
                deadline = time.monotonic() + 60
                while len(received) < len(files) or routing.queue.counts() != {}:
                    assert time.monotonic() < deadline, routing.queue.list()
                    assert not routing.queue.list(state="failed"), routing.queue.list()
                    await asyncio.sleep(0.1)
            finally:
                await server.stop()

        asyncio.run(run())
    finally:
        peer.shutdown()
    assert set(received) == set(originals)
    for uid, ds in received.items():
        assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
        assert np.array_equal(ds.pixel_array, originals[uid]) and ds.pixel_array.dtype == originals[uid].dtype
