"""The add-in contract end to end: discovery, dispatch, timeouts, conflicts, start-up errors."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pacskit.services import AddIn, SupportedContext
from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import RequestedContext, connect
from pacskit.server.addin_manager import AddInError
from pacskit.server.server import Server, ServerError
from pacskit.config.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
ECHO = [RequestedContext(VERIFICATION_SOP_CLASS)]


def _settings(folder: Path, **addins: dict) -> object:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ['ae_title = "TESTPACS"', "port = 0", 'data_dir = "data"']
    for name, opts in addins.items():
        lines.append(f'[addins."{name}"]')
        lines += [f"{k} = {v!r}".replace("True", "true").replace("False", "false") for k, v in opts.items()]
    (folder / "server.toml").write_text("\n".join(lines) + "\n")
    return load_settings(folder)


async def _echo(port: int) -> int:
    async with await connect("127.0.0.1", port, called_ae="TESTPACS", contexts=ECHO) as assoc:
        return await assoc.echo()


class SlowEcho(AddIn):
    name = "slow-echo"

    def presentation_contexts(self):
        return [SupportedContext(VERIFICATION_SOP_CLASS)]

    def handlers(self):
        return {"C-ECHO": self.on_echo}

    async def on_echo(self, request):
        await asyncio.sleep(5)
        return 0


class SyncSlowEcho(SlowEcho):
    name = "sync-slow-echo"

    def handlers(self):
        return {"C-ECHO": self.on_echo_sync}

    def on_echo_sync(self, request):
        time.sleep(2)
        return 0


def test_dropped_in_addin_receives_traffic(tmp_path: Path) -> None:
    folder = tmp_path / "srv"
    settings = _settings(folder, verification={"enabled": False}, **{"echo-counter": {"greeting": "hi"}})
    (folder / "addins").mkdir()
    shutil.copy(REPO / "examples" / "echo_counter.py", folder / "addins" / "echo_counter.py")

    async def run() -> None:
        async with Server(settings) as server:
            assert await _echo(server.port) == 0
            assert await _echo(server.port) == 0
            counter = next(a for a in server.addins if a.name == "echo-counter")
            assert counter.counts["PACSKIT"] == 2
            assert counter.options.greeting == "hi"

    asyncio.run(run())


def test_broken_addin_is_skipped_with_a_clear_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "srv"
    settings = _settings(folder)
    (folder / "addins").mkdir()
    (folder / "addins" / "broken.py").write_text("import does_not_exist_anywhere\n")
    (folder / "addins" / "notanaddin.py").write_text("X = 1\n")

    async def run() -> None:
        async with Server(settings) as server:
            assert await _echo(server.port) == 0  # the built-in verification still works
            origins = {b.origin for b in server.manager.broken}
            assert any("broken.py" in o for o in origins)
            assert any("notanaddin.py" in o for o in origins)

    with caplog.at_level("ERROR", logger="pacskit.addins"):
        asyncio.run(run())
    assert any("broken.py" in r.getMessage() and "ModuleNotFoundError" in r.getMessage() for r in caplog.records)


def test_addin_timeout_yields_failure_status_and_association_goes_on(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "srv", verification={"enabled": False}, **{"slow-echo": {"timeout": 0.3}})

    async def run() -> None:
        async with Server(settings, addin_classes=[SlowEcho]) as server:
            async with await connect("127.0.0.1", server.port, called_ae="TESTPACS", contexts=ECHO) as assoc:
                assert await assoc.echo() == 0x0110  # processing failure, not a hang
                assert assoc.is_established and not assoc.is_aborted

    asyncio.run(run())


def test_sync_addin_timeout(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "srv", **{"sync-slow-echo": {"timeout": 0.3}})

    async def run() -> None:
        async with Server(settings, addin_classes=[SyncSlowEcho]) as server:
            assert await _echo(server.port) == 0x0110

    asyncio.run(run())


def test_two_addins_claiming_the_same_context_are_refused_naming_both(tmp_path: Path) -> None:
    from pacskit.addins.verification import VerificationAddIn

    settings = _settings(tmp_path / "srv")

    async def run() -> None:
        server = Server(settings, addin_classes=[VerificationAddIn, SlowEcho])
        with pytest.raises(AddInError) as info:
            await server.start()
        assert "verification" in str(info.value) and "slow-echo" in str(info.value)

    asyncio.run(run())


def test_invalid_addin_options_stop_startup_with_the_reason(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "srv", storage={"duplicate_policy": "sometimes"})

    async def run() -> None:
        with pytest.raises(AddInError, match="duplicate_policy"):
            await Server(settings).start()

    asyncio.run(run())


def test_options_schema_is_json_schema() -> None:
    from pacskit.addins.storage import StorageAddIn

    schema = StorageAddIn.options_schema()
    assert schema["properties"]["duplicate_policy"]["enum"] == ["reject", "keep-first", "overwrite"]
    assert "timeout" in schema["properties"]


def test_entry_point_addin_receives_traffic(tmp_path: Path) -> None:
    """A pip-installed add-in: a real distribution (dist-info with entry_points.txt) on sys.path."""
    site = tmp_path / "site"
    (site / "ep_addin").mkdir(parents=True)
    (site / "ep_addin" / "__init__.py").write_text(
        textwrap.dedent(
            """
            from pacskit.services import AddIn, SupportedContext
            from pacskit.dicom.uids import VERIFICATION_SOP_CLASS

            class EntryPointEcho(AddIn):
                name = "ep-echo"
                calls = 0

                def presentation_contexts(self):
                    return [SupportedContext(VERIFICATION_SOP_CLASS)]

                def handlers(self):
                    return {"C-ECHO": self.on_echo}

                async def on_echo(self, request):
                    return 0x0000 if request.assoc.remote_ae_title == "EPTEST" else 0x0110
            """
        )
    )
    dist = site / "ep_addin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-addin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pacskit.addins]\nep-echo = ep_addin:EntryPointEcho\n")
    folder = tmp_path / "srv"
    _settings(folder, verification={"enabled": False})
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pacskit.server.server import Server
        from pacskit.config.settings import load_settings
        from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
        from pacskit.net import connect, RequestedContext

        async def main():
            async with Server(load_settings({str(folder)!r})) as server:
                assert "ep-echo" in {{a.name for a in server.addins}}, server.manager.found
                assoc = await connect("127.0.0.1", server.port, called_ae="TESTPACS", calling_ae="EPTEST",
                                      contexts=[RequestedContext(VERIFICATION_SOP_CLASS)])
                async with assoc:
                    print("STATUS", await assoc.echo())
        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "STATUS 0" in proc.stdout


def test_port_in_use_gives_one_clear_line_and_nonzero_exit(tmp_path: Path) -> None:
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        settings = _settings(tmp_path / "srv")
        settings.port = port

        async def run() -> None:
            with pytest.raises(ServerError, match=f"cannot listen on 127.0.0.1:{port}: address already in use"):
                await Server(settings).start()

        asyncio.run(run())
        proc = subprocess.run(
            [sys.executable, "-m", "pacskit", "serve", "--data-dir", str(tmp_path / "cli"), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0
        assert f"cannot listen on 127.0.0.1:{port}: address already in use" in proc.stdout + proc.stderr
    finally:
        blocker.close()


def test_registered_only_mode_off_loopback_refuses_unknown_callers(tmp_path: Path) -> None:
    """Access rule: off loopback only registered AEs may associate (checked via the decision hook)."""
    import asyncio

    from pacskit.net import REJECT_CALLING_AE
    from pacskit.server.access import AccessControl, is_open
    from pacskit.config.aetitles import FileAeRegistry, RemoteAE

    settings = _settings(tmp_path / "srv")
    settings.host = "0.0.0.0"  # not started: we only exercise the rule
    registry = FileAeRegistry(tmp_path / "srv" / "ae-titles.toml")

    class FakeAssoc:
        remote_ae_title = "STRANGER"
        peer_address = ("10.0.0.1", 40000)
        is_tls = False
        peer_certificate = None
        user_identity = None

    def check() -> object:
        return asyncio.run(AccessControl(registry, open_to_unknown=is_open(settings)).check_association(FakeAssoc()))  # type: ignore[arg-type]

    assert check() == REJECT_CALLING_AE
    registry.add(RemoteAE(title="STRANGER", host="10.0.0.1", port=104))
    assert check() is None
    settings.open_mode = True
    FakeAssoc.remote_ae_title = "ANYONE"
    assert check() is None
