"""The logging framework: every destination of ``[logging]`` (text file, JSON lines, syslog to a real
UDP collector, the database) receives an add-in's line tagged with the add-in, the association and the
calling AE, for async handlers and for plain ones running in the handler threads."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from pacskit.services import AddIn
from pacskit.net import SupportedContext
from pacskit.server import logconfig
from pacskit.server.server import Server
from pacskit.config.settings import load_settings
from pacskit.testing.peers import run_echoscu

from .conftest import UdpCollector, parse_syslog

pytestmark = [pytest.mark.dcmtk, pytest.mark.usefixtures("need_dcmtk")]


class EchoLogger(AddIn):
    """Logs from a plain (threaded) C-ECHO handler; the context must reach the handler thread."""

    name = "echo-logger"

    def presentation_contexts(self) -> list[SupportedContext]:
        return [SupportedContext("1.2.840.10008.1.1")]

    def handlers(self) -> dict[str, Any]:
        return {"C-ECHO": self.on_echo}

    def on_echo(self, request: Any) -> int:
        self.base.log.warning("echo answered")
        self.base.log.debug("too detailed for the file")
        self.base.log.info("patient %s", logconfig.phi("DOE^JOHN"))
        return 0


@pytest.fixture
def restore_logging() -> Any:
    root = logging.getLogger()
    level = root.level
    yield
    logconfig.remove_handlers()
    logconfig.set_phi_allowed(False)
    root.setLevel(level)


def test_destinations_get_tagged_records(tmp_path: Path, udp_collector: UdpCollector, restore_logging: Any) -> None:
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text(
        'ae_title = "LOGPACS"\nport = 0\ndata_dir = "data"\n'
        "[logging]\nconsole = false\nlevel = \"DEBUG\"\nfile_level = \"INFO\"\njson_lines = true\n"
        'database = true\ndatabase_level = "WARNING"\n'
        f'[logging.syslog]\nhost = "127.0.0.1"\nport = {udp_collector.port}\nprotocol = "udp"\nlevel = "WARNING"\n'
        'facility = "local3"\n'
    )
    settings = load_settings(folder)
    handlers = logconfig.configure_logging(settings)
    assert len(handlers) == 4  # file, JSON lines, syslog, database

    async def run() -> None:
        async with Server(settings, addin_classes=[EchoLogger]) as server:
            out = await asyncio.to_thread(run_echoscu, "127.0.0.1", server.port, "LOGPACS", "LOGGER")
            assert out.returncode == 0, out.stdout

    asyncio.run(run())
    for h in handlers:
        h.flush()
    queued = [h for h in handlers if isinstance(h, logconfig.QueuedHandler)]
    for h in queued:
        assert h.writer.flush()

    data = settings.data_path
    lines = [json.loads(line) for line in (data / "logs" / "server.jsonl").read_text().splitlines()]
    echo = [rec for rec in lines if rec["logger"] == "pacskit.addin.echo-logger"]
    assert [rec["message"] for rec in echo] == ["echo answered", "too detailed for the file", "patient <phi>"]
    assoc_ids = {rec["association_id"] for rec in echo}
    assert len(assoc_ids) == 1 and isinstance(next(iter(assoc_ids)), int)
    assoc_id = next(iter(assoc_ids))
    assert {(rec["addin"], rec["calling_ae"], rec["service"]) for rec in echo} == {("echo-logger", "LOGGER", "C-ECHO")}
    # records outside a handler carry no association
    assert any(rec["logger"] == "pacskit.server" and rec["association_id"] is None for rec in lines)

    text_lines = (data / "logs" / "server.log").read_text().splitlines()
    tagged = [line for line in text_lines if "pacskit.addin.echo-logger" in line]
    assert len(tagged) == 2  # INFO and WARNING; DEBUG is below file_level
    assert all(f"[echo-logger assoc#{assoc_id} LOGGER]" in line for line in tagged)

    got = [parse_syslog(msg) for msg in udp_collector.wait_for(1)]
    ours = [g for g in got if "echo answered" in g["msg"]]
    assert len(ours) == 1
    assert ours[0]["pri"] == 19 * 8 + 4  # local3.warning
    assert ours[0]["msgid"] == "WARNING"
    assert ours[0]["sd"] == (f'[pacskit@32473 addin="echo-logger" association_id="{assoc_id}" '
                             'calling_ae="LOGGER" service="C-ECHO"]')
    assert not any("too detailed" in g["msg"] or "patient" in g["msg"] for g in got)  # below WARNING

    engine = create_engine(f"sqlite:///{data / 'index.db'}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT level, logger, message, addin, association_id, calling_ae FROM log_records "
                                 "WHERE logger = 'pacskit.addin.echo-logger'")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("WARNING", "pacskit.addin.echo-logger", "echo answered", "echo-logger",
                                         assoc_id, "LOGGER")]
    assert all(h.writer.dropped == 0 for h in queued)


def test_phi_only_when_asked(restore_logging: Any) -> None:
    logconfig.set_phi_allowed(False)
    assert logconfig.phi("DOE^JOHN") == "<phi>"
    logconfig.set_phi_allowed(True)
    assert logconfig.phi("DOE^JOHN") == "DOE^JOHN"


def test_bad_logging_settings_name_the_key(tmp_path: Path) -> None:
    from pacskit.config.settings import SettingsError

    (tmp_path / "server.toml").write_text('[logging.syslog]\nfacility = "nowhere"\n')
    with pytest.raises(SettingsError, match="logging.syslog.facility"):
        load_settings(tmp_path)
    (tmp_path / "server.toml").write_text('[logging]\ndatabase_level = "LOUD"\n')
    with pytest.raises(SettingsError, match="logging.database_level"):
        load_settings(tmp_path)
