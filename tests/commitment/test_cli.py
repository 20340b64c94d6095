"""``pacskit commit AET@host:port FILES…`` against the pacskit server: output and exit codes."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from pacskit.cli import app
from pacskit.server.server import Server
from pacskit.testing.peers import free_port

from ._util import PACS_AE, blob_path, corrupt, hold_checks_until_released, register, server_settings, store_files

runner = CliRunner()


class _Background:
    """A pacskit server running on its own event loop thread, so the CLI (which runs its own loop)
    can be invoked from the test thread."""

    def __init__(self, settings: Any, folder: Path) -> None:
        self.settings = settings
        self.folder = folder
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        async with Server(self.settings) as server:
            self.server = server
            self.stored = store_files(server.store, self.folder, 3)
            self.ready.set()
            await self.stop.wait()

    def __enter__(self) -> _Background:
        self.thread.start()
        assert self.ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


def invoke(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


def test_commit_prints_committed_and_failed_with_reasons(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)
    with _Background(settings, tmp_path / "src") as bg:
        files = [p for p, _ in bg.stored]
        target = f"{PACS_AE}@127.0.0.1:{bg.server.port}"
        ok = invoke("commit", target, tmp_path / "src", "--calling", "MODALITY")
        assert ok.exit_code == 0, ok.output
        assert ok.output.count("committed ") == 3
        assert "3 committed, 0 failed" in ok.output and "same association" in ok.output

        corrupt(blob_path(bg.server.store, bg.stored[1][1].sop_instance_uid))
        bad = invoke("commit", target, *files, "--calling", "MODALITY")
        assert bad.exit_code == 1, bad.output
        assert f"failed    {bg.stored[1][1].sop_instance_uid}: 0x0110 processing failure" in bad.output
        assert "2 committed, 1 failed" in bad.output

        receive = free_port()
        register(settings, "MODALITY", receive)
        hold_checks_until_released(bg.server)
        released = invoke("commit", target, files[0], "--calling", "MODALITY", "--port", receive,
                          "--host", "127.0.0.1", "--release")
        assert released.exit_code == 0, released.output
        assert "1 committed, 0 failed" in released.output and "(new association)" in released.output


def test_commit_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "notdicom.txt").write_text("hello")
    assert invoke("commit", "X@127.0.0.1:104", tmp_path / "missing.dcm").exit_code == 2
    not_dicom = invoke("commit", "X@127.0.0.1:104", tmp_path / "notdicom.txt")
    assert not_dicom.exit_code == 2 and "not a DICOM" in not_dicom.output
    assert invoke("commit", "X@127.0.0.1:104", tmp_path / "notdicom.txt", "--release").exit_code == 2
    from pacskit.testing.synth import make_instance

    refused = invoke("commit", f"X@127.0.0.1:{free_port()}", make_instance(tmp_path / "a.dcm"))
    assert refused.exit_code == 3 and "refused" in refused.output
