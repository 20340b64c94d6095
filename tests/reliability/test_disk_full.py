"""A full disk: C-STORE answered 0xA700 (out of resources), nothing stored damaged, server serving.

The instance files live on a real 4 MiB tmpfs mounted for the test (root is needed to mount; CI runs
as root, elsewhere the test skips). The index stays on the ordinary disk, as it would when an archive
volume fills up. Instances of ~300 kB are stored until the volume is full; then: the refused store is
0xA700 with an error comment, the association goes on (C-ECHO), every instance acknowledged before is
intact and indexed (``check()`` clean), no partial file is left, and once space is freed (an instance
deleted) storing succeeds again.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import RequestedContext, connect
from pacskit.net.sinks import temp_files
from pacskit.server.server import Server
from pacskit.config.settings import load_settings
from pacskit.testing.synth import make_series

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "volume"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_answers_out_of_resources_and_keeps_serving(tmp_path: Path, small_volume: Path) -> None:
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text(
        'ae_title = "FULLPACS"\nport = 0\ndata_dir = "data"\n'
        f'[storage]\npath = "{small_volume / "files"}"\n'
    )
    settings = load_settings(folder)
    files = make_series(tmp_path / "src", 20, rows=384, cols=384)  # ~295 kB each: 4 MiB holds ~13

    async def run() -> None:
        async with Server(settings) as server:
            store = server.store
            contexts = [RequestedContext(CT), RequestedContext(VERIFICATION_SOP_CLASS)]
            async with await connect("127.0.0.1", server.port, called_ae="FULLPACS", contexts=contexts) as assoc:
                statuses = []
                for path in files:
                    rsp = await assoc.store(path)
                    statuses.append(rsp.status)
                    if rsp.status != 0x0000:
                        comment = rsp.get("ErrorComment", "")
                        break
                stored = statuses.count(0x0000)
                assert 0 < stored < len(files), statuses
                assert statuses[-1] == 0xA700, [hex(s) for s in statuses]
                assert any(s in comment for s in ("disk full", "No space left")), comment
                assert await assoc.echo() == 0x0000  # the association goes on
                assert store.count("instances") == stored
                report = store.check()
                assert report.ok, str(report)
                partial = {str(p) for p in Path(store.temp_dir).glob("rx-*") if p.stat().st_size}
                assert not partial - temp_files(store.temp_dir).spare_paths()
                # free space: one instance deleted, and the refused one goes in
                first = store.index.engine.connect().exec_driver_sql(
                    "SELECT sop_instance_uid FROM instances ORDER BY pk LIMIT 1").scalar()
                assert store.delete_instance(first)
                temp_files(store.temp_dir).close()  # give back the spare files' space too
                assert (await assoc.store(files[stored])).status == 0x0000
            assert store.count("instances") == stored
            assert store.check().ok

    asyncio.run(run())
