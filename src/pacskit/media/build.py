"""Media creation from end to end: stored studies / series / instances -> ISO images, ZIP files or folders.

::

    from pacskit.media import MediaOptions, build_media, select_sources

    sources, missing = select_sources(store, studies=["1.2.3"])
    result = build_media(sources, "disc.iso", MediaOptions(profile="STD-GEN-CD", label="CT HEAD"))
    result.paths  # [disc.iso] or [disc_1of2.iso, disc_2of2.iso] when split

This is what ``pacskit media build`` and the Media Creation Management SCP add-in run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pacskit.media.fileset import MediaError, SourceFile, Volume, plan_volumes
from pacskit.media.output import FORMATS, volume_paths, write_volume
from pacskit.media.profiles import DEFAULT_PROFILE, get_profile

if TYPE_CHECKING:
    from pacskit.store import DataStore

__version__ = "1"
#: UIDs in one ``IN`` list (within every database's limits)
_UIDS_PER_QUERY = 1000


class MediaCancelled(MediaError):
    """``should_stop`` answered true: the build stopped and removed what it had written."""


@dataclass(slots=True)
class MediaOptions:
    """How to build the media.

    - ``profile``: the PS3.11 application profile (``STD-GEN-CD``, ``STD-GEN-DVD-J2K``...); it decides
      the transfer syntaxes allowed and the capacity of one volume;
    - ``fmt``: ``iso``, ``zip`` or ``folder``;
    - ``label``: free text for the ISO volume identifier and README.TXT;
    - ``fileset_id``: the DICOMDIR File-set ID (at most 16 characters; derived from the label if empty);
    - ``lossless``: compress JPEG 2000 lossless where the profile allows it;
    - ``allow_split``: several volumes when one is not enough (else :class:`DoesNotFit`);
    - ``capacity``: bytes per volume (``-1``: the profile's media, ``None``: unlimited);
    - ``include_readme``: a README.TXT at the root (IHE PDI);
    - ``include_viewer``: the web viewer (``index.html``, ``VIEWER/DATA.JS``, ``AUTORUN.INF``;
      :mod:`pacskit.media.viewer`);
    - ``extras``: more non-DICOM files at the root (name on the media -> local path).
    """

    profile: str = DEFAULT_PROFILE
    fmt: str = "iso"
    label: str = ""
    fileset_id: str = ""
    fileset_uid: str = ""
    lossless: bool = False
    allow_split: bool = True
    capacity: int | None = -1
    include_readme: bool = True
    include_viewer: bool = False
    extras: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class MediaResult:
    paths: list[Path]
    instances: int
    transcoded: int
    bytes: int
    #: (File-set ID, File-set UID) of each volume
    filesets: list[tuple[str, str]] = field(default_factory=list)


def select_sources(store: DataStore, *, studies: Sequence[str] = (), series: Sequence[str] = (),
                   instances: Sequence[str] = ()) -> tuple[list[SourceFile], list[str]]:
    """The stored files of the given studies, series and instances (union, each once, with the keys
    the index has for them), and the UIDs asked for that select nothing in the archive."""
    from sqlalchemy import select

    from pacskit.store import Instance, Patient, Series, Study

    columns = (Instance.sop_instance_uid, Instance.blob_key, Instance.size, Instance.sop_class_uid,
               Instance.transfer_syntax_uid, Patient.patient_id, Study.study_instance_uid,
               Series.series_instance_uid, Instance.instance_number)
    found: dict[str, SourceFile] = {}
    missing: list[str] = []
    for level, (uids, column) in enumerate(((studies, Study.study_instance_uid), (series, Series.series_instance_uid),
                                            (instances, Instance.sop_instance_uid))):
        for start in range(0, len(uids), _UIDS_PER_QUERY):
            chunk = list(dict.fromkeys(uids[start:start + _UIDS_PER_QUERY]))
            stmt = (select(*columns).select_from(Instance).join(Series, Series.pk == Instance.series_fk)
                    .join(Study, Study.pk == Series.study_fk).join(Patient, Patient.pk == Study.patient_fk)
                    .where(column.in_(chunk)).order_by(Instance.pk))
            seen: set[str] = set()
            with store.index.reading() as s:
                rows = s.execute(stmt).all()
            for uid, key, size, cls, ts, pid, study, ser, number in rows:
                seen.add((study, ser, uid)[level])
                if uid in found:
                    continue
                path = store.blobs.path(key)
                if path is None:
                    raise MediaError("the blob store has no local files; media creation needs a filesystem store")
                found[uid] = SourceFile(uid, path, int(size), str(cls or ""), str(ts or ""), pid or "", str(study),
                                        str(ser), number)
            missing += [u for u in chunk if u not in seen]
    return list(found.values()), missing


def readme_text(volume: Volume, options: MediaOptions, patients: Iterable[str] = ()) -> str:
    """README.TXT of a volume (IHE PDI: who made the media, with what, how it is organised)."""
    lines = [
        "DICOM MEDIA",
        "",
        f"Label: {options.label or volume.fileset_id}",
        f"Volume {volume.number} of {volume.total} (File-set ID {volume.fileset_id})",
        f"Application profile: {get_profile(options.profile).id}",
        f"Created by: pacskit media creation, version {__version__}",
        "",
        "This medium holds a DICOM File-set (DICOM PS3.10): the DICOMDIR file at the root lists the",
        "patients, studies, series and images; the images are in the PT*/ST*/SE* folders. Open the",
        "DICOMDIR with any DICOM viewer.",
    ]
    if volume.total > 1:
        lines += ["", f"The images of this request are spread over {volume.total} media; each one is a",
                  "complete File-set of its own."]
    if "index.html" in volume.extras:
        lines += ["", "A viewer is included: open index.html in a web browser (Chromium, Chrome, Edge,",
                  "Firefox), then open this disc's folder with the button at the top to see the images."]
    lines += ["", "These images are medical data: keep this medium in a safe place.", ""]
    return "\r\n".join(lines)


def build_media(
    sources: Iterable[SourceFile],
    dest: str | os.PathLike[str],
    options: MediaOptions | None = None,
    *,
    work_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[str, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MediaResult:
    """Plan and write the media for ``sources`` at ``dest`` (one path per volume, see
    :func:`~pacskit.media.output.volume_paths`). ``work_dir``: where re-encoded files and DICOMDIRs
    are prepared (a temporary folder beside ``dest`` by default, removed at the end).
    ``should_stop`` is asked before every instance, file and written block: when it answers true,
    :class:`MediaCancelled` is raised and what was written so far is removed."""
    options = options or MediaOptions()

    def tick(stage: str = "", n: int = 0) -> None:
        if should_stop is not None and should_stop():
            raise MediaCancelled("cancelled")
        if progress is not None and stage:
            progress(stage, n)

    if options.fmt not in FORMATS:
        raise MediaError(f"unknown media format {options.fmt!r} (one of {', '.join(FORMATS)})")
    profile = get_profile(options.profile)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    own_work = work_dir is None
    work = Path(tempfile.mkdtemp(prefix=".media-", dir=dest.parent)) if own_work else Path(work_dir)  # type: ignore[arg-type]
    written: list[Path] = []
    try:
        reserved = sum(os.path.getsize(p) for p in options.extras.values()) + 16384
        if options.include_viewer:
            from pacskit.media.viewer import TEMPLATE

            reserved += TEMPLATE.stat().st_size + 8192
        volumes = plan_volumes(sources, profile, work, fileset_id=options.fileset_id or options.label or "PACSKIT",
                               fileset_uid=options.fileset_uid or None,
                               lossless=options.lossless, allow_split=options.allow_split,
                               capacity=options.capacity, reserved=reserved,
                               per_instance=256 if options.include_viewer else 0, progress=tick)
        paths = volume_paths(dest, len(volumes))
        for volume, path in zip(volumes, paths):
            tick()
            volume.extras.update(options.extras)
            if options.include_viewer:
                from pacskit.media.viewer import viewer_files

                volume.extras.update(viewer_files(volume.dicomdir, volume.root.parent / f"viewer{volume.number}",
                                                  options.label or volume.fileset_id))
            if options.include_readme:
                readme = volume.root.parent / f"README{volume.number}.TXT"
                readme.write_text(readme_text(volume, options), encoding="ascii", errors="replace")
                volume.extras["README.TXT"] = str(readme)
            written.append(path)
            write_volume(volume, path, options.fmt, label=options.label or volume.fileset_id, tick=tick)
            tick("volume", volume.number)
        return MediaResult(written, sum(len(v.files) for v in volumes),
                           sum(1 for v in volumes for f in v.files if f.transcoded_from),
                           sum(v.data_size for v in volumes), [(v.fileset_id, v.fileset_uid) for v in volumes])
    except BaseException:
        for path in written:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
