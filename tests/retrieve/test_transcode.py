"""pacskit.dicom.transcode: every uncompressed syntax to every other, pydicom's compressed test files
decompressed (pixels equal for the lossless ones), the SOP Instance UID kept, and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from pacskit.dicom.transcode import (
    NATIVE_SYNTAXES,
    CannotConvert,
    can_convert,
    encodable_syntaxes,
    encode_frame,
    transcode,
)

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
    assert not can_convert(NATIVE_SYNTAXES[0], JPEG2000)  # lossy compression is never done on request
    assert not can_convert(NATIVE_SYNTAXES[0], JPEGBaseline8Bit)
    with pytest.raises(CannotConvert, match="no pixel data"):
        transcode(get_testdata_file("rtplan.dcm"), tmp_path / "x.dcm", RLELossless)
    assert can_convert(JPEG2000Lossless, NATIVE_SYNTAXES[1])
    assert not can_convert("1.2.3.4", NATIVE_SYNTAXES[0])
    broken = tmp_path / "broken.dcm"
    data = Path(get_testdata_file("SC_rgb_rle.dcm")).read_bytes()
    broken.write_bytes(data[: len(data) - 2000])  # truncated RLE fragments
    with pytest.raises(CannotConvert):
        transcode(broken, tmp_path / "x.dcm", NATIVE_SYNTAXES[0])


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "SC_rgb_small_odd.dcm",
                                  "SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm"])
@pytest.mark.parametrize("target", [RLELossless, JPEG2000Lossless])
def test_lossless_compression_on_request(tmp_path: Path, name: str, target: str) -> None:
    """Native or decodable sources into the lossless syntaxes an installed encoder writes: the
    pixels come back equal, the instance keeps its UID."""
    if target not in encodable_syntaxes():
        pytest.skip(f"no encoder installed for {target}")
    source = get_testdata_file(name)
    original = dcmread(source)
    assert can_convert(original.file_meta.TransferSyntaxUID, target)
    if target == JPEG2000Lossless and original.Rows < 8:  # openjpeg: too small for its resolution levels
        with pytest.raises(CannotConvert, match="cannot encode"):
            transcode(source, tmp_path / "out.dcm", target)
        return
    transcode(source, tmp_path / "out.dcm", target)
    got = dcmread(tmp_path / "out.dcm")
    assert got.file_meta.TransferSyntaxUID == target and got.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(got.pixel_array, original.pixel_array)


def test_encode_frame_round_trip() -> None:
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder

    frame = (np.arange(32 * 48, dtype=np.uint16) % 3000).reshape(32, 48)
    for target in encodable_syntaxes():
        data = encode_frame(frame.tobytes(), target, rows=32, columns=48, samples_per_pixel=1, bits_allocated=16,
                            bits_stored=12, pixel_representation=0, photometric_interpretation="MONOCHROME2")
        back, _ = get_decoder(target).as_array(
            encapsulate([data]), rows=32, columns=48, samples_per_pixel=1, bits_allocated=16, bits_stored=12,
            pixel_representation=0, photometric_interpretation="MONOCHROME2", number_of_frames=1)
        assert np.array_equal(back, frame), target
    with pytest.raises(CannotConvert):
        encode_frame(frame.tobytes(), JPEG2000, rows=32, columns=48, samples_per_pixel=1, bits_allocated=16,
                     bits_stored=12, pixel_representation=0, photometric_interpretation="MONOCHROME2")
