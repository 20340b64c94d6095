"""Real peers the client tests talk to, configured by the tests: DCMTK dcmqrscp and wlmscpfs.

(storescp, Orthanc and pynetdicom come from :mod:`pacskit.testing.peers`.)
"""

from __future__ import annotations

import contextlib
import glob
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


STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
MPPS = "1.2.840.10008.3.1.2.3.3"
PRINTER = "1.2.840.10008.5.1.1.16"
FILM_SESSION = "1.2.840.10008.5.1.1.1"
MPPS_NOTIFICATION = "1.2.840.10008.3.1.2.3.5"


@contextlib.contextmanager
def pynetdicom_n_scp() -> Iterator[tuple[str, list]]:
    """A pynetdicom AE (in a thread of this process) serving N-ACTION (storage commitment, with the
    N-EVENT-REPORT back on the association), N-CREATE/N-SET (MPPS), N-GET (printer), N-DELETE (film
    session) and N-EVENT-REPORT; yields its ``AET@host:port`` and the list of calls it saw."""
    import threading

    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid
    from pynetdicom import AE, evt

    calls: list[tuple[str, object]] = []
    mpps: dict[str, Dataset] = {}
    ae = AE("NSCP")
    for uid in (STORAGE_COMMITMENT, MPPS, PRINTER, FILM_SESSION, MPPS_NOTIFICATION):
        ae.add_supported_context(uid)

    def on_action(event):
        calls.append(("N-ACTION", event.action_type))
        request = event.action_information
        # Answer, then report the commitment result on the same association (PS3.4 J.3.3).
        report = Dataset()
        report.TransactionUID = request.TransactionUID
        report.ReferencedSOPSequence = request.ReferencedSOPSequence

        def send_report() -> None:
            status = event.assoc.send_n_event_report(report, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
            calls.append(("report-answered", status[0].Status if status[0] else None))

        threading.Timer(0.05, send_report).start()
        return 0x0000, None

    def on_create(event):
        ds = event.attribute_list
        uid = event.request.AffectedSOPInstanceUID or generate_uid()
        mpps[uid] = ds
        calls.append(("N-CREATE", uid))
        return 0x0000, ds

    def on_set(event):
        uid = event.request.RequestedSOPInstanceUID
        if uid not in mpps:
            return 0x0112, None  # No such SOP Instance
        for elem in event.modification_list:
            mpps[uid][elem.tag] = elem
        calls.append(("N-SET", uid))
        return 0x0000, mpps[uid]

    def on_get(event):
        ds = Dataset()
        ds.PrinterStatus = "NORMAL"
        ds.PrinterName = "PK-PRINTER"
        calls.append(("N-GET", list(event.attribute_identifiers)))
        return 0x0000, ds

    def on_delete(event):
        calls.append(("N-DELETE", event.request.RequestedSOPInstanceUID))
        return 0x0000

    def on_report(event):
        calls.append(("N-EVENT-REPORT", event.event_type))
        return 0x0000, None

    handlers = [
        (evt.EVT_N_ACTION, on_action), (evt.EVT_N_CREATE, on_create), (evt.EVT_N_SET, on_set),
        (evt.EVT_N_GET, on_get), (evt.EVT_N_DELETE, on_delete), (evt.EVT_N_EVENT_REPORT, on_report),
    ]
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        yield f"NSCP@127.0.0.1:{port}", calls
    finally:
        server.shutdown()


__all__ = ["WORKLIST_EXAMPLES", "dcmqrscp", "pynetdicom_n_scp", "tool", "wlmscpfs", "worklist_db"]
