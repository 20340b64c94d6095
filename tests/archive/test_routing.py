"""The routing add-in with real destinations: DCMTK storescp and Orthanc.

storescp is down when the study arrives; Orthanc gets it at once. The server is killed with SIGKILL
while jobs wait (and, where the timing allows, while it forwards), restarted, storescp comes up: both
destinations end with every instance, storescp's first copies in the order the modality sent them.
Then the queue's operator side: a destination that refuses is listed as failed, retried, purged.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from pacskit.config.aetitles import FileAeRegistry, RemoteAE
from pacskit.testing.peers import (
    count_store_successes,
    free_port,
    have_dcmtk,
    have_orthanc,
    orthanc,
    run_storescu,
    storescp,
    wait_for_port,
)
from pacskit.testing.synth import make_series

pytestmark = [pytest.mark.dcmtk, pytest.mark.slow]

_SERVER = textwrap.dedent("""
    import asyncio, sys
    from pacskit.config.settings import load_settings
    from pacskit.server.server import Server
    from pacskit.addins.storage import StorageAddIn
    from pacskit.addins.verification import VerificationAddIn
    from pacskit.addins.routing import RoutingAddIn

    async def main():
        server = Server(load_settings(sys.argv[1]), addin_classes=[VerificationAddIn, StorageAddIn, RoutingAddIn])
        await server.start()
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def _wait(condition, what: str, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _start(folder: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(folder)], stdout=subprocess.DEVNULL,
                            stderr=open(folder / "server.log", "ab"))  # noqa: SIM115
    wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
    return proc


def _orthanc_sop_uids(peer) -> set[str]:  # type: ignore[no-untyped-def]
    base = f"http://127.0.0.1:{peer.http_port}"
    ids = httpx.get(f"{base}/instances", timeout=10).json()
    return {httpx.get(f"{base}/instances/{i}/simplified-tags", timeout=10).json()["SOPInstanceUID"] for i in ids}


def _received_order(scp) -> list[str]:  # type: ignore[no-untyped-def]
    """SOP Instance UIDs in the order storescp stored them (its verbose log; mtimes are too coarse)."""
    paths = re.findall(r"storing DICOM file: (.+)$", scp.log_text(), flags=re.M)
    return [str(pydicom.dcmread(p.strip(), stop_before_pixels=True).SOPInstanceUID) for p in paths]


def test_forward_to_storescp_and_orthanc_with_one_down_and_a_kill_9(tmp_path: Path) -> None:
    if not have_dcmtk() or not have_orthanc():
        pytest.skip("DCMTK and Orthanc are needed")
    src = make_series(tmp_path / "study", 40, 64, 64, patient_id="ROUTE1")
    sent_order = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in src]
    port, scp_port = free_port(), free_port()
    folder = tmp_path / "pacs"
    folder.mkdir()
    with orthanc(tmp_path / "orthanc") as orth:
        registry = FileAeRegistry(folder / "ae-titles.toml")
        registry.add(RemoteAE(title="STORESCP", host="127.0.0.1", port=scp_port))
        registry.add(RemoteAE(title="ORTHANC", host="127.0.0.1", port=orth.port))
        registry.add(RemoteAE(title="MODALITY", host="127.0.0.1", port=104))
        (folder / "server.toml").write_text(
            f'ae_title = "ROUTER"\nport = {port}\n'
            '[addins.routing]\nenabled = true\nscan_interval = 0.5\nbatch = 8\nretry_initial = 0.5\nretry_max = 2\n'
            'rules = [{name = "ct", modalities = ["CT"], calling_aes = ["MODALITY"], '
            'destinations = ["STORESCP", "ORTHANC"]}, {name = "never", modalities = ["MR"], destinations = ["ORTHANC"]}]\n')
        server = _start(folder, port)
        try:
            sent = run_storescu("127.0.0.1", port, src, called="ROUTER", calling="MODALITY")
            assert count_store_successes(sent) == 40, sent.stdout
            _wait(lambda: len(_orthanc_sop_uids(orth)) >= 10, "Orthanc to receive some")
        finally:
            server.send_signal(signal.SIGKILL)  # storescp is still down: its 40 jobs wait in the queue
            server.wait(30)
        server = _start(folder, port)
        try:
            with storescp(tmp_path / "scp", port=scp_port, extra_args=["-v"]) as scp:
                _wait(lambda: len(_orthanc_sop_uids(orth)) == 40, "Orthanc to have the study")
                _wait(lambda: len({*_received_order(scp)}) == 40, "storescp to have the study")
                order = list(dict.fromkeys(_received_order(scp)))  # first copies (resends after the kill)
                assert order == sent_order
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(folder / "ROUTER.sock")),
                              base_url="http://x") as api:
                _wait(lambda: api.get("/addins/routing/status").json()["queue"] == {}, "an empty queue")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    assert _orthanc_sop_uids is not None


def test_waiting_and_failed_jobs_are_listed_retried_and_purged(tmp_path: Path) -> None:
    """A destination that is down keeps its jobs queued (retried with backoff); a job whose instance
    was deleted meanwhile fails (not retried by itself); the operator lists, retries and purges."""
    if not have_dcmtk():
        pytest.skip("DCMTK is needed")
    src = make_series(tmp_path / "study", 3, 16, 16, patient_id="ROUTE2")
    doomed = str(pydicom.dcmread(src[0], stop_before_pixels=True).SOPInstanceUID)
    port, down_port = free_port(), free_port()  # nothing listens on down_port
    folder = tmp_path / "pacs"
    folder.mkdir()
    registry = FileAeRegistry(folder / "ae-titles.toml")
    registry.add(RemoteAE(title="DOWN", host="127.0.0.1", port=down_port))
    (folder / "server.toml").write_text(
        f'ae_title = "ROUTER"\nport = {port}\nopen_mode = true\n'
        '[addins.routing]\nenabled = true\nscan_interval = 0.5\nretry_initial = 0.2\nretry_max = 0.5\n'
        'rules = [{name = "all", destinations = ["DOWN"]}]\n')
    server = _start(folder, port)
    try:
        assert count_store_successes(run_storescu("127.0.0.1", port, src, called="ROUTER")) == 3
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(folder / "ROUTER.sock")), base_url="http://x") as api:
            def jobs() -> list[dict]:  # type: ignore[type-arg]
                return api.get("/addins/routing/queue").json()

            _wait(lambda: len(jobs()) == 3 and jobs()[0]["attempts"] >= 2, "retries of the head job")
            assert all(job["state"] == "queued" for job in jobs())
            assert "refused" in jobs()[0]["last_error"].lower() or "connect" in jobs()[0]["last_error"].lower()
            assert api.post("/store/delete", json={"level": "instance", "uids": [doomed]}).status_code == 200
            _wait(lambda: [j["state"] for j in jobs()] == ["failed", "queued", "queued"], "the deleted one failed")
            failed = jobs()[0]
            assert "no longer in the archive" in failed["last_error"]
            listed = subprocess.run([sys.executable, "-m", "pacskit", "route", "list", "--state", "failed",
                                     "--data-dir", str(folder), "--json"], capture_output=True, text=True, timeout=60)
            assert listed.returncode == 0, listed.stderr
            assert [j["id"] for j in json.loads(listed.stdout)] == [failed["id"]]
            assert api.post("/addins/routing/retry", json={"ids": [failed["id"]]}).json()["retried"] == 1
            _wait(lambda: jobs()[0]["state"] == "failed" and jobs()[0]["attempts"] > failed["attempts"], "the retry")
            purged = subprocess.run([sys.executable, "-m", "pacskit", "route", "purge", "--data-dir", str(folder)],
                                    capture_output=True, text=True, timeout=60)
            assert purged.returncode == 0 and re.search(r"purged 3\b", purged.stdout), purged.stdout
            assert jobs() == []
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def test_a_backlog_larger_than_a_scan_is_routed_whole(tmp_path: Path) -> None:
    """More instances than one scan reads (batch 1: 16 rows a scan), routed from the archive at the
    first start (route_existing): every one reaches storescp, and none twice from the scan."""
    if not have_dcmtk():
        pytest.skip("DCMTK is needed")
    import asyncio

    from pacskit.addins.routing import RoutingAddIn
    from pacskit.addins.storage import StorageAddIn
    from pacskit.config.settings import load_settings
    from pacskit.server.server import Server, open_store

    folder = tmp_path / "pacs"
    folder.mkdir()
    with storescp(tmp_path / "scp", extra_args=["-v"]) as scp:
        FileAeRegistry(folder / "ae-titles.toml").add(RemoteAE(title="DEST", host="127.0.0.1", port=scp.port))
        (folder / "server.toml").write_text(
            'ae_title = "ROUTER"\nport = 0\n[admin]\nenabled = false\n'
            '[addins.routing]\nenabled = true\nroute_existing = true\nbatch = 1\nscan_interval = 0.2\n'
            'rules = [{name = "all", destinations = ["DEST"]}]\n')
        store = open_store(load_settings(folder))
        for path in make_series(tmp_path / "src", 300, 8, 8):
            store.ingest(path, source_ae="MOD")
        store.close()

        async def run() -> None:
            server = Server(load_settings(folder), addin_classes=[StorageAddIn, RoutingAddIn])
            await server.start()
            try:
                routing = next(a for a in server.addins if a.name == "routing")
                # sent counts an answer at once; the queue forgets jobs in batches after the answers
                for _ in range(1200):
                    if routing.sent >= 300 and not routing.queue.counts():
                        break
                    await asyncio.sleep(0.05)
                assert routing.sent == 300
                assert routing.queue.counts() == {}
            finally:
                await server.stop()

        asyncio.run(run())
        received = _received_order(scp)
        assert len(received) == 300 == len(set(received))


def test_rule_conditions() -> None:
    import datetime as dt
    from types import SimpleNamespace

    from pacskit.addins.routing import Rule, _rule_matches

    local = dt.datetime.now().astimezone()
    at = lambda h, m: local.replace(hour=h, minute=m, second=0, microsecond=0)  # noqa: E731
    row = SimpleNamespace(source_ae="CT1", modality="CT", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                          received_at=at(23, 30))
    header = pydicom.Dataset()
    header.StudyDescription = "CT BRAIN"
    base = {"name": "r", "destinations": ["X"]}
    assert _rule_matches(Rule(**base), row, header)
    assert _rule_matches(Rule(**base, calling_aes=["CT1"], modalities=["CT"], match={"StudyDescription": "*BRAIN"}),
                         row, header)
    assert not _rule_matches(Rule(**base, calling_aes=["MR1"]), row, header)
    assert not _rule_matches(Rule(**base, match={"StudyDescription": "*CHEST*"}), row, header)
    assert _rule_matches(Rule(**base, time_window="22:00-06:00"), row, header)  # wraps midnight
    assert not _rule_matches(Rule(**base, time_window="08:00-18:00"), row, header)
    row.received_at = at(8, 0)
    assert _rule_matches(Rule(**base, time_window="08:00-18:00"), row, header)
    with pytest.raises(ValueError):
        Rule(**base, time_window="8-18")
