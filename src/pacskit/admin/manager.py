"""The service manager: server folders under a servers root, run as background processes.

A *server folder* is named after its AE title (validated by
:func:`pacskit.config.settings.safe_file_name`: never a path from an unchecked name) and holds::

    <root>/<AE>/server.toml      settings (pacskit.config.settings)
                ae-titles.toml   the AE registry, once an AE is registered
                addins/          local add-ins (*.py, packages)
                data/            index database, stored files, the server's own log (data/logs/)
                logs/console.log what the background process printed (start-up errors land here)
                server.pid       while it runs (written by ``start``)
                <AE>.sock        the admin API, while it runs

The root is ``$PACSKIT_SERVERS`` or ``./servers``. Several servers run side by side, each its own
process with its own port. ``start`` runs ``python -m pacskit serve --config <folder>`` in a new session
and waits until the server printed that it listens (or reports the error line it printed); ``stop``
sends SIGTERM (the server lets running operations finish, then exits) and waits.

:func:`systemd_unit` writes the Linux service for one server: a non-root ``User=`` and the usual
hardening (``NoNewPrivileges``, ``ProtectSystem=strict`` with ``ReadWritePaths`` limited to the
server's folders, private /tmp and devices, no new capabilities unless the port is below 1024).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pacskit.config.settings import (
    SETTINGS_FILE,
    ServerSettings,
    SettingsError,
    load_settings,
    safe_file_name,
    update_settings_file,
    validate_ae_title,
)

SERVERS_ENV = "PACSKIT_SERVERS"
PID_FILE = "server.pid"
CONSOLE_LOG = "logs/console.log"
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class ManagerError(RuntimeError):
    """A service manager operation failed; the message is meant for the operator."""


def servers_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$PACSKIT_SERVERS``, else ``./servers``."""
    return Path(root or os.environ.get(SERVERS_ENV) or "servers")


DEFAULT_SERVER_FOLDER = "pacs-data"


def init_server_folder(folder: str | Path, values: dict[str, Any] | None = None) -> bool:
    """Make ``folder`` a server folder if it is not one yet: write ``server.toml`` with the defaults
    (and ``values``, e.g. the flags of the first ``pacskit serve``). Returns whether it wrote the file.

    ``pacskit serve`` calls this on every start, so the default server (``./pacs-data``) is a server
    folder like those ``server create`` makes: ``status``, ``clients``, ``addins``, ``events`` and
    ``reload`` find it, and its settings can be edited in the file. An existing file is never changed.
    Raises :class:`SettingsError` (nothing written) when ``values`` are invalid."""
    import tomlkit

    folder = Path(folder)
    path = folder / SETTINGS_FILE
    if path.exists():
        return False
    data = ServerSettings().model_dump(
        exclude_none=True, exclude={"implementation_class_uid", "implementation_version_name", "addins"}
    )
    data.update({k: v for k, v in (values or {}).items() if v is not None})
    try:
        ServerSettings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise SettingsError(problems) from exc
    folder.mkdir(parents=True, exist_ok=True)
    header = (
        "# pacskit server settings, written with the defaults at the first `pacskit serve` (docs/admin.md;\n"
        "# every key in pacskit.config.settings). Edit, then restart the server ([addins.*]: `pacskit reload`).\n"
        "# Add-in options go into [addins.<name>] tables, e.g. [addins.storage] duplicate_policy = \"keep-first\".\n\n"
    )
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(header + tomlkit.dumps(data), encoding="utf-8")
    try:
        os.link(tmp, path)  # never replaces a file another process wrote meanwhile
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], value); the value is read as TOML (``11113``, ``true``, ``"x"``,
    ``[1, 2]``), and as a plain string when it is not valid TOML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ManagerError(f"{text!r} is not KEY=VALUE")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return [part.strip() for part in key.split(".")], value


@dataclass(slots=True)
class ServerInfo:
    """One server folder as ``server list`` shows it."""

    name: str
    folder: Path
    ae_title: str
    host: str
    port: int
    pid: int | None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.pid is not None


class ServiceManager:
    """Create, run and remove the servers under one root folder."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = servers_root(root)

    # ------------------------------------------------------------------ folders

    def folder(self, name: str) -> Path:
        """The folder of server ``name`` (an AE title that can name a folder; else :class:`ManagerError`)."""
        try:
            return self.root / safe_file_name(name)
        except ValueError as exc:
            raise ManagerError(str(exc)) from None

    def existing(self, name: str) -> Path:
        folder = self.folder(name)
        if not (folder / SETTINGS_FILE).is_file():
            raise ManagerError(f"no server {name!r} under {self.root} (pacskit server create --ae {name} ...)")
        return folder

    def create(
        self,
        ae_title: str,
        *,
        port: int,
        host: str = "127.0.0.1",
        database_url: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> Path:
        """Make ``<root>/<AE>/`` with server.toml, addins/, data/ and logs/. Raises :class:`ManagerError`."""
        import tomlkit

        try:
            ae_title = validate_ae_title(ae_title)
        except ValueError as exc:
            raise ManagerError(str(exc)) from None
        folder = self.folder(ae_title)
        if folder.exists():
            raise ManagerError(f"{folder} already exists")
        for other in self.list():
            if other.port == port and other.host in (host, "0.0.0.0", "::") and port != 0:
                raise ManagerError(f"server {other.name} already uses port {port}")
        data: dict[str, Any] = {"ae_title": ae_title, "host": host, "port": port, "data_dir": "data"}
        if database_url:
            data["database"] = {"url": database_url}
        data.update(settings or {})
        try:
            ServerSettings.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
            raise ManagerError(f"invalid settings: {problems}") from None
        self.root.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o750)
        for sub in ("addins", "data", "logs"):
            (folder / sub).mkdir(mode=0o750)
        header = (
            f"# pacskit server {ae_title}: settings (see docs/admin.md; every key in pacskit.config.settings)\n"
            "# Change with `pacskit server edit` or the admin API; a running server applies [addins.*] on reload.\n\n"
        )
        (folder / SETTINGS_FILE).write_text(header + tomlkit.dumps(data), encoding="utf-8")
        os.chmod(folder / SETTINGS_FILE, 0o640)
        return folder

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / SETTINGS_FILE).is_file() and not p.name.startswith("."))

    def list(self) -> list[ServerInfo]:
        out = []
        for name in self.names():
            folder = self.root / name
            pid = self.pid(folder)
            try:
                s = load_settings(folder)
                out.append(ServerInfo(name, folder, s.ae_title, s.host, s.port, pid))
            except SettingsError as exc:
                out.append(ServerInfo(name, folder, "?", "?", 0, pid, str(exc)))
        return out

    # ------------------------------------------------------------------ processes

    def pid(self, folder: Path) -> int | None:
        """The pid of the running server of ``folder``, or ``None`` (a stale pid file is removed)."""
        path = folder / PID_FILE
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if _alive(pid) and _is_server_of(pid, folder):
            return pid
        path.unlink(missing_ok=True)
        return None

    def start(self, name: str, *, timeout: float = 60.0) -> int:
        """Start server ``name`` in the background; returns its pid once it listens.

        Raises :class:`ManagerError` with the error line the server printed when it could not start
        (address in use, bad settings...), or when it did not report listening within ``timeout``."""
        folder = self.existing(name)
        running = self.pid(folder)
        if running is not None:
            raise ManagerError(f"server {name} is already running (pid {running})")
        try:
            load_settings(folder)
        except SettingsError as exc:
            raise ManagerError(str(exc)) from None
        log_path = folder / CONSOLE_LOG
        log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as console:
            console.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pacskit server start\n".encode())
            console.flush()
            offset = console.tell()
            proc = subprocess.Popen(
                [sys.executable, "-m", "pacskit", "serve", "--config", str(folder.resolve())],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=folder,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        (folder / PID_FILE).write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while True:
            text = _read_from(log_path, offset)
            for line in text.splitlines():
                if line.startswith("error:"):
                    self._reap(proc, 10.0)
                    (folder / PID_FILE).unlink(missing_ok=True)
                    raise ManagerError(f"server {name} did not start: {line[len('error:'):].strip()}")
                if line.startswith("pacskit ") and " listening on " in line:
                    return proc.pid
            code = proc.poll()
            if code is not None:
                (folder / PID_FILE).unlink(missing_ok=True)
                tail = [ln for ln in _read_from(log_path, offset).splitlines() if ln.strip()][-3:]
                raise ManagerError(
                    f"server {name} exited with code {code} before listening"
                    + (f": {' | '.join(tail)}" if tail else f" (see {log_path})")
                )
            if time.monotonic() > deadline:
                raise ManagerError(f"server {name} (pid {proc.pid}) did not report listening within {timeout:g} s; see {log_path}")
            time.sleep(0.05)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self, name: str, *, timeout: float = 60.0, force: bool = False) -> bool:
        """SIGTERM server ``name`` and wait until it exited; ``False`` if it was not running.

        After ``timeout`` seconds it is killed (SIGKILL) when ``force``, else :class:`ManagerError`."""
        return self.stop_folder(self.existing(name), timeout=timeout, force=force)

    def stop_folder(self, folder: Path, *, timeout: float = 60.0, force: bool = False) -> bool:
        """:meth:`stop` for the server of any server folder (``./pacs-data`` included).

        A server started by ``start`` is found by its pid file; one started by hand (``pacskit serve``)
        by its admin API, which answers on the folder's own socket with its pid."""
        name = str(folder)
        pid = self.pid(folder)
        if pid is None and api_reachable(folder):
            try:
                with admin_client(folder, timeout=5.0) as client:
                    pid = int(client.get("/status").raise_for_status().json()["pid"])
            except Exception as exc:
                raise ManagerError(f"the server in {folder} answers but does not say its pid: {exc}") from None
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                if not force:
                    raise ManagerError(f"server {name} (pid {pid}) did not stop within {timeout:g} s (use --force)")
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                force = False
            time.sleep(0.05)
        (folder / PID_FILE).unlink(missing_ok=True)
        return True

    def restart(self, name: str, *, timeout: float = 60.0) -> int:
        self.stop(name, timeout=timeout)
        return self.start(name, timeout=timeout)

    def status(self, name: str) -> dict[str, Any]:
        """Process state, and the server's own ``/status`` when its admin API answers."""
        folder = self.existing(name)
        pid = self.pid(folder)
        info: dict[str, Any] = {"name": name, "folder": str(folder), "running": pid is not None, "pid": pid}
        if pid is None and api_reachable(folder):
            # started by someone else (systemd, `pacskit serve` by hand): no pid file, but it answers
            info.update(running=True, managed_by="another supervisor")
        if info["running"]:
            try:
                with admin_client(folder, timeout=5.0) as client:
                    info["server"] = client.get("/status").raise_for_status().json()
                    info["pid"] = info["pid"] or info["server"]["pid"]
            except Exception as exc:  # the process runs but the API does not answer: say so
                info["api_error"] = f"{type(exc).__name__}: {exc}"
        return info

    def remove(self, name: str) -> Path:
        """Delete server ``name``'s folder with its data (it must be stopped)."""
        import shutil

        folder = self.existing(name)
        if self.pid(folder) is not None:
            raise ManagerError(f"server {name} is running; stop it first")
        shutil.rmtree(folder)
        return folder

    def edit(self, name: str, assignments: list[str]) -> ServerSettings:
        """Apply ``key.sub=value`` assignments to server.toml (validated; the file is untouched on error)."""
        folder = self.existing(name)
        parsed = [parse_assignment(a) for a in assignments]

        def mutate(data: dict[str, Any]) -> None:
            for keys, value in parsed:
                node = data
                for key in keys[:-1]:
                    child = node.setdefault(key, {})
                    if not isinstance(child, dict):
                        raise ManagerError(f"{'.'.join(keys)}: {key} is not a table")
                    node = child
                node[keys[-1]] = value

        try:
            return update_settings_file(folder, mutate)
        except SettingsError as exc:
            raise ManagerError(str(exc)) from None

    # ------------------------------------------------------------------ systemd

    def install_service(
        self,
        name: str,
        *,
        user: str = "pacskit",
        group: str | None = None,
        unit_dir: str | Path = "/etc/systemd/system",
        python: str | None = None,
    ) -> Path:
        """Write ``pacskit-<name>.service`` into ``unit_dir``; returns its path (see :func:`systemd_unit`)."""
        folder = self.existing(name)
        settings = load_settings(folder)
        text = systemd_unit(settings, folder.resolve(), user=user, group=group, python=python)
        unit_dir = Path(unit_dir)
        unit_dir.mkdir(parents=True, exist_ok=True)
        path = unit_dir / f"pacskit-{safe_file_name(name)}.service"
        path.write_text(text, encoding="utf-8")
        os.chmod(path, 0o644)
        return path


def systemd_unit(
    settings: ServerSettings, folder: Path, *, user: str, group: str | None = None, python: str | None = None
) -> str:
    """The systemd service unit that runs the server of ``folder`` as ``user`` (never root)."""
    if not _USER_RE.match(user) or user == "root":
        raise ManagerError(f"{user!r} cannot run the service: give a non-root system user name")
    group = group or user
    if not _USER_RE.match(group) or group == "root":
        raise ManagerError(f"{group!r} is not a usable group name (not root)")
    python = python or sys.executable
    writable = [folder]
    data = settings.data_path.resolve()
    storage = settings.storage_path.resolve()
    for extra in (data, storage):
        if not extra.is_relative_to(folder) and extra not in writable:
            writable.append(extra)
    for path in (folder, *writable, Path(python)):
        if any(c in str(path) for c in "\n\"'\\%$`") or not path.is_absolute():
            raise ManagerError(f"{path} cannot go into a unit file (absolute, no quotes, %, $ or backslashes)")
    # A private /tmp would hide a server folder that lives under /tmp (tests, trials): keep it shared then.
    in_tmp = any(p.is_relative_to(t) for p in writable for t in (Path("/tmp"), Path("/var/tmp")))
    low_port = 0 < settings.port < 1024
    caps = "CAP_NET_BIND_SERVICE" if low_port else ""
    exec_start = " ".join(shlex.quote(str(x)) for x in (python, "-m", "pacskit", "serve", "--config", str(folder)))
    lines = [
        "# Written by `pacskit server install-service`; see docs/admin.md.",
        "[Unit]",
        f"Description=pacskit DICOM server {settings.ae_title}",
        "Documentation=file:" + str(folder / SETTINGS_FILE),
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        f"Group={group}",
        f"WorkingDirectory={folder}",
        f"ExecStart={exec_start}",
        "Environment=PYTHONUNBUFFERED=1",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=30",
        "Restart=on-failure",
        "RestartSec=5",
        "UMask=0027",
        "# hardening",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        *[f"ReadWritePaths={p}" for p in writable],
        "PrivateTmp=no" if in_tmp else "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        f"CapabilityBoundingSet={caps}",
        f"AmbientCapabilities={caps}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- the admin API client


def admin_client(folder: str | Path, *, timeout: float = 30.0) -> Any:
    """An :class:`httpx.Client` talking to the admin API of the server of ``folder`` over its Unix socket."""
    import httpx

    settings = load_settings(folder)
    path = settings.admin_socket_path
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://pacskit", timeout=timeout)


def api_reachable(folder: str | Path) -> bool:
    """Whether a server runs in ``folder`` with its admin API answering on the Unix socket."""
    try:
        settings = load_settings(folder)
    except SettingsError:
        return False
    if not settings.admin.enabled or not settings.admin_socket_path.exists():
        return False
    try:
        with admin_client(folder, timeout=5.0) as client:
            return client.get("/status").status_code == 200
    except Exception:
        return False


# ---------------------------------------------------------------------- process helpers


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _is_server_of(pid: int, folder: Path) -> bool:
    """Guard against a reused pid: the process must be ``pacskit serve --config <folder>``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid file
    want = str(folder.resolve()).encode()
    return b"pacskit" in b" ".join(argv) and want in argv


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
