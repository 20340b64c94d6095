"""Orthanc 1.10 both ways: as the storage commitment requester of the pacskit server (REST
``POST /modalities/{id}/storage-commitment``; Orthanc closes its association after the N-ACTION and
takes the report on a new one, so pacskit's AE registry must know it), and as the SCP that pacskit's
StorageCommitmentScu asks (Orthanc answers for the instances it holds, on a new association to us)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pacskit.client.commitment import SopReference, StorageCommitmentScu
from pacskit.server.server import Server
from pacskit.testing.peers import free_port, have_orthanc, orthanc

from ._util import (
    CT,
    MR,
    PACS_AE,
    blob_path,
    corrupt,
    hold_checks_until_released,
    register,
    server_settings,
    store_files,
    wait_for_states,
)

pytestmark = pytest.mark.orthanc


@pytest.fixture(autouse=True)
def need_orthanc() -> None:
    if not have_orthanc():
        pytest.skip("Orthanc is not installed")


async def _orthanc_report(peer: Any, refs: list[SopReference]) -> dict[str, Any]:
    """Ask pacskit (Orthanc modality "pacs") through Orthanc's REST API; wait for the report."""
    body = {"DicomInstances": [{"SOPClassUID": r.sop_class_uid, "SOPInstanceUID": r.sop_instance_uid} for r in refs]}
    answer = await asyncio.to_thread(peer.post, "/modalities/pacs/storage-commitment", body)
    for _ in range(400):
        report = await asyncio.to_thread(peer.get, answer["Path"])
        if report["Status"] != "Pending":
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"Orthanc got no report: {report}")


def _failures(report: dict[str, Any]) -> dict[str, int]:
    return {f["SOPInstanceUID"]: f["FailureReason"] for f in report["Failures"]}


def test_orthanc_requests_and_gets_the_report_on_a_new_association(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)

    async def run() -> None:
        async with Server(settings) as server:
            stored = store_files(server.store, tmp_path / "src", 5)
            (_, good), (_, good2), (_, missing), (_, corrupted), (_, conflict) = stored
            blob_path(server.store, missing.sop_instance_uid).unlink()
            corrupt(blob_path(server.store, corrupted.sop_instance_uid))
            never = SopReference(CT, "1.2.826.0.1.3680043.8.498.777")
            with orthanc(tmp_path / "orthanc", modalities={"pacs": [PACS_AE, "127.0.0.1", server.port]}) as peer:
                register(settings, "ORTHANC", peer.dicom_port)
                hold_checks_until_released(server)  # Orthanc releases at once; see _util
                report = await _orthanc_report(peer, [good, good2, missing, corrupted, SopReference(MR, conflict.sop_instance_uid), never])
                assert report["Status"] == "Failure", report
                assert report["RemoteAET"] == PACS_AE
                assert {s["SOPInstanceUID"] for s in report["Success"]} == {good.sop_instance_uid, good2.sop_instance_uid}
                assert _failures(report) == {
                    missing.sop_instance_uid: 0x0110,
                    corrupted.sop_instance_uid: 0x0110,
                    conflict.sop_instance_uid: 0x0119,
                    never.sop_instance_uid: 0x0112,
                }
                all_good = await _orthanc_report(peer, [good, good2])
                assert all_good["Status"] == "Success" and not all_good["Failures"]
                rows = await wait_for_states(server.store, "reported", "reported")
                assert [r.requester_ae for r in rows] == ["ORTHANC", "ORTHANC"]

    asyncio.run(run())


def test_orthanc_requester_unknown_to_pacskit_gets_no_report(tmp_path: Path) -> None:
    """Without an AE registry entry there is nowhere to report: the request ends ``failed``."""
    settings = server_settings(tmp_path, report_attempts=1)

    async def run() -> None:
        async with Server(settings) as server:
            stored = store_files(server.store, tmp_path / "src", 1)
            with orthanc(tmp_path / "orthanc", modalities={"pacs": [PACS_AE, "127.0.0.1", server.port]}) as peer:
                hold_checks_until_released(server)
                body = {"DicomInstances": [{"SOPClassUID": stored[0][1].sop_class_uid,
                                            "SOPInstanceUID": stored[0][1].sop_instance_uid}]}
                answer = await asyncio.to_thread(peer.post, "/modalities/pacs/storage-commitment", body)
                rows = await wait_for_states(server.store, "failed")
                assert rows[0].state == "failed" and "not in the AE registry" in rows[0].last_error
                assert (await asyncio.to_thread(peer.get, answer["Path"]))["Status"] == "Pending"

    asyncio.run(run())


def test_storage_commitment_scu_against_orthanc_as_scp(tmp_path: Path) -> None:
    receive = free_port()
    files = [Path(p) for p, _ in _make(tmp_path / "src", 3)]

    async def run() -> None:
        with orthanc(tmp_path / "orthanc", modalities={"modality": ["MODALITY", "127.0.0.1", receive]}) as peer:
            for path in files[:2]:  # Orthanc holds two of the three
                await asyncio.to_thread(peer.post, "/instances", path.read_bytes())
            scu = StorageCommitmentScu(f"ORTHANC@127.0.0.1:{peer.dicom_port}", calling_ae="MODALITY",
                                       receive_port=receive, receive_host="127.0.0.1", report_timeout=30)
            result = await scu.commit(files)
            assert result.action_status == 0 and result.reported, peer.log_text()[-2000:]
            assert result.same_association is False  # Orthanc reports on a new association
            assert result.event_type_id == 2
            refs = _refs(files)
            assert set(result.committed) == set(refs[:2])
            assert [(f.reference, f.reason) for f in result.failed] == [(refs[2], 0x0112)]

            released = StorageCommitmentScu(f"ORTHANC@127.0.0.1:{peer.dicom_port}", calling_ae="MODALITY",
                                            receive_port=receive, receive_host="127.0.0.1", report_timeout=30,
                                            release_after_request=True)
            result = await released.commit(files[:2])
            assert result.ok and result.event_type_id == 1

    asyncio.run(run())


def _make(folder: Path, n: int) -> list[tuple[Path, None]]:
    from pacskit.testing.synth import make_instance

    return [(make_instance(folder / f"i{i}.dcm", instance_number=i + 1), None) for i in range(n)]


def _refs(files: list[Path]) -> list[SopReference]:
    from pacskit.client.commitment import references_from_files

    return references_from_files(files)
