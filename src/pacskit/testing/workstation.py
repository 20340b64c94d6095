"""A pacskit server with the web workstation on a free port, a user per role and loaded data: what the
workstation's tests (pytest + Playwright) start. See docs/web-api.md ("For tests").

::

    from pacskit.testing.workstation import workstation

    with workstation(tmp_path, studies=2) as ws:
        client = ws.login("operator")          # httpx.Client: cookie + X-CSRF-Token set
        client.get("/api/studies").json()
        page.goto(ws.url + "/ui/")             # Playwright

Standalone, for front-end development (``vite`` proxying to it)::

    python -m pacskit.testing.workstation --port 8042 --studies 3 [--orthanc]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacskit.addins.audit import AuditAddIn
from pacskit.addins.dicomweb import DicomWebAddIn
from pacskit.addins.query import QueryAddIn
from pacskit.addins.retrieve import RetrieveAddIn
from pacskit.addins.storage import StorageAddIn
from pacskit.addins.txlog import TransactionLogAddIn
from pacskit.addins.verification import VerificationAddIn
from pacskit.addins.workstation import WorkstationAddIn
from pacskit.addins.workstation.users import UserFile
from pacskit.config.aetitles import RemoteAE
from pacskit.server.server import Server
from pacskit.testing.server import running_server

#: the add-ins of the workstation server (DIMSE storage/query/retrieve, DICOMweb, logs, the workstation)
ADDINS: list[type[Any]] = [VerificationAddIn, StorageAddIn, QueryAddIn, RetrieveAddIn, DicomWebAddIn,
                           TransactionLogAddIn, AuditAddIn, WorkstationAddIn]
#: role -> (user name, password) of the users :func:`workstation` creates
USERS: dict[str, tuple[str, str]] = {
    "viewer": ("viewer", "viewer-pass"),
    "operator": ("operator", "operator-pass"),
    "admin": ("admin", "admin-pass"),
}
AE_TITLE = "PACSKIT"


@dataclass
class Workstation:
    """A running workstation server (see :func:`workstation`)."""

    server: Server
    folder: Path
    users: dict[str, tuple[str, str]]
    study_uids: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the UI is at ``url + "/ui/"``, the API at ``url + "/api"``."""
        return f"http://127.0.0.1:{self.server.http.port}"

    @property
    def dicom_port(self) -> int:
        return self.server.port

    @property
    def addin(self) -> WorkstationAddIn:
        return next(a for a in self.server.addins if isinstance(a, WorkstationAddIn))

    def login(self, role: str = "admin", **client_options: Any) -> Any:
        """An ``httpx.Client`` logged in as the user of ``role``, sending the CSRF header (not yet
        opened: use it directly or in a ``with`` block)."""
        import httpx

        username, password = self.users[role]
        response = httpx.post(self.url + "/api/session", json={"username": username, "password": password}, timeout=30)
        response.raise_for_status()
        headers = {"X-CSRF-Token": response.json()["csrf_token"], **client_options.pop("headers", {})}
        return httpx.Client(base_url=self.url, timeout=client_options.pop("timeout", 30), cookies=response.cookies,
                            headers=headers, **client_options)

    def register(self, title: str, host: str, port: int, description: str = "") -> None:
        """Add a remote AE to the server's registry (``ae-titles.toml``; effective at once)."""
        entry = RemoteAE.model_validate({"title": title, "host": host, "port": port, "description": description})
        self.server.ae_titles.add(entry, replace=True)

    def load(self, paths: Sequence[Path]) -> None:
        """Store Part 10 files into the server's archive (copies: ingest takes files over)."""
        for i, path in enumerate(paths):
            copy = self.folder / "incoming" / f"{len(self.files) + i}-{path.name}"
            copy.parent.mkdir(exist_ok=True)
            copy.write_bytes(Path(path).read_bytes())
            self.server.store.ingest(str(copy), source_ae="TEST")
        self.files.extend(paths)


def write_server_folder(folder: Path, *, http_port: int = 0, dicom_port: int = 0, extra_toml: str = "",
                        admin_toml: str = "", users: Mapping[str, tuple[str, str]] = USERS) -> Path:
    """A server folder for the workstation: ``server.toml`` (``admin_toml``: more lines of its
    ``[admin]`` table, ``extra_toml``: more tables) and ``users.toml`` (one user per role)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.toml").write_text(
        f'ae_title = "{AE_TITLE}"\nhost = "127.0.0.1"\nport = {dicom_port}\ndata_dir = "data"\n'
        f'[admin]\nsocket = "admin.sock"\n{admin_toml}'
        f'[http]\nhost = "127.0.0.1"\nport = {http_port}\n'
        '[addins.dicomweb]\nenabled = true\n'
        '[addins.workstation]\nenabled = true\n' + extra_toml)
    user_file = UserFile(folder / "users.toml")
    for role, (name, password) in users.items():
        if user_file.get(name) is None:
            user_file.add(name, password, role)
    return folder


def make_studies(folder: Path, count: int, *, slices: int = 5) -> list[list[Path]]:
    """``count`` synthetic CT studies (one series of ``slices`` 64x64 slices each), patients
    ``TEST^PATIENT1``..., accession numbers ``ACC0001``..."""
    from pacskit.testing.synth import make_series

    studies = []
    for n in range(1, count + 1):
        studies.append(make_series(
            folder / f"study{n}", slices, patient_id=f"PID{n:04d}", patient_name=f"TEST^PATIENT{n}",
            attrs={"AccessionNumber": f"ACC{n:04d}", "StudyDescription": f"Test CT study {n}",
                   "StudyDate": f"2024{(n - 1) % 12 + 1:02d}{(n - 1) % 28 + 1:02d}"},
        ))
    return studies


@contextlib.contextmanager
def workstation(
    tmp_path: Path,
    *,
    studies: int = 2,
    slices: int = 5,
    remote_aes: Mapping[str, tuple[str, int]] | None = None,
    extra_toml: str = "",
    admin_toml: str = "",
    http_port: int = 0,
    servers: Any = None,
    addin_classes: Sequence[type[Any]] | None = None,
) -> Iterator[Workstation]:
    """A server (AE ``PACSKIT``, DICOM and HTTP on free loopback ports) with the workstation and
    DICOMweb on, the users of :data:`USERS`, ``studies`` synthetic CT studies of ``slices`` slices
    stored, and ``remote_aes`` (title -> (host, port)) registered. The server accepts associations
    from any AE on loopback. Stopped at the end of the block."""
    folder = write_server_folder(tmp_path / "workstation", http_port=http_port, extra_toml=extra_toml,
                                 admin_toml=admin_toml)
    for title, (host, port) in (remote_aes or {}).items():
        with (folder / "ae-titles.toml").open("a") as out:
            out.write(f'[[ae]]\ntitle = "{title}"\nhost = "{host}"\nport = {port}\n')
    generated = make_studies(tmp_path / "studies", studies, slices=slices)
    with running_server(folder, addin_classes=addin_classes or ADDINS, name="pacskit-workstation",
                        servers=servers) as server:
        ws = Workstation(server, folder, dict(USERS))
        for files in generated:
            ws.load(files)
        import pydicom

        ws.study_uids = [str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID) for files in generated]
        yield ws


def main(argv: Sequence[str] | None = None) -> int:
    """Run the workstation server until Ctrl-C (front-end development)."""
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m pacskit.testing.workstation", description=main.__doc__)
    parser.add_argument("--port", type=int, default=8042, help="HTTP port (0: any)")
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--orthanc", action="store_true", help="also run an Orthanc (AE ORTHANC) loaded with data")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pacskit-ws-")))
        ws = stack.enter_context(workstation(tmp, studies=args.studies, slices=args.slices, http_port=args.port))
        if args.orthanc:
            from pacskit.testing.peers import orthanc, run_storescu

            peer = stack.enter_context(orthanc(tmp / "orthanc", modalities={"pacskit": [AE_TITLE, "127.0.0.1", ws.dicom_port]}))
            remote = make_studies(tmp / "remote", 2, slices=args.slices)
            run_storescu("127.0.0.1", peer.dicom_port, [p for files in remote for p in files], called="ORTHANC")
            ws.register("ORTHANC", "127.0.0.1", peer.dicom_port, "Orthanc test PACS")
            print(f"Orthanc (ORTHANC) on DICOM port {peer.dicom_port}, HTTP {peer.url}", flush=True)
        print(f"workstation: {ws.url}/ui/  (API {ws.url}/api, DICOM port {ws.dicom_port}, AE {AE_TITLE})", flush=True)
        for role, (name, password) in ws.users.items():
            print(f"  {role}: {name} / {password}", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
