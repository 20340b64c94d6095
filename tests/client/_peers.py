"""Real peers the client tests talk to, configured by the tests: DCMTK dcmqrscp and wlmscpfs.

(storescp, Orthanc and pynetdicom come from :mod:`pacskit.testing.peers`.)
"""

from __future__ import annotations

import contextlib
import glob
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from pacskit.testing.peers import Peer, PeerError, _spawned, count_store_successes, dcmtk_env, dcmtk_tool, free_port, run_storescu

WORKLIST_EXAMPLES = sorted(glob.glob("/usr/share/doc/dcmtk*/examples/wlistdb/OFFIS/*.dump"))


def tool(name: str) -> str:
    try:
        return dcmtk_tool(name)
    except PeerError as exc:
        pytest.skip(str(exc))


@contextlib.contextmanager
def dcmqrscp(
    work: Path,
    *,
    ae_title: str = "QRSCP",
    hosts: Sequence[tuple[str, str, int]] = (),
    load: Sequence[Path] = (),
    access: str = "RW",
    quota: str = "1024mb",
) -> Iterator[Peer]:
    """Run DCMTK ``dcmqrscp`` with a configuration written here: one read/write storage area for
    ``ae_title``, ``hosts`` (AE, host, port) as known move destinations, then ``load`` sent into it
    with DCMTK storescu (checked: every file acknowledged)."""
    binary = tool("dcmqrscp")
    db = work / "db"
    db.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = [f"NetworkTCPPort = {port}", "MaxPDUSize = 16384", "MaxAssociations = 16", "", "HostTable BEGIN"]
    for n, (aet, host, p) in enumerate(hosts):
        lines.append(f"peer{n} = ({aet}, {host}, {p})")
    lines += ["HostTable END", "", "VendorTable BEGIN", "VendorTable END", "", "AETable BEGIN"]
    lines.append(f"{ae_title} {db} {access} (1000, {quota}) ANY")
    lines += ["AETable END", ""]
    cfg = work / "dcmqrscp.cfg"
    cfg.write_text("\n".join(lines))
    argv = [binary, "-c", str(cfg), "--disable-host-lookup", "-v", str(port)]
    with _spawned(argv, port=port, ae_title=ae_title, env=dcmtk_env(), startup_timeout=10) as peer:
        if load:
            done = run_storescu("127.0.0.1", port, list(load), called=ae_title)
            if count_store_successes(done) != len(load):
                raise PeerError(f"loading dcmqrscp failed:\n{done.stdout[-3000:]}")
        yield peer


def worklist_db(folder: Path, ae_title: str = "WLM") -> Path:
    """Debian's DCMTK worklist examples converted with dump2dcm into ``folder/<ae_title>/``."""
    if not WORKLIST_EXAMPLES:
        pytest.skip("DCMTK's worklist examples (wlistdb) are not installed")
    target = folder / ae_title
    target.mkdir(parents=True, exist_ok=True)
    (target / "lockfile").write_bytes(b"")
    dump2dcm = tool("dump2dcm")
    for dump in WORKLIST_EXAMPLES:
        out = target / (Path(dump).stem + ".wl")
        subprocess.run([dump2dcm, "+te", dump, str(out)], check=True, capture_output=True, env=dcmtk_env())
    return folder


@contextlib.contextmanager
def wlmscpfs(folder: Path, *, ae_title: str = "WLM") -> Iterator[Peer]:
    binary = tool("wlmscpfs")
    db = worklist_db(folder, ae_title)
    port = free_port()
    argv = [binary, "-dfp", str(db), "--enable-file-reject", "-v", str(port)]
    with _spawned(argv, port=port, ae_title=ae_title, env=dcmtk_env(), startup_timeout=10) as peer:
        yield peer


__all__ = ["WORKLIST_EXAMPLES", "dcmqrscp", "shutil", "tool", "wlmscpfs", "worklist_db"]
