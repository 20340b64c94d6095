"""Output devices of media creation: the burner interface and the built-in burners.

A burner gets the finished volumes of one request (ISO images, ZIP files or folders, complete and
checked) and makes media of them. It is a class with

- ``name`` (a class attribute), the name ``[addins.media] burner = "..."`` selects it by;
- ``formats``: the volume formats it takes, the first one preferred (``("iso",)`` for a drive);
- ``__init__(self, **options)``: its options, from ``burner_options`` in the settings; raise
  ``ValueError`` with one clear line for a bad one (the add-in does not start);
- ``burn(self, job: BurnJob) -> list[str]``: make ``job.copies`` copies of every volume, in order;
  return one line per piece of media made (a path, "drive /dev/sr0 copy 1 volume 2/3"...); print
  ``job.labels`` (one PDF per volume) on the media when it can. Raise
  :class:`BurnError` to fail the request with a reason; check ``job.cancelled()`` between pieces of
  media and raise :class:`BurnCancelled` when it answers true. ``burn`` runs in a worker thread; it
  may block (a robot's job queue) for as long as it needs.

Built-ins: :class:`FolderBurner` (``folder``: the volumes into a directory) and :class:`OpticalBurner`
(``optical``: a CD/DVD/BD drive through ``xorriso`` or ``growisofs``). Third-party burners (a Primera
Bravo, an Epson PP-100...) register in the entry point group ``pacskit.burners`` or are named as
``module:Class``; docs/media-burners.md shows a complete one.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pacskit.media.label import label_name

ENTRY_POINT_GROUP = "pacskit.burners"


class BurnError(Exception):
    """The media could not be made; the message is the reason the request fails with."""


class BurnCancelled(BurnError):
    """The request was cancelled while burning."""


@dataclass(slots=True)
class BurnJob:
    """One request's finished volumes and what to make of them."""

    request_uid: str
    volumes: list[Path]
    fmt: str
    label: str = ""
    copies: int = 1
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("pacskit.media.burner"))
    cancelled: Callable[[], bool] = lambda: False
    #: the label of each volume (PDF, :mod:`pacskit.media.label`), same order as ``volumes``; empty
    #: when the request asked for no label. A burner with a printer prints them on the discs.
    labels: list[Path] = field(default_factory=list)


class Burner(Protocol):
    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]

    def burn(self, job: BurnJob) -> list[str]: ...


class FolderBurner:
    """The volumes into a directory: ``path`` (default: the add-in's output folder), one entry per
    volume named after the request (``<request UID>.iso``, ``<uid>_1of2.iso``...; a folder for the
    ``folder`` format). ``copies`` above 1 are logged and ignored: a file needs no copies."""

    name: ClassVar[str] = "folder"
    formats: ClassVar[tuple[str, ...]] = ("iso", "zip", "folder")

    def __init__(self, path: str | None = None, format: str = "iso") -> None:  # noqa: A002 - the option's name
        if format not in self.formats:
            raise ValueError(f"folder burner: format must be one of {', '.join(self.formats)}, not {format!r}")
        self.path = Path(path) if path else None
        self.formats = (format,)  # type: ignore[misc]

    def burn(self, job: BurnJob) -> list[str]:
        dest_dir = self.path or job.volumes[0].parent
        dest_dir.mkdir(parents=True, exist_ok=True)
        if job.copies > 1:
            job.log.info("folder burner: %d copies asked, one written", job.copies)
        made = []
        for volume in job.volumes:
            if job.cancelled():
                raise BurnCancelled("cancelled")
            target = dest_dir / volume.name
            if volume.resolve() != target.resolve():
                if target.exists():
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                shutil.move(str(volume), str(target))
            made.append(str(target))
        for volume, label in zip(job.volumes, job.labels, strict=False):
            target = dest_dir / label_name(volume)
            if label.resolve() != target.resolve():
                shutil.move(str(label), str(target))
            job.log.info("label of %s: %s", volume.name, target)
        return made


class OpticalBurner:
    """A CD/DVD/BD drive through ``xorriso`` (default) or ``growisofs``.

    Options: ``device`` (``/dev/sr0``; for xorriso also ``stdio:/path/file`` — its image mode, which
    writes what the drive would get into a file), ``tool`` (``xorriso`` or ``growisofs``),
    ``dry_run`` (xorriso ``-dummy``: the drive simulates the write, laser off; growisofs ``-dry-run``:
    prints the command and writes nothing), ``speed`` (0: the drive's choice), ``eject``, and
    ``program`` (the tool's path when not on ``PATH``). Between two pieces of media the burner asks
    ``change_media`` (a command run with the piece number, e.g. to drive a tray or ask an operator;
    empty: none, fine for a single disc or a robot). ``label_command`` prints the label of each piece
    after it is burnt: a command with ``{label}`` replaced by the label's PDF (``lp -d discprinter
    {label}`` through CUPS); empty: labels are not printed (logged).
    """

    name: ClassVar[str] = "optical"
    formats: ClassVar[tuple[str, ...]] = ("iso",)

    def __init__(self, device: str = "/dev/sr0", tool: str = "xorriso", dry_run: bool = False, speed: int = 0,
                 eject: bool = True, program: str | None = None, change_media: str = "",
                 timeout: float = 3600, label_command: str = "") -> None:
        if tool not in ("xorriso", "growisofs"):
            raise ValueError(f"optical burner: tool must be xorriso or growisofs, not {tool!r}")
        self.program = program or shutil.which(tool)
        if self.program is None:
            raise ValueError(f"optical burner: {tool} is not installed")
        self.device, self.tool, self.dry_run, self.speed, self.eject = device, tool, dry_run, speed, eject
        self.change_media, self.timeout = change_media, timeout
        if label_command and "{label}" not in label_command:
            raise ValueError("optical burner: label_command must contain {label} (the label's PDF)")
        self.label_command = shlex.split(label_command)

    def command(self, image: Path) -> list[str]:
        """The command that writes ``image`` to the drive."""
        if self.tool == "xorriso":
            argv = [str(self.program), "-as", "cdrecord", "-v", f"dev={self.device}"]
            if self.speed:
                argv.append(f"speed={self.speed}")
            if self.dry_run:
                argv.append("-dummy")
            if self.eject and not self.device.startswith("stdio:"):
                argv.append("-eject")
            return argv + [str(image)]
        argv = [str(self.program), "-dvd-compat"]
        if self.speed:
            argv.append(f"-speed={self.speed}")
        if self.dry_run:
            argv.append("-dry-run")
        return argv + ["-Z", f"{self.device}={image}"]

    def burn(self, job: BurnJob) -> list[str]:
        made = []
        piece = 0
        for copy in range(1, job.copies + 1):
            for n, image in enumerate(job.volumes, 1):
                if job.cancelled():
                    raise BurnCancelled("cancelled")
                piece += 1
                if piece > 1 and self.change_media:
                    self._run([self.change_media, str(piece)], job, "change media")
                self._run(self.command(image), job, f"copy {copy} volume {n}")
                if n <= len(job.labels):
                    if self.label_command:
                        self._run([a.replace("{label}", str(job.labels[n - 1])) for a in self.label_command], job,
                                  f"label of copy {copy} volume {n}")
                    elif copy == 1:
                        job.log.info("no label_command: the label %s is not printed", job.labels[n - 1])
                made.append(f"{self.device} copy {copy} volume {n}/{len(job.volumes)}"
                            + (" (dry run)" if self.dry_run else ""))
        return made

    def _run(self, argv: Sequence[str], job: BurnJob, what: str) -> None:
        job.log.info("burning %s: %s", what, " ".join(argv))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, check=False,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BurnError(f"{what}: {exc}") from exc
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
            raise BurnError(f"{what}: {Path(argv[0]).name} exited with {proc.returncode}: {last}")


BUILTIN: dict[str, type[Any]] = {"folder": FolderBurner, "optical": OpticalBurner}


def burner_class(name: str) -> type[Any]:
    """The burner class called ``name``: a built-in, an entry point of ``pacskit.burners``, or
    ``module:Class``. ``ValueError`` (one line) when there is none."""
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"burner {name!r}: {exc}") from exc
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()  # type: ignore[no-any-return]
    if name in BUILTIN:
        return BUILTIN[name]
    raise ValueError(f"no burner named {name!r} (built-in: {', '.join(BUILTIN)}; or an entry point of "
                     f"{ENTRY_POINT_GROUP}, or module:Class)")


def make_burner(name: str, options: dict[str, Any] | None = None) -> Any:
    """An instance of the burner ``name`` with ``options``; ``ValueError`` for a bad name or option."""
    cls = burner_class(name)
    try:
        return cls(**(options or {}))
    except TypeError as exc:
        raise ValueError(f"burner {name!r}: {exc}") from exc
