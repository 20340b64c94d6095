"""The durable request queue: priorities, states written to disk at each step, a shutdown that puts
the running request back in the queue, one builder per folder."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from pacskit.media.build import MediaCancelled
from pacskit.media.queue import CREATING, DONE, FAILURE, IDLE, PENDING, MediaQueue, MediaRequest, QueueError, Reference

REFS = [Reference("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")]


def test_priority_order_and_states(tmp_path: Path) -> None:
    order: list[str] = []
    done = threading.Event()

    def executor(req, refs, work, cancelled):  # type: ignore[no-untyped-def]
        assert json.loads((tmp_path / f"{req.uid}.json").read_text())["state"] == CREATING
        assert work.is_dir() and refs == REFS
        order.append(req.uid)
        if len(order) == 3:
            done.set()
            pause = threading.Event()
            while not cancelled():  # the last one runs until the queue stops
                pause.wait(0.01)
            raise MediaCancelled("stopping")
        return [f"out-{req.uid}"], [["FS", "1.9"]], 1

    queue = MediaQueue(tmp_path, executor, poll_interval=0.05)
    for uid, priority in (("1.1", "LOW"), ("1.2", "HIGH"), ("1.3", "MED")):
        queue.create(MediaRequest(uid, "STD-GEN-CD"), REFS)
        assert queue.get(uid).state == IDLE  # type: ignore[union-attr]
        queue.initiate(uid, priority=priority, copies=2)
    with pytest.raises(QueueError) as exc:
        queue.initiate("1.1")
    assert exc.value.reason == QueueError.ALREADY_INITIATED

    async def go() -> None:
        task = asyncio.create_task(queue.run())
        await asyncio.to_thread(done.wait, 30)
        queue.stop()
        # the builder ends by itself once stopping, without taking the interrupted request again
        await asyncio.wait_for(task, 30)

    asyncio.run(go())
    assert order == ["1.2", "1.3", "1.1"]
    assert queue.get("1.2").state == DONE and queue.get("1.2").outputs == ["out-1.2"]  # type: ignore[union-attr]
    assert queue.get("1.2").copies == 2 and queue.get("1.2").media_count == 1  # type: ignore[union-attr]
    assert queue.get("1.1").state == PENDING  # type: ignore[union-attr]  # stopped: queued again
    assert list((tmp_path / "work").iterdir()) == []


def test_interrupted_request_is_built_again_by_the_next_builder(tmp_path: Path) -> None:
    first = MediaQueue(tmp_path, lambda *a: ([], [], 0))
    first.create(MediaRequest("2.1", "STD-GEN-CD"), REFS)
    first.initiate("2.1")
    # what a kill -9 during the build leaves: CREATING on disk, a work folder
    req = first.get("2.1")
    req.state = CREATING  # type: ignore[union-attr]
    first._save(req)  # type: ignore[arg-type]
    (tmp_path / "work" / "2.1" / "out").mkdir(parents=True)
    (tmp_path / "work" / "2.1" / "out" / ".2.1.iso.partial").write_bytes(b"half")

    built = threading.Event()

    def executor(req, refs, work, cancelled):  # type: ignore[no-untyped-def]
        assert list(work.iterdir()) == []  # the half-written image is gone
        built.set()
        raise OSError(28, "No space left on device")

    second = MediaQueue(tmp_path, executor, poll_interval=0.05)

    async def go() -> None:
        task = asyncio.create_task(second.run())
        await asyncio.to_thread(built.wait, 30)
        while second.get("2.1").state != FAILURE:  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert second.get("2.1").info == "OUT_OF_RESOURCES"  # type: ignore[union-attr]


def test_one_builder_per_folder(tmp_path: Path) -> None:
    a = MediaQueue(tmp_path, lambda *x: ([], [], 0))
    b = MediaQueue(tmp_path, lambda *x: ([], [], 0))
    assert a._take_lock()
    assert not b._take_lock()


def test_cancel_from_another_process_stops_the_build(tmp_path: Path) -> None:
    """Another worker process answering the N-ACTION cancel (its own MediaQueue on the same folder)
    stops the build the lock holder runs."""
    started = threading.Event()

    def executor(req, refs, work, cancelled):  # type: ignore[no-untyped-def]
        started.set()
        pause = threading.Event()
        while not cancelled():
            pause.wait(0.01)
        raise MediaCancelled("cancelled")

    builder = MediaQueue(tmp_path, executor, poll_interval=0.05)
    other = MediaQueue(tmp_path, executor, poll_interval=0.05)
    builder.create(MediaRequest("3.1", "STD-GEN-CD"), REFS)
    builder.initiate("3.1")

    async def go() -> None:
        task = asyncio.create_task(builder.run())
        try:
            await asyncio.to_thread(started.wait, 30)
            await asyncio.to_thread(other.cancel, "3.1", wait=10)
        finally:
            builder.stop()
            await asyncio.wait_for(task, 30)

    asyncio.run(go())
    assert builder.get("3.1") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["queue.lock", "work"]
