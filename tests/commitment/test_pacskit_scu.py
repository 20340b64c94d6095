"""pacskit's StorageCommitmentScu against the pacskit server's commitment add-in: the report on the
same association and on a new one, missing / corrupted / never stored instances, bad requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pacskit.client import NServiceScu
from pacskit.client.commitment import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    SopReference,
    StorageCommitmentScu,
    action_information,
)
from pacskit.server.server import Server
from pacskit.testing.peers import free_port

from ._util import (
    CT,
    MR,
    PACS_AE,
    blob_path,
    corrupt,
    hold_checks_until_released,
    reasons,
    register,
    request_rows,
    server_settings,
    store_files,
    wait_for_states,
)


def _scu(port: int, **kw: object) -> StorageCommitmentScu:
    return StorageCommitmentScu(f"{PACS_AE}@127.0.0.1:{port}", calling_ae="MODALITY", report_timeout=20, **kw)


def test_report_on_the_same_association(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)

    async def run() -> None:
        async with Server(settings) as server:
            stored = store_files(server.store, tmp_path / "src", 3)
            result = await _scu(server.port).commit([path for path, _ in stored])
            assert result.action_status == 0
            assert result.reported and result.same_association is True
            assert result.event_type_id == 1
            assert set(result.committed) == {ref for _, ref in stored}
            assert result.failed == [] and result.ok
            rows = await wait_for_states(server.store, "reported")
            assert [(r.state, r.requester_ae, r.transaction_uid) for r in rows] == [
                ("reported", "MODALITY", result.transaction_uid)]

    asyncio.run(run())


def test_report_on_a_new_association_after_release(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)
    receive = free_port()
    register(settings, "MODALITY", receive)

    async def run() -> None:
        async with Server(settings) as server:
            stored = store_files(server.store, tmp_path / "src", 2)
            hold_checks_until_released(server)
            scu = _scu(server.port, receive_port=receive, receive_host="127.0.0.1", release_after_request=True)
            result = await scu.commit([ref for _, ref in stored])
            assert result.reported and result.same_association is False
            assert result.ok and result.event_type_id == 1

    asyncio.run(run())


def test_same_association_off_reports_on_a_new_one(tmp_path: Path) -> None:
    settings = server_settings(tmp_path, report_on_same_association=False)
    receive = free_port()
    register(settings, "MODALITY", receive)

    async def run() -> None:
        async with Server(settings) as server:
            stored = store_files(server.store, tmp_path / "src", 1)
            result = await _scu(server.port, receive_port=receive, receive_host="127.0.0.1").commit([stored[0][1]])
            assert result.reported and result.same_association is False and result.ok

    asyncio.run(run())


def test_missing_corrupted_and_unknown_instances_fail_with_their_reason(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)

    async def run() -> None:
        async with Server(settings) as server:
            stored = store_files(server.store, tmp_path / "src", 4)
            (_, good), (_, missing), (_, corrupted), (_, conflict) = stored
            blob_path(server.store, missing.sop_instance_uid).unlink()
            corrupt(blob_path(server.store, corrupted.sop_instance_uid))
            never = SopReference(CT, "1.2.826.0.1.3680043.8.498.999999")
            unsupported = SopReference("1.2.3.4.5", "1.2.826.0.1.3680043.8.498.999998")
            wrong_class = SopReference(MR, conflict.sop_instance_uid)
            result = await _scu(server.port).commit([good, missing, corrupted, wrong_class, never, unsupported])
            assert result.action_status == 0 and result.reported
            assert result.event_type_id == 2 and not result.ok
            assert result.committed == [good]
            assert reasons(result.failed) == {
                missing.sop_instance_uid: 0x0110,
                corrupted.sop_instance_uid: 0x0110,
                conflict.sop_instance_uid: 0x0119,
                never.sop_instance_uid: 0x0112,
                unsupported.sop_instance_uid: 0x0122,
            }
            assert result.missing == []
            # the store itself is not changed by a commitment check
            assert server.store.get_instance(missing.sop_instance_uid) is not None

    asyncio.run(run())


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_bad_requests_get_their_status_and_the_server_goes_on(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)

    async def run() -> None:

        async with Server(settings) as server:
            stored = store_files(server.store, tmp_path / "src", 1)
            ref = stored[0][1]
            target = f"{PACS_AE}@127.0.0.1:{server.port}"
            no_transaction = action_information("1.2.3", [ref])
            del no_transaction.TransactionUID
            bad_uid = action_information("1.2.3", [SopReference(CT, "1.2/4")])  # ("1.2.x.4" may be stored: accepted)
            empty = action_information("1.2.3", [])
            bad_transaction = action_information("01.2.3", [ref])
            cases = [
                (STORAGE_COMMITMENT_INSTANCE, 1, no_transaction, 0x0115),
                (STORAGE_COMMITMENT_INSTANCE, 1, bad_uid, 0x0115),
                (STORAGE_COMMITMENT_INSTANCE, 1, empty, 0x0115),
                (STORAGE_COMMITMENT_INSTANCE, 1, bad_transaction, 0x0115),
                (STORAGE_COMMITMENT_INSTANCE, 1, None, 0x0115),
                (STORAGE_COMMITMENT_INSTANCE, 2, action_information("1.2.3", [ref]), 0x0123),
                ("1.2.840.10008.1.20.1.2", 1, action_information("1.2.3", [ref]), 0x0112),
                ("1.2.840.10008.1.20.1.1.", 1, action_information("1.2.3", [ref]), 0x0117),
            ]
            async with NServiceScu(target, [STORAGE_COMMITMENT_PUSH_MODEL], calling_ae="MODALITY") as scu:
                for instance, action, ds, expected in cases:
                    answer = await scu.n_action(STORAGE_COMMITMENT_PUSH_MODEL, instance, action, ds)
                    assert answer.status == expected, (instance, action, ds, answer)
                    assert answer.error_comment
            assert request_rows(server.store) == []  # nothing refused was recorded
            result = await _scu(server.port).commit([ref])  # and the server goes on
            assert result.ok

    asyncio.run(run())


def test_too_many_references_is_a_resource_limitation(tmp_path: Path) -> None:
    settings = server_settings(tmp_path, max_references=2)

    async def run() -> None:
        async with Server(settings) as server:
            refs = [SopReference(CT, f"1.2.3.{i}") for i in range(3)]
            result = await _scu(server.port).commit(refs)
            assert result.action_status == 0x0213 and not result.reported

    asyncio.run(run())


def test_requester_registered_without_commit_is_refused(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)
    register(settings, "MODALITY", free_port(), allowed_services={"store"})

    async def run() -> None:
        async with Server(settings) as server:
            result = await _scu(server.port).commit([SopReference(CT, "1.2.3.4")])
            assert result.action_status == 0x0124

    asyncio.run(run())


def test_a_failed_check_is_retried(tmp_path: Path) -> None:
    """The store check fails once (an I/O error reading the index or a file): it is tried again and
    the report still comes."""
    settings = server_settings(tmp_path, retry_backoff=0.0)

    async def run() -> None:
        async with Server(settings) as server:
            stored = store_files(server.store, tmp_path / "src", 1)
            verify = server.store.verify_instances
            calls: list[int] = []

            def flaky(uids: object) -> object:
                calls.append(1)
                if len(calls) == 1:
                    raise OSError(5, "Input/output error")
                return verify(uids)

            server.store.verify_instances = flaky
            result = await _scu(server.port).commit([stored[0][1]])
            assert result.ok and len(calls) == 2

    asyncio.run(run())


def test_no_report_within_the_timeout(tmp_path: Path) -> None:
    settings = server_settings(tmp_path, delay=3600)  # the server will not report within the test

    async def run() -> None:
        async with Server(settings) as server:
            stored = store_files(server.store, tmp_path / "src", 1)
            scu = StorageCommitmentScu(f"{PACS_AE}@127.0.0.1:{server.port}", calling_ae="MODALITY", report_timeout=0.3)
            result = await scu.commit([stored[0][1]])
            assert result.action_status == 0 and not result.reported and not result.ok
            assert result.missing == [stored[0][1]]
            assert [r.state for r in request_rows(server.store)] == ["pending"]

    asyncio.run(run())
