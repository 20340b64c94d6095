"""The STOW-RS ingest lanes (:class:`pacskit.addins.dicomweb.stow.IngestLanes`) as a scheduler: every
unit ingested exactly once by threads that take the next one, outcomes in the order of the units,
an ingest that raises kept in its place without stopping its lane, ``stop`` honoured. The ingest
itself is replaced by a recording function here; the end-to-end STOW-RS tests run the real one."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from pacskit.addins.dicomweb import stow


def _recording_ingest(monkeypatch: pytest.MonkeyPatch, fail_on: set[int]) -> tuple[Counter[int], set[str]]:
    seen: Counter[int] = Counter()
    threads: set[str] = set()
    lock = threading.Lock()

    def ingest_unit(store, unit, study, policy, log):  # noqa: ANN001, ARG001 - the real signature
        with lock:
            seen[unit] += 1
            threads.add(threading.current_thread().name)
        if unit in fail_on:
            raise OSError(f"unit {unit} failed")
        return stow.Outcome("1.2", f"1.2.{unit}", "1.3")

    monkeypatch.setattr(stow, "ingest_unit", ingest_unit)
    return seen, threads


def _run_lanes(lanes: stow.IngestLanes, count: int) -> None:
    def lane() -> None:
        while lanes.run():
            pass

    workers = [threading.Thread(target=lane, name=f"lane-{n}") for n in range(count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_every_unit_once_in_order_with_failures_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    units = list(range(3 * stow.LANE_STRETCH + 5))  # more than one stretch per lane
    seen, _ = _recording_ingest(monkeypatch, fail_on={7, 50})
    lanes = stow.IngestLanes(None, units, None, "keep-first", None)  # type: ignore[arg-type]
    _run_lanes(lanes, 4)
    assert seen == Counter(units)  # each exactly once
    results = lanes.results()
    assert len(results) == len(units)
    for unit, result in zip(units, results):
        if unit in (7, 50):
            assert isinstance(result, OSError) and str(result) == f"unit {unit} failed"
        else:
            assert isinstance(result, stow.Outcome) and result.sop_instance_uid == f"1.2.{unit}"


def test_a_stretch_hands_the_thread_back(monkeypatch: pytest.MonkeyPatch) -> None:
    units = list(range(stow.LANE_STRETCH + 1))
    seen, _ = _recording_ingest(monkeypatch, fail_on=set())
    lanes = stow.IngestLanes(None, units, None, "keep-first", None)  # type: ignore[arg-type]
    assert lanes.run() is True and sum(seen.values()) == stow.LANE_STRETCH  # one stretch, more left
    assert lanes.run() is False and seen == Counter(units)


def test_stop_takes_no_further_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    units = list(range(10))
    seen, _ = _recording_ingest(monkeypatch, fail_on=set())
    lanes = stow.IngestLanes(None, units, None, "keep-first", None)  # type: ignore[arg-type]
    original = stow.ingest_unit

    def stop_after_three(store, unit, *args):  # noqa: ANN001, ANN002
        if unit == 2:
            lanes.stop.set()
        return original(store, unit, *args)

    monkeypatch.setattr(stow, "ingest_unit", stop_after_three)
    assert lanes.run() is False
    assert seen == Counter([0, 1, 2])
    results = lanes.results()
    assert all(isinstance(r, stow.Outcome) for r in results[:3])
    assert all(isinstance(r, RuntimeError) for r in results[3:])
