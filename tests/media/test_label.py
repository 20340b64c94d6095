"""Disc labels (:mod:`pacskit.media.label`): what the request asks for is on the PDF, checked with tools
nobody here wrote: poppler's pdftotext for the text, zbar's zbarimg reading the barcode from a 300 dpi
rendering (as a scanner at the reception desk would)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pacskit.media.burners import BurnJob, FolderBurner, OpticalBurner
from pacskit.media.label import LabelError, LabelRequest, LabelStudy, label_lines, write_label

from ._archive import label_text, need, read_barcodes

STUDIES = [
    LabelStudy("DOE JANE", "P-1", "1970-01-01", "2026-11-30", "CT chest", "A100", ["CT"]),
    LabelStudy("DOE JANE", "P-1", "1970-01-01", "2026-12-01", "MR knee", "A101", ["MR", "SR"]),
]


@pytest.mark.parametrize(("symbology", "value", "zbar"), [
    ("CODE128", "ACC-2026-0042", "CODE-128"),
    ("", "ACC-2026-0042", "CODE-128"),  # a value without a symbology: Code 128
    ("code39", "ACC2026", "CODE-39"),  # no check character added
    ("INTERL2OF5", "123456", "I2/5"),
    ("QRCODE", "https://pacs.example/study/1.2.3", "QR-Code"),
])
def test_the_barcode_reads_back(tmp_path: Path, symbology: str, value: str, zbar: str) -> None:
    pdf = write_label(tmp_path / "label.pdf", LabelRequest(text="Radiology", barcode_value=value,
                                                            barcode_symbology=symbology), [])
    assert read_barcodes(pdf) == [f"{zbar}:{value}"]


def test_text_from_the_instances_and_the_volume(tmp_path: Path) -> None:
    request = LabelRequest(text="St Elsewhere\nRadiology", from_instances=True)
    pdf = write_label(tmp_path / "label.pdf", request, STUDIES, volume=2, volumes=3)
    text = " ".join(label_text(pdf).split())
    for expected in ("St Elsewhere", "Radiology", "DOE JANE ID P-1 born 1970-01-01", "2026-11-30 CT CT chest Acc A100",
                     "2026-12-01 MR/SR MR knee Acc A101", "Volume 2 of 3"):
        assert expected in text
    assert read_barcodes(pdf) == []
    assert label_lines(LabelRequest(text="only text"), STUDIES) == ["only text"]  # instances only when asked


def test_many_studies_are_summed_up() -> None:
    studies = [LabelStudy("ROE", "P-2", "", f"2026-01-{d:02d}", "X", "", ["CR"]) for d in range(1, 10)]
    lines = label_lines(LabelRequest(from_instances=True), studies)
    assert lines[0] == "ROE ID P-2" and len(lines) == 8 and lines[-1] == "+ 3 more studies"


@pytest.mark.parametrize(("symbology", "value", "reason"), [
    ("PDF417", "X", "not supported"),
    ("EAN13", "ABC", "digits only"),
])
def test_a_label_that_cannot_be_made_is_an_error(tmp_path: Path, symbology: str, value: str, reason: str) -> None:
    with pytest.raises(LabelError, match=reason):
        write_label(tmp_path / "label.pdf", LabelRequest(barcode_value=value, barcode_symbology=symbology), [])
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_burners_take_the_labels(tmp_path: Path) -> None:
    need("xorriso")
    iso = tmp_path / "work" / "1.2.3.iso"
    iso.parent.mkdir()
    iso.write_bytes(b"\0" * 2048 * 20)
    label = write_label(tmp_path / "work" / "1.2.3_label.pdf", LabelRequest(text="X", barcode_value="L1"), [])
    printed = tmp_path / "printed.pdf"
    job = BurnJob("1.2.3", [iso], "iso", "X", 1, logging.getLogger("test"), lambda: False, [label])
    # the optical burner prints each piece's label with the configured command (a file copy stands in for lp)
    drive = tmp_path / "drive.iso"
    made = OpticalBurner(device=f"stdio:{drive}", label_command=f"cp {{label}} {printed}").burn(job)
    assert made == [f"stdio:{drive} copy 1 volume 1/1"]
    assert read_barcodes(printed) == ["CODE-128:L1"]
    with pytest.raises(ValueError, match="{label}"):
        OpticalBurner(label_command="lp -d discprinter")
    # the folder burner keeps it beside the image
    out = tmp_path / "out"
    made = FolderBurner(path=str(out)).burn(job)
    assert made == [str(out / "1.2.3.iso")]  # one line per piece of media
    assert read_barcodes(out / "1.2.3_label.pdf") == ["CODE-128:L1"]
