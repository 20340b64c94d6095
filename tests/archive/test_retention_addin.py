"""The retention add-in in a server: rules from server.toml, a run through the admin API (dry run
first), the studies deleted crash-safely and audited as Study Deleted by the rule, the report kept;
a pass skipped while another process of the archive runs one."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import httpx
from sqlalchemy import select, update

from pacskit.addins.audit import AuditAddIn
from pacskit.addins.retention import RetentionAddIn
from pacskit.addins.storage import StorageAddIn
from pacskit.config.settings import load_settings
from pacskit.server.server import Server
from pacskit.store import Instance
from pacskit.store.exclusive import ExclusiveTasks
from pacskit.store.records import AuditRecord
from pacskit.testing.synth import make_series


def test_retention_run_dry_then_for_real(tmp_path: Path) -> None:
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text(
        'ae_title = "RETAIN"\nport = 0\ndata_dir = "data"\n'
        '[addins.retention]\nenabled = true\ninterval = 86400\ndry_run = true\n'
        'rules = [{name = "us-30d", max_age_days = 30, source_aes = ["US1"]}]\n'
    )

    async def run() -> None:
        server = Server(load_settings(folder), addin_classes=[StorageAddIn, AuditAddIn, RetentionAddIn])
        await server.start()
        try:
            store = server.store
            uids = {}
            for name, ae in (("old-us", "US1"), ("old-ct", "CT1"), ("new-us", "US1")):
                for path in make_series(tmp_path / name, 2, 16, 16, patient_id=name.upper()):
                    uids[name] = store.ingest(path, source_ae=ae).sop_instance_uid
            old = dt.datetime.now(dt.UTC) - dt.timedelta(days=45)
            store.index.run_write(lambda s: s.execute(
                update(Instance).where(Instance.source_ae.in_(["US1", "CT1"]))
                .where(Instance.sop_instance_uid != uids["new-us"]).values(received_at=old)))
            # new-us has one old instance and one new one: the study is not old
            # another process of the archive (a worker, a node) running its pass: this one skips its turn
            with ExclusiveTasks(store.index.engine, server.settings.data_path).hold("retention") as held:
                assert held
                skipped = await server_addin_run(server)
            assert "another process" in skipped["skipped"] and store.count("studies") == 3
            transport = httpx.AsyncHTTPTransport(uds=str(server.settings.admin_socket_path))
            async with httpx.AsyncClient(transport=transport, base_url="http://admin") as api:
                dry = (await api.post("/addins/retention/run", json={})).json()
                assert dry["dry_run"] and dry["deleted_instances"] == 0
                [sel] = dry["selections"]
                assert sel["rule"] == "us-30d" and [s["patient_id"] for s in sel["studies"]] == ["OLD-US"]
                assert store.count("studies") == 3
                done = (await api.post("/addins/retention/run", json={"dry_run": False})).json()
                assert done["deleted_instances"] == 2 and not done["failed"]
                assert store.count("studies") == 2 and store.get_instance(uids["old-us"]) is None
                reports = (await api.get("/addins/retention/reports")).json()
                # the pass at start-up (dry), the skipped one, the dry run, the real one
                assert [r["dry_run"] for r in reports] == [True, False, True, False]
                assert "skipped" in reports[1] and "skipped" not in reports[3]
            assert store.check().ok
        finally:
            await server.stop()
        lines = (folder / "data" / "retention" / "reports.jsonl").read_text().splitlines()
        assert [json.loads(line)["dry_run"] for line in lines][-2:] == [True, False]
        with server_engine(folder) as conn:
            xml = list(conn.execute(select(AuditRecord.xml).where(AuditRecord.event_id == "110105")).scalars())
        assert len(xml) == 1 and "retention:us-30d" in xml[0] and "OLD-US" in xml[0]

    asyncio.run(run())


async def server_addin_run(server: Server) -> dict:  # type: ignore[type-arg]
    transport = httpx.AsyncHTTPTransport(uds=str(server.settings.admin_socket_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as api:
        return (await api.post("/addins/retention/run", json={"dry_run": False})).json()  # type: ignore[no-any-return]


def server_engine(folder: Path):  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    settings = load_settings(folder)
    return create_engine(settings.database_url).connect()
