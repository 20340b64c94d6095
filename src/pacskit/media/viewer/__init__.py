"""The viewer on the media: ``index.html`` at the root, ``VIEWER/DATA.JS`` and ``AUTORUN.INF``.

``index.html`` (this package's file, the same on every disc) is a self-contained page that runs from
the disc in a browser, from ``file://``, with no server: it lists the patients, studies, series and
images from ``VIEWER/DATA.JS`` — written here from the volume's DICOMDIR when the media are made — and,
once the user opens the disc's folder (browsers let a ``file://`` page read only files the user picks),
reads the DICOM files themselves and draws the images on a canvas: modality LUT (Rescale Slope /
Intercept), the linear VOI LUT function of PS3.3 C.11.2.1.2.1 with the file's Window Center / Width
(else the image's range), MONOCHROME1 inverted, RGB as is; frames and the series are stepped with the
wheel or the keys, the window changed by a drag. Uncompressed files (Explicit / Implicit VR Little Endian,
which every ``STD-GEN-CD`` disc has) and JPEG baseline (the browser's own decoder) are drawn; other
compressed images are listed and reported, not drawn (docs/media.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).with_name("index.html")


def media_index(dicomdir: Path) -> dict[str, Any]:
    """Patients -> studies -> series -> images (number, File ID) from a DICOMDIR written by
    :mod:`pacskit.media.fileset` (records in depth-first order, as pydicom's FileSet writes them)."""
    from pydicom import dcmread

    ds = dcmread(dicomdir)
    patients: list[dict[str, Any]] = []
    study: dict[str, Any] | None = None
    series: dict[str, Any] | None = None
    for rec in ds.DirectoryRecordSequence:
        kind = str(rec.DirectoryRecordType)
        if kind == "PATIENT":
            patients.append({"id": str(rec.get("PatientID", "")), "name": str(rec.get("PatientName", "")),
                             "studies": []})
            study = series = None
        elif kind == "STUDY" and patients:
            study = {"uid": str(rec.get("StudyInstanceUID", "")), "date": str(rec.get("StudyDate", "")),
                     "description": str(rec.get("StudyDescription", "")),
                     "accession": str(rec.get("AccessionNumber", "")), "series": []}
            patients[-1]["studies"].append(study)
            series = None
        elif kind == "SERIES" and study is not None:
            series = {"uid": str(rec.get("SeriesInstanceUID", "")), "modality": str(rec.get("Modality", "")),
                      "number": str(rec.get("SeriesNumber", "")), "images": []}
            study["series"].append(series)
        elif "ReferencedFileID" in rec and series is not None:
            file_id = rec.ReferencedFileID
            parts = [file_id] if isinstance(file_id, str) else list(file_id)
            series["images"].append({"number": str(rec.get("InstanceNumber", "")), "file": "/".join(parts),
                                     "uid": str(rec.get("ReferencedSOPInstanceUIDInFile", "")), "type": kind})
    return {"patients": patients}


def viewer_files(dicomdir: Path, work: Path, label: str) -> dict[str, str]:
    """The viewer's files for one volume: name on the media -> local file (written into ``work``)."""
    work.mkdir(parents=True, exist_ok=True)
    index = media_index(dicomdir)
    index["label"] = label
    data = work / "DATA.JS"
    data.write_text("window.PACSKIT_MEDIA = " + json.dumps(index, separators=(",", ":")) + ";\n", encoding="utf-8")
    autorun = work / "AUTORUN.INF"
    autorun.write_text(f"[autorun]\r\nshellexecute=index.html\r\nlabel={label[:32]}\r\n", encoding="ascii",
                       errors="replace")
    return {"index.html": str(TEMPLATE), "VIEWER/DATA.JS": str(data), "AUTORUN.INF": str(autorun)}
