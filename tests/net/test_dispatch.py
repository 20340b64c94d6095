"""Request dispatch on a pacskit acceptor, driven by the pacskit requestor: C-CANCEL of a C-FIND, handler
failures and bad return values, and plain-function handlers that must not block the event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest
from pydicom.dataset import Dataset

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import NetConfig, RequestedContext, Response, Services, SupportedContext, connect
from pacskit.net.dimse import CommandField

from ._util import AE, LOCALHOST, SECONDARY_CAPTURE, make_instance, serving, wait_until

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
CONTEXTS = [
    SupportedContext(VERIFICATION_SOP_CLASS),
    SupportedContext(PATIENT_ROOT_FIND),
    SupportedContext(STUDY_ROOT_FIND),
    SupportedContext(SECONDARY_CAPTURE),
]
REQUESTED = [
    RequestedContext(VERIFICATION_SOP_CLASS),
    RequestedContext(PATIENT_ROOT_FIND),
    RequestedContext(STUDY_ROOT_FIND),
    RequestedContext(SECONDARY_CAPTURE),
]


def query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientID = "*"
    return ds


def match(n: int) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientID = f"P{n:04d}"
    return ds


def test_c_cancel_stops_a_find():
    produced: list[int] = []
    saw_cancel = asyncio.Event()

    async def on_find(req):
        for n in range(200):
            if req.cancelled.is_set():
                saw_cancel.set()
                return
            produced.append(n)
            yield Response(0xFF00, match(n))
            await asyncio.sleep(0.01)

    services = Services()
    services.register("C-FIND", on_find)
    services.register("C-ECHO", lambda req: 0)

    async def main():
        async with serving(services, CONTEXTS) as acceptor:
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=REQUESTED) as assoc:
                ctx = assoc.find_context(PATIENT_ROOT_FIND)
                results = []
                async for status, ds in assoc.find(PATIENT_ROOT_FIND, query()):
                    results.append((status, ds.PatientID if ds is not None else None))
                    if len(results) == 2:
                        await assoc.cancel(assoc.last_message_id, ctx)
                # the association is still usable
                echo = await assoc.echo()
        return results, echo

    results, echo = asyncio.run(main())
    assert results[:2] == [(0xFF00, "P0000"), (0xFF00, "P0001")]
    assert results[-1] == (0xFE00, None)
    # a few Pending responses may have crossed the C-CANCEL on the wire, not the 200 the handler had
    assert len(results) < 150
    assert all(status == 0xFF00 for status, _ in results[:-1])
    assert saw_cancel.is_set()
    assert len(produced) < 150
    assert echo == 0


def test_find_handler_exception_gives_failure_and_association_continues(caplog):
    async def on_find(req):
        if req.sop_class_uid == STUDY_ROOT_FIND:
            yield Response(0xFF00, match(1))
            raise RuntimeError("database went away mid-query")
        raise ValueError("no database at all")
        yield  # pragma: no cover - makes this an async generator

    services = Services()
    services.register("C-FIND", on_find)
    services.register("C-ECHO", lambda req: 0x0000)

    async def main():
        async with serving(services, CONTEXTS) as acceptor:
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=REQUESTED) as assoc:
                first = [status async for status, _ in assoc.find(PATIENT_ROOT_FIND, query())]
                second = [status async for status, _ in assoc.find(STUDY_ROOT_FIND, query())]
                echo = await assoc.echo()
        return first, second, echo, assoc

    first, second, echo, assoc = asyncio.run(main())
    assert first == [0xC000]
    assert second == [0xFF00, 0xC000]
    assert echo == 0x0000
    assert assoc.is_released and not assoc.is_aborted
    assert any("C-FIND handler failed" in r.getMessage() for r in caplog.records)


def test_failure_status_carries_error_comment():
    async def on_find(req):
        raise KeyError("boom")

    services = Services()
    services.register("C-FIND", on_find)

    async def main():
        async with serving(services, CONTEXTS) as acceptor:
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=REQUESTED) as assoc:
                return [rsp async for rsp, _ in assoc.request(CommandField.C_FIND_RQ, PATIENT_ROOT_FIND, query(), Priority=0)]

    [rsp] = asyncio.run(main())
    assert rsp.status == 0xC000
    assert "KeyError" in rsp["ErrorComment"]
    assert len(rsp["ErrorComment"]) <= 64


@pytest.mark.parametrize(
    ("service", "bad_value", "expected"),
    [
        ("C-ECHO", "ok", 0x0110),  # a string is not a status
        ("C-ECHO", None, 0x0110),  # no status at all
        ("C-STORE", {"status": 0}, 0xC000),
        ("C-STORE", 3.5, 0xC000),
    ],
)
def test_handler_returning_wrong_type_gives_failure(service, bad_value, expected, tmp_path):
    source = make_instance(tmp_path / "img.dcm", rows=16, cols=16)

    async def handler(req):
        return bad_value

    services = Services()
    services.register(service, handler)
    if service != "C-ECHO":
        services.register("C-ECHO", lambda req: 0)

    async def main():
        async with serving(services, CONTEXTS, config=NetConfig(temp_dir=str(tmp_path))) as acceptor:
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=REQUESTED) as assoc:
                if service == "C-ECHO":
                    status = await assoc.echo()
                else:
                    status = (await assoc.store(source)).status
                # the association goes on
                again = await assoc.echo() if service != "C-ECHO" else None
        return status, again

    status, again = asyncio.run(main())
    assert status == expected
    assert again in (None, 0)
    # the temp file of the failed store was removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.dcm"]


def test_unserved_service_gets_unrecognized_operation():
    services = Services()
    services.register("C-ECHO", lambda req: 0)

    async def main():
        async with serving(services, CONTEXTS) as acceptor:
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=REQUESTED) as assoc:
                return [status async for status, _ in assoc.find(PATIENT_ROOT_FIND, query())]

    assert asyncio.run(main()) == [0x0211]


def test_blocking_sync_handler_does_not_block_other_associations():
    """A plain-function handler runs in the thread pool: while it is stuck, another association's echo
    completes. Ordering only: the slow handler is released by the test after the fast echo is done."""
    order: list[str] = []
    started = threading.Event()
    release = threading.Event()

    def on_echo(req):  # plain function: the engine runs it in its executor
        if req.assoc.remote_ae_title == "SLOW":
            order.append("slow handler started")
            started.set()
            released = release.wait(10)
            order.append("slow handler returns" + ("" if released else " (timed out)"))
        return 0x0000

    services = Services()
    services.register("C-ECHO", on_echo)

    async def main():
        async with serving(services, CONTEXTS) as acceptor:
            slow = await connect(LOCALHOST, acceptor.port, called_ae=AE, calling_ae="SLOW", contexts=REQUESTED)
            fast = await connect(LOCALHOST, acceptor.port, called_ae=AE, calling_ae="FAST", contexts=REQUESTED)
            slow_echo = asyncio.create_task(slow.echo())
            assert await asyncio.to_thread(started.wait, 10)
            status = await fast.echo()
            order.append("fast echo done")
            release.set()
            slow_status = await slow_echo
            await fast.release()
            await slow.release()
        return status, slow_status

    status, slow_status = asyncio.run(main())
    assert (status, slow_status) == (0, 0)
    assert order == ["slow handler started", "fast echo done", "slow handler returns"]


def test_sync_handler_sleeping_does_not_delay_echo_on_other_association():
    """The brief's variant: a plain handler that sleeps 1 s; the other association's echo completes while
    it sleeps (observed by order of events, not by measuring speed)."""
    import time

    order: list[str] = []

    def on_echo(req):
        if req.assoc.remote_ae_title == "SLOW":
            order.append("slow start")
            time.sleep(1.0)
            order.append("slow end")
        return 0x0000

    services = Services()
    services.register("C-ECHO", on_echo)

    async def main():
        async with serving(services, CONTEXTS) as acceptor:
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, calling_ae="SLOW", contexts=REQUESTED) as slow:
                async with await connect(LOCALHOST, acceptor.port, called_ae=AE, calling_ae="FAST", contexts=REQUESTED) as fast:
                    slow_echo = asyncio.create_task(slow.echo())
                    assert await wait_until(lambda: "slow start" in order, 10)
                    await fast.echo()
                    order.append("fast done")
                    await slow_echo

    asyncio.run(main())
    assert order == ["slow start", "fast done", "slow end"]


def test_async_store_handler_sees_complete_file(tmp_path):
    """The C-STORE handler gets the dataset as a complete Part 10 file it may claim."""
    from pydicom import dcmread

    source = make_instance(tmp_path / "img.dcm", rows=64, cols=64)
    seen = {}

    async def on_store(req):
        seen["sop"] = req.sop_instance_uid
        seen["decoded"] = dcmread(req.dataset_path).SOPInstanceUID
        seen["calling"] = req.assoc.remote_ae_title
        return 0xB000  # a warning status goes back unchanged

    services = Services()
    services.register("C-STORE", on_store)
    rx = tmp_path / "rx"
    rx.mkdir()

    async def main():
        async with serving(services, CONTEXTS, config=NetConfig(temp_dir=str(rx))) as acceptor:
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, calling_ae="STORER", contexts=REQUESTED) as assoc:
                return (await assoc.store(source)).status

    status = asyncio.run(main())
    expected = dcmread(source, stop_before_pixels=True).SOPInstanceUID
    assert status == 0xB000
    assert seen == {"sop": expected, "decoded": expected, "calling": "STORER"}
    assert list(rx.iterdir()) == []  # not claimed: removed after the handler


def test_release_waits_for_the_running_request():
    """A-RELEASE-RQ arriving while a request is being handled is answered only after its response."""
    gate = asyncio.Event()
    started = asyncio.Event()

    async def on_echo(req):
        started.set()
        await gate.wait()
        return 0

    services = Services()
    services.register("C-ECHO", on_echo)

    async def main():
        async with serving(services, CONTEXTS) as acceptor:
            assoc = await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=REQUESTED)
            echo = asyncio.create_task(assoc.echo())
            await asyncio.wait_for(started.wait(), 10)
            release = asyncio.create_task(assoc.release())
            await asyncio.sleep(0.2)
            release_done_early = release.done()
            gate.set()
            status = await asyncio.wait_for(echo, 10)
            await asyncio.wait_for(release, 10)
        return status, release_done_early, assoc

    status, release_done_early, assoc = asyncio.run(main())
    assert status == 0  # the response came through in Sta7 (AR-6)
    assert not release_done_early
    assert assoc.is_released and not assoc.is_aborted


def test_requestor_dimse_timeout():
    from pacskit.net import NetTimeout

    async def never(req):
        await asyncio.sleep(30)
        return 0

    services = Services()
    services.register("C-ECHO", never)

    async def main():
        async with serving(services, CONTEXTS) as acceptor:
            assoc = await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=REQUESTED, config=NetConfig(dimse_timeout=0.5))
            with pytest.raises(NetTimeout):
                await assoc.echo()
            assoc.abort()
            await assoc.wait_closed()

    asyncio.run(main())


def test_dataset_over_size_limit_gets_out_of_resources(tmp_path):
    source = make_instance(tmp_path / "img.dcm", rows=256, cols=256)  # 128 kB of pixels
    rx = tmp_path / "rx"
    rx.mkdir()
    calls = []

    async def on_store(req):
        calls.append(req)
        return 0

    services = Services()
    services.register("C-STORE", on_store)
    services.register("C-ECHO", lambda req: 0)

    async def main():
        async with serving(services, CONTEXTS, config=NetConfig(temp_dir=str(rx), max_dataset_size=64 * 1024)) as acceptor:
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=REQUESTED) as assoc:
                rsp = await assoc.store(source)
                echo = await assoc.echo()
        return rsp, echo

    rsp, echo = asyncio.run(main())
    assert rsp.status == 0xA700
    assert "DatasetTooLarge" in rsp["ErrorComment"]
    assert echo == 0
    assert calls == []
    assert list(rx.iterdir()) == []


def test_unwritable_temp_dir_gives_failure_and_association_continues(tmp_path):
    source = make_instance(tmp_path / "img.dcm", rows=16, cols=16)
    services = Services()
    services.register("C-STORE", lambda req: 0)
    services.register("C-ECHO", lambda req: 0)

    async def main():
        config = NetConfig(temp_dir=str(tmp_path / "does-not-exist"))
        async with serving(services, CONTEXTS, config=config) as acceptor:
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=REQUESTED) as assoc:
                rsp = await assoc.store(source)
                echo = await assoc.echo()
        return rsp, echo

    rsp, echo = asyncio.run(main())
    assert rsp.status in (0xA700, 0xC000)
    assert echo == 0


def test_c_get_sub_operations_on_the_same_association_and_deflated_find(tmp_path):
    """C-GET: the acceptor's handler stores instances back over the same association (the requestor
    negotiated the SCP role for the storage SOP class); C-FIND on a Deflated context both ways."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    patient_root_get = "1.2.840.10008.5.1.4.1.2.1.3"
    files = [make_instance(tmp_path / f"{i}.dcm", rows=32, cols=32) for i in range(3)]

    async def on_get(req):
        for i, path in enumerate(files):
            rsp = await req.assoc.store(path)
            assert rsp.status == 0
            yield Response(0xFF00, elements={"NumberOfRemainingSuboperations": len(files) - i - 1, "NumberOfCompletedSuboperations": i + 1})

    async def on_find(req):
        m = Dataset()
        m.QueryRetrieveLevel = "PATIENT"
        m.PatientID = "echo-" + str(req.dataset.PatientID)
        yield Response(0xFF00, m)

    services = Services()
    services.register("C-GET", on_get)
    services.register("C-FIND", on_find)
    supported = [
        SupportedContext(patient_root_get),
        SupportedContext(PATIENT_ROOT_FIND, (DeflatedExplicitVRLittleEndian,)),
        SupportedContext(SECONDARY_CAPTURE, scp_role=True),
    ]
    received: list[str] = []

    async def on_store(req):
        received.append(req.sop_instance_uid)
        return 0

    local = Services()
    local.register("C-STORE", on_store)
    requested = [
        RequestedContext(patient_root_get),
        RequestedContext(PATIENT_ROOT_FIND, (DeflatedExplicitVRLittleEndian,)),
        RequestedContext(SECONDARY_CAPTURE, ("1.2.840.10008.1.2.1",), scu_role=True, scp_role=True),
    ]

    async def main():
        async with serving(services, supported, config=NetConfig(temp_dir=str(tmp_path))) as acceptor:
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=requested, services=local) as assoc:
                assert assoc.find_context(PATIENT_ROOT_FIND).transfer_syntax == DeflatedExplicitVRLittleEndian
                gets = [(rsp.status, rsp.get("NumberOfCompletedSuboperations")) async for rsp in assoc.get(patient_root_get, query())]
                q = query()
                q.PatientID = "42"
                finds = [(status, ds.PatientID if ds is not None else None) async for status, ds in assoc.find(PATIENT_ROOT_FIND, q)]
        return gets, finds

    gets, finds = asyncio.run(main())
    assert gets == [(0xFF00, 1), (0xFF00, 2), (0xFF00, 3), (0x0000, None)]
    from pydicom import dcmread

    assert received == [dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    assert finds == [(0xFF00, "echo-42"), (0x0000, None)]


def test_a_handler_may_yield_lists_of_responses(caplog):
    """Lists are sent in order: Pending answers with encoded bytes (one write), a Pending Dataset, and a
    final response in a list ends the operation (what follows it in the list is dropped, with a warning)."""
    from pacskit.dicom.codec import encode_dataset

    explicit = "1.2.840.10008.1.2.1"

    async def on_find(req):
        if req.sop_class_uid == STUDY_ROOT_FIND:
            yield [Response(0xFF00, encode_dataset(match(n), explicit)) for n in range(3)]
            yield [Response(0xFF01, match(3)), Response(0xFF00, encode_dataset(match(4), explicit))]
            yield [Response(0xFF00, encode_dataset(match(5), explicit)), Response(0xA700), Response(0xFF00, match(6))]
            yield Response(0xFF00, match(7))  # never asked for: the stream ended at 0xA700
        else:
            yield [Response(0xFF00, encode_dataset(match(n), explicit)) for n in range(2)]

    services = Services()
    services.register("C-FIND", on_find)

    async def main():
        async with serving(services, CONTEXTS) as acceptor:
            contexts = [RequestedContext(PATIENT_ROOT_FIND, [explicit]), RequestedContext(STUDY_ROOT_FIND, [explicit])]
            async with await connect(LOCALHOST, acceptor.port, called_ae=AE, contexts=contexts) as assoc:
                first = [(s, ds.PatientID if ds is not None else None) async for s, ds in assoc.find(STUDY_ROOT_FIND, query())]
                second = [(s, ds.PatientID if ds is not None else None) async for s, ds in assoc.find(PATIENT_ROOT_FIND, query())]
        return first, second

    first, second = asyncio.run(main())
    assert first == [(0xFF00, "P0000"), (0xFF00, "P0001"), (0xFF00, "P0002"), (0xFF01, "P0003"),
                     (0xFF00, "P0004"), (0xFF00, "P0005"), (0xA700, None)]
    assert second == [(0xFF00, "P0000"), (0xFF00, "P0001"), (0x0000, None)]
    assert any("1 responses after a final one ignored" in r.getMessage() for r in caplog.records)
