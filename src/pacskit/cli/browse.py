"""``pacskit dump | ls | stats``: the small verbs users of DCMTK and Orthanc reach for.

* ``dump FILE|UID`` prints a header as DCMTK's ``dcmdump`` does (pydicom reads it): a file, or the
  instance of that SOP Instance UID in the data folder.
* ``ls [patients|studies|series]`` lists what a data folder holds (its index), or what a peer holds
  (``--peer``, by C-FIND), in the same columns.
* ``stats`` counts instances and their bytes per modality, patient or study, from the index.

They only read: the index is opened without migration or recovery, so they are safe next to a
running server. The data folder is ``--data-dir`` / ``--config`` (default ``./pacs-data``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from pacskit.cli.common import EXIT_FAILURE_STATUS, EXIT_USAGE, ConfigOpt, DataDirOpt, server_settings, app
from pacskit.cli.output import CsvOpt, JsonOpt, output_format, print_rows

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from pacskit.config.settings import ServerSettings
    from pacskit.store import Index


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def _index(settings: ServerSettings) -> Iterator[Index]:
    """The folder's index, read-only use: no migration, no recovery (a server may be running)."""
    from sqlalchemy import inspect

    from pacskit.store import Index

    if not settings.data_path.is_dir():
        raise _fail(f"data folder {settings.data_path} does not exist")
    url = settings.database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise _fail(f"no index in {settings.data_path} (nothing was stored there yet)")
    index = Index.open(url)
    try:
        if "instances" not in inspect(index.engine).get_table_names():
            raise _fail(f"no index in {index.engine.url.render_as_string(hide_password=True)}")
        yield index
    finally:
        index.close()


# ---------------------------------------------------------------------- dump

_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_SHOWN_BYTES = 16  # dcmdump shows the first values of binary elements, then "..."


def _dump_value(elem: Any) -> str:
    """The value part of a dcmdump line: ``[text]``, numbers, ``=Keyword`` for known UIDs, hex bytes."""
    from pydicom.uid import UID

    vr = elem.VR
    if vr == "SQ":
        return f"(Sequence with {'undefined' if elem.is_undefined_length else 'explicit'} length #={len(elem.value)})"
    value = elem.value
    if value is None or value == "" or value == b"":
        return "(no value available)"
    if vr in _BINARY_VRS or isinstance(value, (bytes, bytearray)):
        raw = bytes(value) if isinstance(value, (bytes, bytearray)) else b""
        if elem.tag == 0x7FE00010 and elem.is_undefined_length:
            return f"(PixelSequence #={len(_fragments(raw))})"
        if vr == "OW":  # 16-bit words, little endian, as dcmdump shows them
            words = [int.from_bytes(raw[i:i + 2], "little") for i in range(0, min(len(raw), 2 * _SHOWN_BYTES) - 1, 2)]
            shown = "\\".join(f"{w:04x}" for w in words)
            more = len(raw) > 2 * _SHOWN_BYTES
        else:
            return _hex(raw)
        return shown + ("..." if more else "") if shown else "(no value available)"
    values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    if vr == "UI":
        names = [UID(str(v)).keyword if UID(str(v)).keyword else "" for v in values]
        if len(values) == 1 and names[0]:
            return f"={names[0]}"
        return "[" + "\\".join(str(v) for v in values) + "]"
    if vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"):
        if vr == "AT":
            return "\\".join(f"({int(v) >> 16:04x},{int(v) & 0xFFFF:04x})" for v in values)
        return "\\".join(str(v) for v in values)
    return "[" + "\\".join(str(v) for v in values) + "]"


def _fragments(value: bytes) -> list[bytes]:
    """The items of encapsulated pixel data (the Basic Offset Table first); [] when they do not parse."""
    from pydicom.encaps import generate_fragments

    try:
        return list(generate_fragments(value))
    except Exception:  # noqa: BLE001 - a dump shows what it can
        return []


def _hex(raw: bytes) -> str:
    shown = "\\".join(f"{b:02x}" for b in raw[:_SHOWN_BYTES])
    return shown + ("..." if len(raw) > _SHOWN_BYTES else "") if shown else "(no value available)"


def _keyword(elem: Any) -> str:
    """dcmdump's last column: the keyword; for private elements their dictionary name, or Unknown."""
    if elem.keyword:
        from pydicom.datadict import dictionary_is_retired

        return ("RETIRED_" if dictionary_is_retired(elem.tag) else "") + str(elem.keyword)
    if elem.tag.is_private_creator:
        return "PrivateCreator"
    name = str(elem.name)
    return re.sub(r"[^A-Za-z0-9]", "", name) if name.startswith("[") else "Unknown"


def _encoded_length(elem: Any) -> int:
    """The value length of an element that was not read from a file (or read without its length)."""
    value = elem.value
    if value is None:
        return 0
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if elem.VR == "SQ":
        return sum(8 + _item_length(item) for item in value or [])
    values = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    fixed = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "AT": 4, "UV": 8, "SV": 8}.get(elem.VR)
    if fixed:
        return fixed * len(values)
    n = len("\\".join(str(v) for v in values).encode("utf-8", "replace"))
    return n + (n % 2)


_LONG_HEADER_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})


def _lengths(ds: Dataset) -> Iterator[tuple[Any, Any, int | None]]:
    """(element, raw element, value length on the wire or None when undefined) for each element."""
    for tag in list(ds.keys()):  # tags first: ds[tag] converts the raw element in place
        raw = ds.get_item(tag)  # as read: its length on the wire (a RawDataElement until converted)
        elem = ds[tag]
        length = getattr(raw, "length", None)
        if elem.is_undefined_length or length == 0xFFFFFFFF:
            yield elem, raw, None
            continue
        if length is None or (length == 0 and elem.value not in (None, "", b"")):
            length = _encoded_length(elem)
        yield elem, raw, length


def _item_length(item: Dataset) -> int:
    """An item's value length as encoded (dcmdump shows it on the item line)."""
    implicit = bool(getattr(item, "original_encoding", (False, True))[0])
    total = 0
    for elem, _raw, length in _lengths(item):
        header = 8 if implicit or elem.VR not in _LONG_HEADER_VRS else 12
        if length is None:  # undefined length: its content and its delimiter
            length = sum(8 + _item_length(i) for i in elem.value) + 8 if elem.VR == "SQ" else 0
        total += header + length
    return total


def _dump_lines(ds: Dataset, depth: int = 0) -> Iterator[str]:
    indent = "  " * depth
    width = 55 + len(indent)  # dcmdump's comment column moves with the nesting

    def line(text: str, comment: str) -> str:
        return f"{text:<{width}} # {comment}"

    for elem, _raw, length in _lengths(ds):
        vm = elem.VM if elem.VR != "SQ" else 1
        text = f"{indent}({elem.tag.group:04x},{elem.tag.element:04x}) {elem.VR} {_dump_value(elem)}"
        yield line(text, f"{'u/l' if length is None else length:>3},{vm:>2} {_keyword(elem)}")
        if elem.tag == 0x7FE00010 and length is None and isinstance(elem.value, (bytes, bytearray)):
            inner = "  " * (depth + 1)
            for fragment in _fragments(bytes(elem.value)):
                head = f"{inner}(fffe,e000) pi {_hex(fragment)}"
                yield f"{head:<{width + 2}} # {len(fragment):>3}, 1 Item"
            yield line(f"{indent}(fffe,e0dd) na (SequenceDelimitationItem)", "  0, 0 SequenceDelimitationItem")
        if elem.VR == "SQ":
            inner = "  " * (depth + 1)
            for item in elem.value:
                undefined = bool(getattr(item, "is_undefined_length_sequence_item", False))
                head = f"{inner}(fffe,e000) na (Item with {'undefined' if undefined else 'explicit'} length #={len(item)})"
                yield f"{head:<{width + 2}} # {'u/l' if undefined else _item_length(item):>3}, 1 Item"
                yield from _dump_lines(item, depth + 2)
                tail = f"{inner}(fffe,e00d) na (ItemDelimitationItem{'' if undefined else ' for re-encoding'})"
                yield f"{tail:<{width + 2}} #   0, 0 ItemDelimitationItem"
            tail = f"{indent}(fffe,e0dd) na (SequenceDelimitationItem{'' if length is None else ' for re-encod.'})"
            yield line(tail, "  0, 0 SequenceDelimitationItem")


def dump_text(path: str | Path) -> str:
    """The dcmdump-style listing of the Part 10 file (or bare dataset) at ``path``."""
    from pydicom import dcmread

    ds = dcmread(str(path), force=True, defer_size="4 KB")
    lines = []
    meta = getattr(ds, "file_meta", None)
    if meta is not None and len(meta):
        lines += ["", "# Dicom-File-Format", "", "# Dicom-Meta-Information-Header",
                  "# Used TransferSyntax: Little Endian Explicit"]
        lines += list(_dump_lines(meta))
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    lines += ["", "# Dicom-Data-Set", f"# Used TransferSyntax: {syntax.name if syntax else 'unknown (no file meta)'}"]
    lines += list(_dump_lines(ds))
    return "\n".join(lines) + "\n"


@app.command()
def dump(
    what: Annotated[str, typer.Argument(metavar="FILE|UID", help="a DICOM file, or the SOP Instance UID of an instance in the data folder")],
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Print a DICOM header as DCMTK's dcmdump does: a file, or a stored instance by its UID."""
    path = Path(what)
    stored = not path.is_file()
    if stored:
        if path.exists() or "/" in what or not what.replace(".", "").isdigit():
            raise _fail(f"{what} is neither a file nor a SOP Instance UID")
        path = _stored_path(what, server_settings(config, data_dir))
    try:
        text = dump_text(path)
    except Exception as exc:  # pydicom: anything that is not DICOM
        raise _fail(f"{path}: cannot read it as DICOM: {exc}", EXIT_FAILURE_STATUS) from None
    if stored:
        typer.echo(f"# {what}: {path}")  # where the instance is kept
    typer.echo(text, nl=False)


def _stored_path(uid: str, settings: ServerSettings) -> Path:
    from sqlalchemy import select

    from pacskit.store import FilesystemBlobStore
    from pacskit.store.index.models import Instance, Series, Study

    with _index(settings) as index, index.reading() as s:
        key = s.scalar(select(Instance.blob_key).where(Instance.sop_instance_uid == uid))
        if key is None:
            level = ("a study" if s.scalar(select(Study.pk).where(Study.study_instance_uid == uid)) is not None
                     else "a series" if s.scalar(select(Series.pk).where(Series.series_instance_uid == uid)) is not None
                     else None)
    if key is None:
        hint = f": {uid} is {level}; `pacskit ls series --study` / `--data-dir` list its instances" if level else ""
        raise _fail(f"no instance with SOP Instance UID {uid} in {settings.data_path}{hint}", EXIT_FAILURE_STATUS)
    found = FilesystemBlobStore(settings.storage_path).path(key)
    if found is None or not Path(found).is_file():
        raise _fail(f"instance {uid} is indexed but its file {found or key} is missing (run `pacskit check`)",
                    EXIT_FAILURE_STATUS)
    return Path(found)


# ---------------------------------------------------------------------- ls

_LS_COLUMNS: dict[str, tuple[list[str], list[str]]] = {
    # level: (headers, JSON/CSV keys)
    "patients": (["patient ID", "name", "birth date", "sex", "studies"],
                 ["patient_id", "patient_name", "birth_date", "sex", "studies"]),
    "studies": (["study UID", "date", "patient ID", "name", "description", "modalities", "series", "instances"],
                ["study_instance_uid", "study_date", "patient_id", "patient_name", "description", "modalities",
                 "series", "instances"]),
    "series": (["series UID", "study UID", "modality", "number", "description", "instances"],
               ["series_instance_uid", "study_instance_uid", "modality", "series_number", "description",
                "instances"]),
}


def _local_rows(settings: ServerSettings, level: str, patient: str | None, study: str | None) -> list[list[Any]]:
    from sqlalchemy import select

    from pacskit.store.index.models import Patient, Series, Study

    q: Any
    with _index(settings) as index, index.reading() as s:
        if level == "patients":
            q = select(Patient.patient_id, Patient.patient_name, Patient.patient_birth_date, Patient.patient_sex,
                       Patient.num_studies).order_by(Patient.patient_id)
            if patient is not None:
                q = q.where(Patient.patient_id == patient)
        elif level == "studies":
            q = (select(Study.study_instance_uid, Study.study_date, Patient.patient_id, Patient.patient_name,
                        Study.study_description, Study.modalities_in_study, Study.num_series, Study.num_instances)
                 .join(Patient, Study.patient_fk == Patient.pk)
                 .order_by(Patient.patient_id, Study.study_date, Study.study_instance_uid))
            if patient is not None:
                q = q.where(Patient.patient_id == patient)
            if study is not None:
                q = q.where(Study.study_instance_uid == study)
        else:
            q = (select(Series.series_instance_uid, Study.study_instance_uid, Series.modality, Series.series_number,
                        Series.series_description, Series.num_instances)
                 .join(Study, Series.study_fk == Study.pk).join(Patient, Study.patient_fk == Patient.pk)
                 .order_by(Study.study_instance_uid, Series.series_number, Series.series_instance_uid))
            if patient is not None:
                q = q.where(Patient.patient_id == patient)
            if study is not None:
                q = q.where(Study.study_instance_uid == study)
        return [list(row) for row in s.execute(q).all()]


def _peer_rows(target: str, level: str, patient: str | None, study: str | None, data_dir: str | None,
               config: str | None, calling: str, timeout: float) -> list[list[Any]]:
    from pacskit.cli.common import NetOptions, fail, resolve_target, run, scu_options
    from pacskit.client import QueryRetrieveScu
    from pacskit.dicom.status import status_category

    net = NetOptions(calling=calling, timeout=timeout, data_dir=data_dir, config=config)
    remote = resolve_target(target, net)
    keys = {
        "patients": ["PatientID", "PatientName", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies"],
        "studies": ["StudyInstanceUID", "StudyDate", "PatientID", "PatientName", "StudyDescription",
                    "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"],
        "series": ["SeriesInstanceUID", "StudyInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                   "NumberOfSeriesRelatedInstances"],
    }[level]
    values = {"PatientID": patient, "StudyInstanceUID": study}
    if level == "series" and study is None:
        raise fail("ls series --peer needs --study UID (a C-FIND at SERIES level names its study)", EXIT_USAGE)
    if level == "patients" and study is not None:
        raise fail("--study does not apply to patients", EXIT_USAGE)
    query = [f"{k}={values[k]}" if values.get(k) else k for k in keys]
    if level == "studies" and patient and "PatientID" not in keys:
        query.append(f"PatientID={patient}")
    model = "patient" if level == "patients" else "study"
    scu = QueryRetrieveScu(remote, model=model, **scu_options(remote, net))
    result = run(scu.find(query, level={"patients": "PATIENT", "studies": "STUDY", "series": "SERIES"}[level]))
    if status_category(result.status) == "Failure":
        raise fail(f"C-FIND failed with status 0x{result.status:04X}"
                   + (f": {result.error_comment}" if result.error_comment else ""), EXIT_FAILURE_STATUS)
    rows = []
    for record in result.records:
        ds = record.dataset
        row: list[Any] = []
        for k in keys:
            value = ds.get(k)
            if value is None or value == "":
                row.append(None)
            elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
                row.append("\\".join(str(v) for v in value))
            elif k.startswith("NumberOf") or k == "SeriesNumber":
                try:
                    row.append(int(str(value)))
                except ValueError:
                    row.append(str(value))
            else:
                row.append(str(value))
        rows.append(row)
    return rows


@app.command("ls")
def ls(
    level: Annotated[str, typer.Argument(help="patients, studies or series")] = "patients",
    patient: Annotated[Optional[str], typer.Option("--patient", help="only this Patient ID")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="only this Study Instance UID")] = None,
    peer: Annotated[Optional[str], typer.Option("--peer", help="list a peer's (C-FIND): AET@host:port or a registered AE")] = None,
    calling: Annotated[str, typer.Option("--calling", "-aet", help="our calling AE title (with --peer)")] = "PACSKIT",
    timeout: Annotated[float, typer.Option(help="ACSE and DIMSE timeout in seconds (with --peer)")] = 30.0,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """List the patients, studies or series of the data folder, or of a peer (--peer)."""
    fmt = output_format(as_json, as_csv)
    level = {"patient": "patients", "study": "studies"}.get(level.lower(), level.lower())
    if level not in _LS_COLUMNS:
        raise _fail(f"{level!r}: list patients, studies or series")
    if peer is not None:
        rows = _peer_rows(peer, level, patient, study, data_dir, config, calling, timeout)
    else:
        rows = _local_rows(server_settings(config, data_dir), level, patient, study)
    headers, keys = _LS_COLUMNS[level]
    print_rows(headers, rows, fmt, keys=keys)
    if fmt == "table":
        typer.echo(f"{len(rows)} {level if len(rows) != 1 else level.rstrip('s').replace('studie', 'study')}", err=True)


# ---------------------------------------------------------------------- stats


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


@app.command()
def stats(
    by: Annotated[str, typer.Option("--by", help="modality, patient or study")] = "modality",
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Counts and sizes of what the data folder holds, per modality, patient or study (from the index)."""
    from sqlalchemy import func, select

    from pacskit.store.index.models import Instance, Patient, Series, Study

    fmt = output_format(as_json, as_csv)
    if by not in ("modality", "patient", "study"):
        raise _fail(f"--by {by!r}: modality, patient or study")
    settings = server_settings(config, data_dir)
    n_instances = func.count(Instance.pk)
    n_bytes = func.coalesce(func.sum(Instance.size), 0)
    joined = (select().select_from(Instance).join(Series, Instance.series_fk == Series.pk)
              .join(Study, Series.study_fk == Study.pk).join(Patient, Study.patient_fk == Patient.pk))
    with _index(settings) as index, index.reading() as s:
        totals = s.execute(joined.add_columns(
            func.count(func.distinct(Patient.pk)), func.count(func.distinct(Study.pk)),
            func.count(func.distinct(Series.pk)), n_instances, n_bytes)).one()
        if by == "modality":
            headers = ["modality", "patients", "studies", "series", "instances", "size"]
            keys = ["modality", "patients", "studies", "series", "instances", "bytes"]
            q = joined.add_columns(Series.modality, func.count(func.distinct(Patient.pk)),
                                   func.count(func.distinct(Study.pk)), func.count(func.distinct(Series.pk)),
                                   n_instances, n_bytes).group_by(Series.modality).order_by(Series.modality)
        elif by == "patient":
            headers = ["patient ID", "name", "studies", "series", "instances", "size"]
            keys = ["patient_id", "patient_name", "studies", "series", "instances", "bytes"]
            q = joined.add_columns(Patient.patient_id, Patient.patient_name, func.count(func.distinct(Study.pk)),
                                   func.count(func.distinct(Series.pk)), n_instances, n_bytes
                                   ).group_by(Patient.pk, Patient.patient_id, Patient.patient_name
                                              ).order_by(Patient.patient_id)
        else:
            headers = ["study UID", "date", "patient ID", "modalities", "series", "instances", "size"]
            keys = ["study_instance_uid", "study_date", "patient_id", "modalities", "series", "instances", "bytes"]
            q = joined.add_columns(Study.study_instance_uid, Study.study_date, Patient.patient_id,
                                   Study.modalities_in_study, func.count(func.distinct(Series.pk)), n_instances,
                                   n_bytes).group_by(Study.pk, Study.study_instance_uid, Study.study_date,
                                                     Patient.patient_id, Study.modalities_in_study
                                                     ).order_by(Patient.patient_id, Study.study_date)
        rows = [list(r) for r in s.execute(q).all()]
    for row in rows:
        row[-1] = int(row[-1] or 0)
    if fmt != "table":
        print_rows(headers, rows, fmt, keys=keys)
        return
    print_rows(headers, [[*r[:-1], _size(r[-1])] for r in rows], fmt, keys=keys)
    patients, studies, series, instances, size = totals
    typer.echo(f"{patients} patients, {studies} studies, {series} series, {instances} instances, {_size(int(size or 0))}"
               f" ({int(size or 0)} bytes) in {settings.data_path}")
