"""Disc labels: what a Media Creation request's label attributes ask for, as a PDF a disc printer prints.

PS3.4 Annex S lets the requester describe the label: Label Text (2200,0002), Label Using Information
Extracted From Instances (2200,0001: patient, studies), Barcode Value (2200,0005) and Barcode Symbology
(2200,0006), Label Style Selection (2200,0003). The standard leaves the look to the implementation.
pacskit makes one PDF page per volume, 120 mm square with the disc's outline (the size disc printers
such as the Epson PP-100 or a Primera Bravo take as their print area), text in the upper half, the
barcode in the lower half, "volume n of N" at the bottom; a burner that drives a printer prints it
(:class:`pacskit.media.burners.BurnJob.labels`), the folder burner keeps it beside the image.

Barcode symbologies (case-insensitive; reportlab draws them): ``CODE128`` (the default when only a
value is given), ``CODE39``, ``CODE93``, ``INTERL2OF5``, ``EAN13``, ``EAN8``, ``UPCA``, ``CODABAR``,
``QRCODE``, ``DATAMATRIX``. An unknown symbology or a value the symbology cannot encode is
:class:`LabelError` (the request fails before anything is burnt: a disc with a wrong barcode is worse
than none).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Barcode Symbology value -> reportlab's barcode name
SYMBOLOGIES = {
    "CODE128": "Code128", "CODE39": "Standard39", "CODE93": "Standard93", "INTERL2OF5": "I2of5",
    "EAN13": "EAN13", "EAN8": "EAN8", "UPCA": "UPCA", "CODABAR": "Codabar", "QRCODE": "QR",
    "DATAMATRIX": "ECC200DataMatrix",
}
#: the page: 120 mm, a CD/DVD
DISC_MM = 120.0
HUB_MM = 41.0


class LabelError(ValueError):
    """The label cannot be made as asked (unknown symbology, a value the barcode cannot encode)."""


@dataclass(slots=True)
class LabelStudy:
    """What a label says about one study (from the first instance of the study found)."""

    patient_name: str
    patient_id: str
    birth_date: str
    study_date: str
    description: str
    accession: str
    modalities: list[str] = field(default_factory=list)


@dataclass(slots=True)
class LabelRequest:
    """The label attributes of a media creation request."""

    text: str = ""
    from_instances: bool = False
    barcode_value: str = ""
    barcode_symbology: str = ""
    style: str = ""

    @property
    def wanted(self) -> bool:
        """Whether a label was asked for at all."""
        return bool(self.text or self.from_instances or self.barcode_value)


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


def studies_of(paths: Iterable[str]) -> list[LabelStudy]:
    """The studies of these Part 10 files, in the order first met, each read from the header of its
    first file (the files of one study agree on what a label shows)."""
    from pydicom import dcmread

    studies: dict[str, LabelStudy] = {}
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        uid = str(ds.get("StudyInstanceUID", ""))
        modality = str(ds.get("Modality", "") or "")
        known = studies.get(uid)
        if known is None:
            known = studies[uid] = LabelStudy(
                patient_name=str(ds.get("PatientName", "") or "").replace("^", " ").strip(),
                patient_id=str(ds.get("PatientID", "") or ""), birth_date=_date(str(ds.get("PatientBirthDate", "") or "")),
                study_date=_date(str(ds.get("StudyDate", "") or "")),
                description=str(ds.get("StudyDescription", "") or ""), accession=str(ds.get("AccessionNumber", "") or ""))
        if modality and modality not in known.modalities:
            known.modalities.append(modality)
    return list(studies.values())


def label_lines(request: LabelRequest, studies: Sequence[LabelStudy]) -> list[str]:
    """The text of the label, line by line: the Label Text, then (when asked) the patients and their
    studies (at most 6 lines of studies; "+ n more studies" after)."""
    lines = [line for line in request.text.splitlines() if line.strip()]
    if request.from_instances:
        shown = 0
        for patient in dict.fromkeys((s.patient_name, s.patient_id, s.birth_date) for s in studies):
            name, pid, birth = patient
            lines.append(" ".join(p for p in (name, f"ID {pid}" if pid else "", f"born {birth}" if birth else "") if p))
            for s in studies:
                if (s.patient_name, s.patient_id, s.birth_date) != patient:
                    continue
                if shown == 6:
                    lines.append(f"+ {len(studies) - shown} more studies")
                    return lines
                lines.append("  " + " ".join(p for p in (s.study_date, "/".join(s.modalities), s.description,
                                                          f"Acc {s.accession}" if s.accession else "") if p))
                shown += 1
    return lines


def _barcode(value: str, symbology: str) -> Any:
    from reportlab.graphics.barcode import createBarcodeDrawing
    from reportlab.lib.units import mm

    name = SYMBOLOGIES.get((symbology or "CODE128").strip().upper())
    if name is None:
        raise LabelError(f"barcode symbology {symbology!r} is not supported (supported: {', '.join(SYMBOLOGIES)})")
    if name in ("EAN13", "EAN8", "UPCA", "I2of5") and not value.isdigit():
        raise LabelError(f"barcode value {value!r} cannot be encoded as {symbology}: digits only")
    square = name in ("QR", "ECC200DataMatrix")
    try:
        if square:
            return createBarcodeDrawing(name, value=value, width=24 * mm, height=24 * mm)
        # no check character added to Code 39 / Interleaved 2 of 5: the bars carry the value as asked
        extra = {"checksum": 0} if name in ("Standard39", "I2of5") else {}
        drawing = createBarcodeDrawing(name, value=value, barHeight=11 * mm, humanReadable=True, **extra)
    except Exception as exc:  # noqa: BLE001 - reportlab raises ValueError, AssertionError... per symbology
        raise LabelError(f"barcode value {value!r} cannot be encoded as {symbology or 'CODE128'}: {exc}") from exc
    width = float(drawing.width)
    if width > 70 * mm:  # wider than the printable band of a disc: scale down
        drawing.scale(70 * mm / width, 1)
        drawing.width = 70 * mm
    return drawing


def barcode_problem(value: str, symbology: str) -> str | None:
    """Why this barcode cannot be printed (one line), or ``None`` when it can; what a Media Creation SCP
    checks when the request is created."""
    if not value:
        return "Barcode Symbology without a Barcode Value"
    try:
        _barcode(value, symbology)
    except LabelError as exc:
        return str(exc)
    return None


def label_name(volume: Path) -> str:
    """The label file of a volume: ``<name>_label.pdf`` beside ``<name>.iso`` / ``.zip`` / folder ``<name>``."""
    stem = volume.name[: -len(volume.suffix)] if volume.suffix.lower() in (".iso", ".zip") else volume.name
    return f"{stem}_label.pdf"


def write_label(path: Path, request: LabelRequest, studies: Sequence[LabelStudy], volume: int = 1,
                volumes: int = 1) -> Path:
    """Write the label of one volume to ``path`` (PDF) and return it. Raises :class:`LabelError`."""
    from reportlab.graphics import renderPDF
    from reportlab.lib.units import mm
    from reportlab.pdfgen.canvas import Canvas

    barcode = _barcode(request.barcode_value, request.barcode_symbology) if request.barcode_value else None
    size = DISC_MM * mm
    centre = size / 2
    tmp = path.with_name(path.name + ".part")
    canvas = Canvas(str(tmp), pagesize=(size, size))
    canvas.setTitle(request.text.splitlines()[0] if request.text.strip() else "DICOM media")
    canvas.setLineWidth(0.3)
    canvas.setStrokeGray(0.6)
    canvas.circle(centre, centre, size / 2 - 0.5, stroke=1, fill=0)  # the disc's edge
    canvas.circle(centre, centre, HUB_MM * mm / 2, stroke=1, fill=0)  # the hub: nothing printed inside
    canvas.setFillGray(0)
    y = size - 22 * mm
    for n, line in enumerate(label_lines(request, studies)):
        font = ("Helvetica-Bold", 10) if n == 0 else ("Helvetica", 7.5)
        canvas.setFont(*font)
        half_chord = (max(0.0, (size / 2) ** 2 - (y - centre) ** 2)) ** 0.5 - 6 * mm
        while line and canvas.stringWidth(line, *font) > 2 * half_chord:  # keep inside the disc
            line = line[:-2] + "…"
        canvas.drawCentredString(centre, y, line)
        y -= 4.2 * mm if n == 0 else 3.4 * mm
        if y < centre + HUB_MM * mm / 2 + 2 * mm:
            break
    if barcode is not None:
        width, height = float(barcode.width), float(barcode.height)
        renderPDF.draw(barcode, canvas, centre - width / 2, centre - HUB_MM * mm / 2 - 4 * mm - height)
    if volumes > 1:
        canvas.setFont("Helvetica", 7.5)
        canvas.drawCentredString(centre, 12 * mm, f"Volume {volume} of {volumes}")
    canvas.showPage()
    canvas.save()
    tmp.replace(path)
    return path
