"""A small archive for the media tests: a DataStore with studies in several transfer syntaxes, and the
DCMTK / dicom3tools / xorriso runs the tests check the media with."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from pacskit.store import DataStore, FilesystemBlobStore
from pacskit.testing import make_series
from pacskit.testing.peers import dcmtk_env

#: (patient, study key, series count, instances per series, transfer syntax, modality)
LAYOUT = [
    ("MEDIA1", "a", 2, 3, ExplicitVRLittleEndian, "CT"),
    ("MEDIA1", "b", 1, 2, ImplicitVRLittleEndian, "MR"),
    ("MEDIA2", "c", 1, 3, RLELossless, "CT"),
]


@dataclass
class Archive:
    store: DataStore
    studies: dict[str, str] = field(default_factory=dict)  # key -> Study Instance UID
    syntax: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> stored transfer syntax

    def path(self, sop_uid: str) -> Path:
        p = self.store.instance_path(sop_uid)
        assert p is not None
        return Path(p)


def make_archive(folder: Path, layout: list[tuple[str, str, int, int, str, str]] = LAYOUT,
                 rows: int = 64) -> Archive:
    blobs = FilesystemBlobStore(folder / "blobs")
    store = DataStore.open(f"sqlite:///{folder / 'index.db'}", blobs)
    archive = Archive(store)
    for patient, key, nseries, count, ts, modality in layout:
        study_uid = None
        for s in range(nseries):
            paths = make_series(folder / "in" / key / str(s), count, rows, rows, patient_id=patient,
                                patient_name=f"{patient}^TEST", study_uid=study_uid, transfer_syntax=ts,
                                modality=modality, series_number=s + 1)
            for p in paths:
                ds = dcmread(p, stop_before_pixels=True)
                study_uid = str(ds.StudyInstanceUID)
                archive.syntax[str(ds.SOPInstanceUID)] = ts
                result = store.ingest(p, source_ae="TEST")
                assert result.stored, result
        archive.studies[key] = str(study_uid)
    return archive


def run(argv: list[str], cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=dcmtk_env(), timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def need(*tools: str) -> None:
    import pytest

    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def image_records(dicomdir: Path) -> set[tuple[str, ...]]:
    """(PatientID, Study UID, Series UID, SOP Instance UID, File ID, transfer syntax) of every leaf
    record of a DICOMDIR, read with pydicom's FileSet."""
    from pydicom.fileset import FileSet

    fs = FileSet(dcmread(dicomdir))
    out = set()
    for inst in fs:
        node = inst.node
        series = node.parent._record
        study = node.parent.parent._record
        patient = node.parent.parent.parent._record
        rec = node._record
        out.add((str(patient.PatientID), str(study.StudyInstanceUID), str(series.SeriesInstanceUID),
                 str(rec.ReferencedSOPInstanceUIDInFile), "/".join(rec.ReferencedFileID),
                 str(rec.ReferencedTransferSyntaxUIDInFile)))
    return out


def label_text(pdf: Path) -> str:
    """The text of a label PDF (poppler's pdftotext)."""
    need("pdftotext")
    return run(["pdftotext", str(pdf), "-"]).stdout


def read_barcodes(pdf: Path) -> list[str]:
    """The barcodes on a label PDF, as zbar reads them from a 300 dpi rendering ("CODE-128:value")."""
    need("pdftoppm", "zbarimg")
    png = pdf.with_suffix("")
    run(["pdftoppm", "-r", "300", "-gray", "-png", "-singlefile", str(pdf), str(png)])
    proc = run(["zbarimg", "-q", str(png) + ".png"], check=False)  # exit 4: no barcode found
    return sorted(line for line in proc.stdout.splitlines() if line)
