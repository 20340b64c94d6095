"""Writing a planned :class:`~pacskit.media.fileset.Volume`: a folder, an ISO 9660 image, a ZIP file.

Every writer produces its result under a temporary name beside the destination (``.<name>.partial``),
flushes it to disk (``fsync``) and renames it into place: a destination that exists is complete. An
interrupted write (an error, a crash, ``kill -9``) leaves at most the ``.partial`` file, which the next
write to the same destination replaces.

ISO 9660 (pycdlib): interchange level 1 as PS3.12 asks for CD-R (upper-case 8-character names, no
extension; the primary volume descriptor records them with the mandatory ``;1`` version), plus Joliet
and Rock Ridge 1.09 so that every operating system shows the same names. File contents are streamed
from the source files when the image is written: nothing is copied first and memory stays flat.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pacskit.media.fileset import Volume
from pacskit.store.ingestlog import fsync_path

#: Output formats
FORMATS = ("iso", "zip", "folder")


def _partial(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.partial")


def _fsync_file(path: Path) -> None:
    fsync_path(os.fspath(path))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems (e.g. network ones) refuse a folder's fsync
        fsync_path(os.fspath(path), directory=True)


@contextlib.contextmanager
def _cleaned_on_error(tmp: Path) -> Iterator[None]:
    """Remove the partial output ``tmp`` when the block fails (or is interrupted)."""
    try:
        yield
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _entries(volume: Volume) -> Iterator[tuple[str, str]]:
    """(path on the media, local source) of every file of the volume, DICOMDIR first."""
    yield "DICOMDIR", str(volume.dicomdir)
    yield from sorted(volume.extras.items())
    for f in volume.files:
        yield f.relpath, f.source


def _directories(volume: Volume) -> list[str]:
    dirs: set[str] = set()
    for rel, _ in _entries(volume):
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return sorted(dirs, key=lambda d: (d.count("/"), d))


def write_folder(volume: Volume, dest: str | os.PathLike[str], *, tick: Callable[[], None] | None = None) -> Path:
    """The volume as a plain folder ``dest`` (which must not exist, or is replaced). ``tick`` is called
    before each file (it may raise to stop)."""
    dest = Path(dest)
    tmp = _partial(dest)
    _remove(tmp)
    with _cleaned_on_error(tmp):
        tmp.mkdir(parents=True)
        for rel, src in _entries(volume):
            if tick is not None:
                tick()
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            _fsync_file(target)
        for d in _directories(volume):
            _fsync_dir(tmp / d)
    _remove(dest)
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    return dest


def _iso_name(component: str, is_file: bool) -> str:
    """The ISO 9660 level 1 name of a path component: upper case, 8.3 (``index.html`` ->
    ``INDEX.HTM;1``; Joliet and Rock Ridge keep the real name), ``;1`` on files."""
    name = "".join(c if c.isascii() and (c.isalnum() or c in "._") else "_" for c in component.upper())
    if not is_file:
        return name.replace(".", "_")[:8]
    stem, dot, ext = name.partition(".")
    stem, ext = stem.replace(".", "_")[:8], ext.replace(".", "_")[:3]
    return f"{stem}.{ext};1" if dot else f"{stem}.;1"


def volume_label(text: str, number: int = 1, total: int = 1) -> str:
    """An ISO 9660 volume identifier (d-characters A-Z 0-9 _, at most 32) from free text."""
    cleaned = "".join(c if (c.isascii() and c.isalnum()) else "_" for c in text.upper()).strip("_") or "DICOM"
    if total > 1:
        suffix = f"_{number}OF{total}"
        return cleaned[: 32 - len(suffix)] + suffix
    return cleaned[:32]


def write_iso(volume: Volume, dest: str | os.PathLike[str], *, label: str = "DICOM",
              tick: Callable[[], None] | None = None) -> Path:
    """The volume as an ISO 9660 image with Joliet and Rock Ridge at ``dest``. ``tick`` is called
    for every block written (it may raise to stop)."""
    import pycdlib

    dest = Path(dest)
    tmp = _partial(dest)
    _remove(tmp)
    iso = pycdlib.PyCdlib()
    vol_id = volume_label(label, volume.number, volume.total)
    iso.new(interchange_level=1, joliet=3, rock_ridge="1.09", vol_ident=vol_id,
            sys_ident="PACSKIT", app_ident_str="PACSKIT MEDIA CREATION")
    with _cleaned_on_error(tmp):
        try:
            for d in _directories(volume):
                parts = d.split("/")
                iso.add_directory(iso_path="/" + "/".join(_iso_name(p, False) for p in parts), rr_name=parts[-1],
                                  joliet_path="/" + d)
            for rel, src in _entries(volume):
                parts = rel.split("/")
                iso_path = "/" + "/".join(_iso_name(p, i == len(parts) - 1) for i, p in enumerate(parts))
                iso.add_file(src, iso_path=iso_path, rr_name=parts[-1], joliet_path="/" + rel)
            if tick is not None:
                iso.write(str(tmp), blocksize=1 << 20, progress_cb=lambda _done, _total, _opaque: tick())
            else:
                iso.write(str(tmp))
        finally:
            iso.close()
        _fsync_file(tmp)
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    return dest


def write_zip(volume: Volume, dest: str | os.PathLike[str], *, compress: bool = False,
              tick: Callable[[], None] | None = None) -> Path:
    """The volume as a ZIP file (for USB sticks): the file-set at the root of the archive. Stored
    (not deflated) unless ``compress``: DICOM images deflate little and slowly."""
    dest = Path(dest)
    tmp = _partial(dest)
    _remove(tmp)
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with _cleaned_on_error(tmp):
        with zipfile.ZipFile(tmp, "w", compression=method, allowZip64=True) as zf:
            for rel, src in _entries(volume):
                if tick is not None:
                    tick()
                zf.write(src, arcname=rel)
        _fsync_file(tmp)
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    return dest


def write_volume(volume: Volume, dest: str | os.PathLike[str], fmt: str, *, label: str = "DICOM",
                 tick: Callable[[], None] | None = None) -> Path:
    """Write ``volume`` as ``fmt`` (one of :data:`FORMATS`) at ``dest``."""
    if fmt == "iso":
        return write_iso(volume, dest, label=label, tick=tick)
    if fmt == "zip":
        return write_zip(volume, dest, tick=tick)
    if fmt == "folder":
        return write_folder(volume, dest, tick=tick)
    raise ValueError(f"unknown media format {fmt!r} (one of {', '.join(FORMATS)})")


def volume_paths(dest: str | os.PathLike[str], total: int) -> list[Path]:
    """Where the volumes of a set go: ``dest`` itself for one volume; ``disc.iso`` ->
    ``disc_1of2.iso``, ``disc_2of2.iso`` (a folder: ``out`` -> ``out_1of2``...) for more."""
    dest = Path(dest)
    if total <= 1:
        return [dest]
    return [dest.with_name(f"{dest.stem}_{n}of{total}{dest.suffix}") for n in range(1, total + 1)]
