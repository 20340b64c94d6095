"""Power cuts on the ingest log itself (pacskit.store.ingestlog), with tiny segments so that every
cycle fills, checkpoints and retires several of them.

On lossyfs (:mod:`pacskit.testing.lossyfs`: only fsync/fdatasync make bytes durable, only a folder's
fsync its names; ``syncfs`` does nothing, so checkpoints take the per-file path) two threads put small
blobs into a :class:`~pacskit.store.FilesystemBlobStore` and delete some of them; the file system cuts
the power by itself at a random change, "reboots", and a new store replays the log. Every blob whose
put returned must be there with its bytes, and no blob whose deletion was synced may come back. The
whole-server version (4 storescu, C-FIND after each cut) is tests/reliability/test_power_loss.py.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from pacskit.store import FilesystemBlobStore
from pacskit.store.ingestlog import IngestLog, fsync_path

CYCLES = 12
#: changes of the file system between two cuts are drawn from 1 .. this (a put is about five)
MAX_CHANGES_PER_CUT = 500


def _power_cut_cycles(tmp_path: Path, seed: int, *, stop_at_first_loss: bool = False) -> tuple[list[str], int, int]:
    """Run CYCLES put/delete stretches on lossyfs, each ended by a power cut and a replay; return the
    problems seen (an acknowledged blob gone or different, a synced deletion undone), how many blobs
    were acknowledged, and how many segments were retired."""
    from pacskit.testing.lossyfs import LossyMount

    rng = random.Random(seed)
    acked: dict[str, bytes] = {}  # put returned: must survive
    deleted: set[str] = set()  # deletion synced: must not come back
    lock = threading.Lock()
    problems: list[str] = []
    checkpoints = 0

    def look(store: FilesystemBlobStore, when: str) -> None:
        for key, data in list(acked.items()):
            path = store.path(key) or ""
            if not os.path.exists(path):
                problems.append(f"seed {seed}, {when}: blob {key} acknowledged, gone")
            elif Path(path).read_bytes() != data:
                problems.append(f"seed {seed}, {when}: blob {key} differs")
        back = sorted(k for k in deleted if store.exists(k))
        if back:
            problems.append(f"seed {seed}, {when}: deleted blobs came back: {back}")

    with LossyMount(tmp_path / "mnt") as fs:
        root = tmp_path / "mnt" / "blobs"
        root.mkdir()
        fsync_path(str(tmp_path / "mnt"), directory=True)
        for cycle in range(CYCLES):
            store = FilesystemBlobStore(root, log_segment_size=32 << 10)
            store.replay_log()
            look(store, f"cycle {cycle}")
            if problems and stop_at_first_loss:
                store.close()
                return problems, len(acked), checkpoints
            store.prepare_ingest()
            log = store.ingest_log()
            fs.arm(rng.randint(1, MAX_CHANGES_PER_CUT))

            def worker(n: int, seed: int = rng.randrange(1 << 30), store: FilesystemBlobStore = store) -> None:
                local = random.Random(seed)
                for i in range(10_000):
                    data = local.randbytes(local.randint(200, 4000))
                    try:
                        tmp = os.path.join(store.temp_dir, f"w{n}-{i}")
                        with open(tmp, "wb") as fh:
                            fh.write(data)
                        key = store.put_file(tmp)
                    except OSError:
                        return  # the power is gone
                    with lock:
                        acked[key] = data
                    if local.random() < 0.15:
                        with lock:
                            del acked[key]  # from here on either state is right, until the sync returns
                        try:
                            store.delete(key)
                            store.sync_removals([key])
                        except OSError:
                            return
                        with lock:
                            deleted.add(key)

            threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
            for t in threads:
                t.start()
            fs.wait_cut()
            for t in threads:
                t.join(60)
            checkpoints += log.checkpoints
            try:
                store.close()  # nothing reaches the disk any more: this only stops the log's thread
            except OSError:
                pass
            fs.reboot()
        store = FilesystemBlobStore(root)
        store.replay_log()
        look(store, "the end")
    return problems, len(acked), checkpoints


def test_power_cuts_keep_every_put_blob_and_no_deleted_one(tmp_path: Path, lossyfs_ready: None) -> None:
    seed = random.randrange(1 << 30)
    problems, acked, checkpoints = _power_cut_cycles(tmp_path, seed)
    assert not problems, "\n".join(problems[:20])
    assert acked >= 50, f"seed {seed}: the cuts fell before real work ({acked} blobs)"
    assert checkpoints >= CYCLES, f"seed {seed}: {checkpoints} segments retired: the checkpoints were not cut"


def test_without_the_records_flush_acknowledged_blobs_are_lost(
    tmp_path: Path, lossyfs_ready: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The negative twin: take away the one flush an acknowledgement waits for (the group commit's
    ``fdatasync`` of the segment) and the same cycles must find acknowledged blobs gone or torn.
    This shows the harness can see the loss the contract's flush prevents."""
    monkeypatch.setattr(IngestLog, "_flush_records", staticmethod(lambda fd: None))
    seed = random.randrange(1 << 30)
    problems, _, _ = _power_cut_cycles(tmp_path, seed, stop_at_first_loss=True)
    # (six trial runs without the flush found 466-625 problems each)
    assert problems, f"seed {seed}: no acknowledged blob was lost without the log's flush"
