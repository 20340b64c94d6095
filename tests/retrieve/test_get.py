"""C-GET from a running pacskit server (SQLite): DCMTK getscu at every level of both models, transfer
syntax conversion for a requestor that takes Implicit VR LE only, and SCP/SCU role selection (only
SOP classes for which the requestor took the SCP role get sub-operations)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian

from pacskit.net import CommandField, RequestedContext, Services, connect
from pacskit.server.server import Server
from pacskit.testing.synth import dataset_bytes

from ._util import (
    CT,
    PACS_AE,
    STUDY_ROOT_GET,
    counts,
    failed_list,
    getscu,
    identifier,
    ingest,
    populate,
    server_settings,
    study_of,
)

pytestmark = [pytest.mark.dcmtk, pytest.mark.usefixtures("need_dcmtk")]



def _by_uid(folder: Path) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.iterdir() if p.is_file()}


def test_getscu_at_every_level(tmp_path: Path) -> None:
    settings = server_settings(tmp_path)

    async def run() -> None:
        async with Server(settings) as server:
            archive = populate(server.store, tmp_path / "src")
            a, c = study_of(archive, 0), study_of(archive, 2)
            series = list(archive.studies[a])[0]
            sop = sorted(archive.sops(series=series))[1]
            cases = [
                ("-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={a}"], archive.sops(study=a)),
                ("-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={a}", f"SeriesInstanceUID={series}"],
                 archive.sops(series=series)),
                ("-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={a}", f"SeriesInstanceUID={series}",
                        f"SOPInstanceUID={sop}"], {sop}),
                ("-P", ["QueryRetrieveLevel=PATIENT", "PatientID=P2"], archive.sops(patient="P2")),
                ("-P", ["QueryRetrieveLevel=IMAGE", "PatientID=P1", f"StudyInstanceUID={a}",
                        f"SeriesInstanceUID={series}", f"SOPInstanceUID={sop}"], {sop}),
            ]
            for i, (model, keys, expected) in enumerate(cases):
                out_dir = tmp_path / f"get{i}"
                out = await getscu(server.port, out_dir, keys, model=model)
                assert "Received C-GET Response (Success)" in out, (keys, out)
                assert f"Number of Completed Suboperations : {len(expected)}" in out, out
                got = _by_uid(out_dir)
                assert set(got) == expected, (keys, out)
                for uid, path in got.items():
                    assert dataset_bytes(path) == dataset_bytes(archive.files[uid])
            assert c  # study C is only fetched through patient P2

    asyncio.run(run())


def test_getscu_gets_compressed_instances_decompressed(tmp_path: Path) -> None:
    """getscu proposes Explicit VR LE only for its storage contexts (even with +xi, DCMTK 3.6.7): the
    RLE instance is decompressed on the way, the Explicit LE one is sent as stored."""
    settings = server_settings(tmp_path)
    rle = get_testdata_file("SC_rgb_rle.dcm")

    async def run() -> None:
        async with Server(settings) as server:
            archive = populate(server.store, tmp_path / "src", per_series=1)
            ingest(server.store, rle)
            rle_ds = dcmread(rle)
            ct_uid = sorted(archive.sops(study=study_of(archive, 0)))[0]
            out_dir = tmp_path / "get"
            out = await getscu(server.port, out_dir, ["QueryRetrieveLevel=IMAGE", f"SOPInstanceUID={ct_uid}\\{rle_ds.SOPInstanceUID}"])
            assert "Received C-GET Response (Success)" in out, out
            got = _by_uid(out_dir)
            assert set(got) == {ct_uid, str(rle_ds.SOPInstanceUID)}
            for uid, path in got.items():
                ds = dcmread(path)
                assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
                source = rle_ds if uid == rle_ds.SOPInstanceUID else dcmread(archive.files[uid])
                if source is not rle_ds:
                    assert dataset_bytes(path) == dataset_bytes(archive.files[uid])
                assert np.array_equal(ds.pixel_array, source.pixel_array)

    asyncio.run(run())


async def _pacskit_get(port: int, ds: Any, *, scp_role: bool, statuses: dict[str, int] | None = None) -> tuple[list, list[str]]:
    received: list[str] = []
    services = Services()

    async def on_store(request: Any) -> int:
        received.append(request.sop_instance_uid)
        return (statuses or {}).get(request.sop_instance_uid, 0x0000)

    services.register("C-STORE", on_store)
    contexts = [RequestedContext(STUDY_ROOT_GET)]
    contexts.append(RequestedContext(CT, scu_role=False, scp_role=True) if scp_role else RequestedContext(CT))
    assoc = await connect("127.0.0.1", port, called_ae=PACS_AE, calling_ae="GETTER", contexts=contexts,
                          services=services)
    rsps = []
    async with assoc:
        async for rsp, rx in assoc.request(CommandField.C_GET_RQ, STUDY_ROOT_GET, ds, Priority=0):
            rsps.append((rsp, rx.decode() if rx is not None else None))
    return rsps, received


def test_get_needs_the_scp_role_and_counts_failures(tmp_path: Path) -> None:
    settings = server_settings(tmp_path, pending_interval=0)

    async def run() -> None:
        async with Server(settings) as server:
            archive = populate(server.store, tmp_path / "src", per_series=2)
            a = study_of(archive, 0)
            uids = sorted(archive.sops(study=a))
            # No role selection: the requestor is only SCU of CT storage; nothing may be sent to it.
            rsps, received = await _pacskit_get(server.port, identifier("STUDY", StudyInstanceUID=a), scp_role=False)
            final, ds = rsps[-1]
            assert received == []
            assert final.status == 0xA702
            assert counts(final)[1:] == (0, len(uids), 0)
            assert sorted(failed_list(ds)) == uids

            rsps, received = await _pacskit_get(server.port, identifier("STUDY", StudyInstanceUID=a), scp_role=True,
                                                statuses={uids[0]: 0xA700})
            assert sorted(received) == uids
            assert [r.status for r, _ in rsps] == [0xFF00] * (len(uids) - 1) + [0xB000]
            final, ds = rsps[-1]
            assert counts(final)[1:] == (len(uids) - 1, 1, 0)
            assert failed_list(ds) == [uids[0]]

    asyncio.run(run())


def test_get_cancel(tmp_path: Path) -> None:
    """C-CANCEL on the C-GET association while a sub-operation is held: the retrieve stops after it."""
    settings = server_settings(tmp_path)

    async def run() -> None:
        async with Server(settings) as server:
            archive = populate(server.store, tmp_path / "src", per_series=3)
            a = study_of(archive, 0)
            n = len(archive.sops(study=a))
            first_store, gate = asyncio.Event(), asyncio.Event()
            received: list[str] = []
            services = Services()

            async def on_store(request: Any) -> int:
                received.append(request.sop_instance_uid)
                first_store.set()
                await gate.wait()
                return 0x0000

            services.register("C-STORE", on_store)
            assoc = await connect("127.0.0.1", server.port, called_ae=PACS_AE, calling_ae="GETTER", services=services,
                                  contexts=[RequestedContext(STUDY_ROOT_GET), RequestedContext(CT, scu_role=False, scp_role=True)])
            rsps = []
            async with assoc:
                message_id = assoc.last_message_id + 1

                async def cancel_then_release() -> None:
                    await first_store.wait()
                    # The C-CANCEL leaves before the C-STORE-RSP on the same connection, so the server
                    # reads it first.
                    await assoc.cancel(message_id, assoc.find_context(STUDY_ROOT_GET))
                    gate.set()

                task = asyncio.ensure_future(cancel_then_release())
                async for rsp, _ in assoc.request(CommandField.C_GET_RQ, STUDY_ROOT_GET,
                                                  identifier("STUDY", StudyInstanceUID=a), Priority=0):
                    rsps.append(rsp)
                await task
            final = rsps[-1]
            assert final.status == 0xFE00
            remaining, completed, failed, _ = counts(final)
            assert completed == len(received) == 1 and failed == 0 and remaining == n - 1

    asyncio.run(run())
