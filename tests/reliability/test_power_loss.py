"""Power cuts during ingest: every instance acknowledged Success survives, byte-identical and findable.

The data folder of a real `pacskit serve` (blobs, SQLite index, journals) lives on lossyfs
(:mod:`pacskit.testing.lossyfs`), a FUSE file system that keeps in memory whatever was not made durable
by fsync/fdatasync (files) or a directory fsync (names) and drops it at a "power cut". Four DCMTK
storescu send in parallel; the file system cuts the power by itself just before a random change
(a write, a rename, a flush…); the server is killed, the file system "reboots" on what survived, the
server starts again on it (restoring its index from the blobs), and then every instance storescu saw
acknowledged must be found by a C-FIND (DCMTK findscu), byte-identical to what was sent, and the store
must check clean; the senders go on with what was not acknowledged. At the end `pacskit check` is clean.
The same with one storescu, whose C-STOREs run on the server's event loop thread.

The second test proves the harness catches loss: with ``[storage] durability = "file"`` (the directory
fsync the contract depends on is left out, a real setting) acknowledged instances are lost and found
missing.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread

from pacskit.dicom.part10 import read_part10_header
from pacskit.store.ingestlog import fsync_path
from pacskit.testing.peers import dcmtk_env, dcmtk_tool, free_port, have_dcmtk, wait_for_port
from pacskit.testing.synth import dataset_bytes, make_series

pytestmark = [pytest.mark.dcmtk]

AE = "CUTPACS"
SENDERS = 4
SEND_RE = re.compile(r"Sending file: (.+)$")
SOP_UID_RE = re.compile(r"\(0008,0018\) UI \[([0-9.]+)")  # an odd-length UID is shown with its padding
#: state changes of the file system between two cuts are drawn from 1 .. this (about 10-20 instances)
MAX_CHANGES_PER_CUT = 800
DEADLINE_S = 120


@pytest.fixture
def fuse_ready(lossyfs_ready: None) -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")


@dataclass
class _Sender:
    files: list[str]
    study_uid: str
    series_uid: str
    pending: list[str] = field(default_factory=list)


@dataclass
class _Outcome:
    cuts: int = 0
    acknowledged: int = 0
    lost: list[str] = field(default_factory=list)  # what went wrong, one line per acknowledged instance


def _acknowledged(output: str) -> list[str]:
    """Files storescu reported Success for (a response line follows its 'Sending file' line)."""
    done, current = [], None
    for line in output.splitlines():
        m = SEND_RE.search(line)
        if m:
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            done.append(current)
            current = None
    return done


def _serve(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`pacskit serve` on ``data``; its output goes to ``log`` (outside the lossy file system)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pacskit", "serve", "--data-dir", str(data), "--port", str(port), "--ae", AE],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port("127.0.0.1", port, timeout=60, proc=proc)
    except Exception:
        _kill(proc)
        raise AssertionError(f"the server did not start:\n{log.read_text()[-3000:]}") from None
    return proc


def _fsync(path: Path) -> None:
    """Make the test's own setup durable (a file's bytes, or a folder's names)."""
    fsync_path(os.fspath(path), directory=path.is_dir())


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def _found(port: int, sender: _Sender) -> set[str]:
    """SOP Instance UIDs a C-FIND (DCMTK findscu, IMAGE level) finds in the sender's series."""
    out = subprocess.run(
        [dcmtk_tool("findscu"), "-v", "-S", "-aec", AE, "127.0.0.1", str(port),
         "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={sender.study_uid}",
         "-k", f"SeriesInstanceUID={sender.series_uid}", "-k", "SOPInstanceUID"],
        capture_output=True, text=True, env=dcmtk_env(), timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return set(SOP_UID_RE.findall(out.stdout + out.stderr))


def _verify(data: Path, port: int, senders: list[_Sender], acked: dict[str, str]) -> list[str]:
    """Every acknowledged instance (file -> SOP Instance UID) findable and byte-identical; the store
    checks clean. Returns what is wrong (empty: nothing)."""
    from pacskit.store import DataStore, FilesystemBlobStore

    problems: list[str] = []
    found: set[str] = set()
    for sender in senders:
        found |= _found(port, sender)
    # Read-only, beside the running server: a read-write connection closed last in this process would
    # checkpoint the WAL and remove it under the server's connections on FUSE, where SQLite cannot see
    # the server's (its next statements then read "file is not a database").
    store = DataStore.open(f"sqlite:///file:{data / 'index.db'}?mode=ro&uri=true",
                           blobs=FilesystemBlobStore(data / "files"), migrate=False, recover=False)
    try:
        for path, uid in sorted(acked.items()):
            if uid not in found:
                row = store.get_instance(uid)
                blobs = {str(read_part10_header(b).sop_instance_uid): b for b in (data / "files").rglob("*.dcm")}
                where = f"not indexed; {len(blobs)} blobs, its own {'present' if uid in blobs else 'absent'}"
                if row is not None:
                    sender = next(x for x in senders if path in x.files)
                    where = (f"indexed in series {row.series.series_instance_uid} of study "
                             f"{row.series.study.study_instance_uid}, {row.series.num_instances} instances; "
                             f"C-FIND found {len(found)}; asked {sender.study_uid} {sender.series_uid}: "
                             f"{len(_found(port, sender))} now")
                problems.append(f"{uid} ({path}): acknowledged, not found by C-FIND ({where})")
                continue
            stored = store.instance_path(uid)
            if stored is None or not os.path.exists(stored):
                problems.append(f"{uid} ({path}): acknowledged, its file is missing")
            elif (got := dataset_bytes(stored)) != (sent := dataset_bytes(path)):  # the File Meta is the server's
                problems.append(f"{uid} ({path}): acknowledged, stored dataset differs from the one sent"
                                f" ({len(got)} bytes stored, {len(sent)} sent)")
        report = store.check()
        if not report.ok:
            problems.append(f"check: {report}")
    finally:
        store.close()
    return problems


def _ingest_with_power_cuts(tmp_path: Path, *, cuts: int, durability: str | None, per_sender: int,
                            stop_at_first_loss: bool, seed: int, senders_count: int = SENDERS,
                            side: int = 32) -> _Outcome:
    from pacskit.testing.lossyfs import LossyMount

    rng = random.Random(seed)
    senders: list[_Sender] = []
    for i in range(senders_count):
        files = [str(f) for f in make_series(tmp_path / "src" / str(i), per_sender, side, side, patient_id=f"CUT{i}")]
        first = dcmread(files[0], stop_before_pixels=True)
        senders.append(_Sender(files, str(first.StudyInstanceUID), str(first.SeriesInstanceUID), list(files)))
    uid_of = {f: str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for s in senders for f in s.files}
    acked: dict[str, str] = {}
    outcome = _Outcome()
    mount = tmp_path / "mnt"
    with LossyMount(mount) as fs, concurrent.futures.ThreadPoolExecutor(senders_count + 1) as pool:
        data = mount / "pacs"
        data.mkdir()
        if durability is not None:
            (data / "server.toml").write_text(f'[storage]\ndurability = "{durability}"\n')
            _fsync(data / "server.toml")
        _fsync(data)
        _fsync(mount)
        port = free_port()
        while outcome.cuts < cuts:
            server = _serve(data, port, tmp_path / "server.log")
            try:
                problems = _verify(data, port, senders, acked)
                if problems:
                    outcome.lost = problems
                    if stop_at_first_loss:
                        return outcome
                    pytest.fail(f"after {outcome.cuts} power cuts (seed {seed}), {len(problems)} problems:\n"
                                + "\n".join(problems[:20]))
                if not any(s.pending for s in senders):  # everything sent: start again with the same files
                    for s in senders:
                        s.pending = list(s.files)
                fs.arm(rng.randint(1, MAX_CHANGES_PER_CUT))
                procs = [
                    subprocess.Popen(
                        [dcmtk_tool("storescu"), "-v", "-aec", AE, "127.0.0.1", str(port), *s.pending],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dcmtk_env(), text=True,
                    )
                    for s in senders if s.pending
                ]
                outputs = [pool.submit(p.communicate, timeout=DEADLINE_S) for p in procs]
                cut = pool.submit(fs.wait_cut)
                all_sent = pool.submit(concurrent.futures.wait, outputs)
                concurrent.futures.wait([cut, all_sent], timeout=DEADLINE_S,
                                        return_when=concurrent.futures.FIRST_COMPLETED)
                if not cut.done():  # every sender finished before the armed change: cut now
                    fs.request_cut()
                cut.result(timeout=DEADLINE_S)
                outcome.cuts += 1
            finally:
                _kill(server)
            texts = [o.result(timeout=DEADLINE_S)[0] for o in outputs]
            fs.reboot()
            for s in senders:
                if not s.pending:
                    continue
                done = {f for text in texts for f in _acknowledged(text) if f in set(s.pending)}
                for f in done:
                    acked[f] = uid_of[f]
                s.pending = [f for f in s.pending if f not in done]
        outcome.acknowledged = len(acked)
        server = _serve(data, port, tmp_path / "server.log")
        try:
            outcome.lost = _verify(data, port, senders, acked)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
        if not outcome.lost:
            check = subprocess.run([sys.executable, "-m", "pacskit", "check", "--data-dir", str(data)],
                                   capture_output=True, text=True, timeout=DEADLINE_S)
            if check.returncode != 0:
                outcome.lost.append(f"pacskit check: {check.stdout}{check.stderr}")
    return outcome


def test_power_cuts_during_parallel_ingest_lose_nothing_acknowledged(tmp_path: Path, fuse_ready: None) -> None:
    seed = random.randrange(1 << 30)
    outcome = _ingest_with_power_cuts(tmp_path, cuts=20, durability=None, per_sender=60,
                                      stop_at_first_loss=False, seed=seed)
    assert outcome.cuts >= 20
    assert outcome.acknowledged >= 40, outcome  # the cuts fell during real work
    assert outcome.lost == [], f"seed {seed}:\n" + "\n".join(outcome.lost[:20])


@pytest.mark.parametrize("side, count", [(32, 120), (200, 60)], ids=["small", "large"])
def test_power_cuts_during_a_lone_association_lose_nothing_acknowledged(tmp_path: Path, fuse_ready: None,
                                                                        side: int, count: int) -> None:
    """One storescu: its C-STOREs run on the server's event loop thread (``InlineHandler``, a lone
    association), the path the Storage add-in also takes beside other associations on a local disk
    (lossyfs being FUSE, the four senders above take the thread pool). Small instances go through
    the ingest log; large ones (200 x 200 x 16 bits, above its record size) are flushed on the blob
    store's threads while the loop awaits them (``PendingIngest.flushing``)."""
    seed = random.randrange(1 << 30)
    outcome = _ingest_with_power_cuts(tmp_path, cuts=20, durability=None, per_sender=count,
                                      stop_at_first_loss=False, seed=seed, senders_count=1, side=side)
    assert outcome.cuts >= 20
    assert outcome.acknowledged >= 40, outcome  # the cuts fell during real work
    assert outcome.lost == [], f"seed {seed}:\n" + "\n".join(outcome.lost[:20])


def test_the_harness_catches_loss_without_the_directory_flush(tmp_path: Path, fuse_ready: None) -> None:
    """``durability = "file"`` flushes each file but not its directory entry: the renames of
    acknowledged instances are lost at a cut, and the check above must see it."""
    seed = random.randrange(1 << 30)
    outcome = _ingest_with_power_cuts(tmp_path, cuts=6, durability="file", per_sender=40,
                                      stop_at_first_loss=True, seed=seed)
    assert outcome.lost, f"seed {seed}: {outcome.cuts} cuts without the directory fsync lost nothing"
    assert any("acknowledged" in line for line in outcome.lost), outcome.lost[:5]
