"""pacskit.dicom.transcode: every uncompressed syntax to every other, pydicom's compressed test files
decompressed (pixels equal for the lossless ones), the SOP Instance UID kept, and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from pacskit.dicom.transcode import NATIVE_SYNTAXES, CannotConvert, can_convert, transcode

SOURCES = {
    "CT_small.dcm": True,  # explicit LE, 16 bit
    "MR_small_implicit.dcm": True,
    "ExplVR_BigEnd.dcm": True,
    "SC_rgb_small_odd.dcm": True,  # 8 bit RGB, odd length
    "rtplan.dcm": True,  # no pixel data, sequences
    "image_dfl.dcm": True,  # deflated explicit LE
    "SC_rgb_rle.dcm": True,
    "JPEG2000.dcm": False,  # lossy J2K: compared with pydicom's own decoding below
    "GDCMJ2K_TextGBR.dcm": True,
    "MR_small_jpeg_ls_lossless.dcm": True,
    "SC_rgb_jpeg_gdcm.dcm": True,  # JPEG lossless
    "SC_rgb_jpeg_dcmtk.dcm": False,  # JPEG baseline (lossy)
}


@pytest.mark.parametrize("target", NATIVE_SYNTAXES)
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_transcode(tmp_path: Path, name: str, target: str) -> None:
    source = get_testdata_file(name)
    original = dcmread(source)
    out = tmp_path / "out.dcm"
    transcode(source, out, target)
    got = dcmread(out)
    assert got.file_meta.TransferSyntaxUID == target
    assert got.SOPInstanceUID == original.SOPInstanceUID == got.file_meta.MediaStorageSOPInstanceUID
    assert got.get("PatientName") == original.get("PatientName")
    if "PixelData" in original:
        expected = original.pixel_array  # pydicom gives YBR JPEG / J2K with MCT as RGB, as decompress() does
        if SOURCES[name]:
            assert np.array_equal(got.pixel_array, expected)
        else:
            assert got.pixel_array.shape == expected.shape
            assert np.abs(got.pixel_array.astype(int) - expected.astype(int)).max() <= 2
    if name == "rtplan.dcm":
        assert len(got.BeamSequence) == len(original.BeamSequence)


def test_refusals(tmp_path: Path) -> None:
    ct = get_testdata_file("CT_small.dcm")
    with pytest.raises(CannotConvert, match="conversion limit"):
        transcode(ct, tmp_path / "x.dcm", NATIVE_SYNTAXES[0], max_size=100)
    with pytest.raises(CannotConvert, match="cannot encode"):
        transcode(ct, tmp_path / "x.dcm", JPEGBaseline8Bit)
    assert not can_convert(NATIVE_SYNTAXES[0], JPEG2000Lossless)
    assert can_convert(JPEG2000Lossless, NATIVE_SYNTAXES[1])
    assert not can_convert("1.2.3.4", NATIVE_SYNTAXES[0])
    broken = tmp_path / "broken.dcm"
    data = Path(get_testdata_file("SC_rgb_rle.dcm")).read_bytes()
    broken.write_bytes(data[: len(data) - 2000])  # truncated RLE fragments
    with pytest.raises(CannotConvert):
        transcode(broken, tmp_path / "x.dcm", NATIVE_SYNTAXES[0])
