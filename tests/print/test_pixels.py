"""Image Box pixels from stored images (pacskit.dicom.printing), checked against pydicom's own
Modality LUT, VOI LUT, colour conversion and palette functions."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_voi_lut, convert_color_space
from pydicom.sequence import Sequence as DicomSequence

from pacskit.dicom.printing import PrintError, decode_image_box_item, image_box_item, prepare_print_image

from ._images import ct_image, rgb_image
from ._pdf import expected_gray


def test_window_from_the_image_and_given() -> None:
    ds = ct_image(50, 60, window=(40.0, 400.0))
    assert np.abs(prepare_print_image(ds).pixels.astype(int) - expected_gray(ds)).max() <= 1
    ds.WindowCenter, ds.WindowWidth = -600.0, 1500.0
    given = prepare_print_image(ct_image(50, 60, window=(40.0, 400.0)), window=(-600.0, 1500.0))
    assert np.abs(given.pixels.astype(int) - expected_gray(ds)).max() <= 1


def test_no_window_is_the_full_range() -> None:
    pixels = prepare_print_image(ct_image(50, 60, window=None), bits=12).pixels
    assert pixels.min() == 0 and pixels.max() == 4095 and pixels.dtype == np.uint16


def test_voi_lut_sequence() -> None:
    ds = ct_image(50, 60, window=None)
    item = Dataset()
    item.LUTDescriptor = [256, -1024, 8]  # first stored value mapped: -1024 HU (after the Modality LUT)
    item.LUTData = [min(255, i) for i in range(256)]
    ds.VOILUTSequence = DicomSequence([item])
    expected = apply_voi_lut(ds.pixel_array.astype(np.int64) - 1024, ds, prefer_lut=True)
    printed = prepare_print_image(ds).pixels
    assert np.abs(printed.astype(int) - np.round(expected.astype(float))).max() <= 1


def test_monochrome1_becomes_monochrome2() -> None:
    normal = prepare_print_image(ct_image(40, 40, seed=3)).pixels
    inverted = prepare_print_image(ct_image(40, 40, seed=3, monochrome1=True)).pixels
    assert np.array_equal(normal.astype(int), 255 - inverted.astype(int))


def test_rgb_ybr_and_palette() -> None:
    rgb = rgb_image(30, 40)
    assert np.array_equal(prepare_print_image(rgb, color=True).pixels, rgb.pixel_array)
    ybr = rgb_image(30, 40)
    ybr.PixelData = convert_color_space(rgb.pixel_array, "RGB", "YBR_FULL").astype(np.uint8).tobytes()
    ybr.PhotometricInterpretation = "YBR_FULL"
    assert np.abs(prepare_print_image(ybr, color=True).pixels.astype(int) - rgb.pixel_array.astype(int)).max() <= 2
    palette = ct_image(20, 20, window=None)
    palette.PhotometricInterpretation = "PALETTE COLOR"
    palette.BitsAllocated, palette.BitsStored, palette.HighBit = 8, 8, 7
    palette.PixelData = (np.arange(400, dtype=np.uint8) % 4).tobytes()
    for color, values in zip(("Red", "Green", "Blue"), ([0, 255, 0, 0], [0, 0, 255, 0], [0, 0, 0, 255])):
        setattr(palette, f"{color}PaletteColorLookupTableDescriptor", [4, 0, 8])
        setattr(palette, f"{color}PaletteColorLookupTableData", bytes(values))
    expected = apply_color_lut(palette.pixel_array, palette)
    assert np.array_equal(prepare_print_image(palette, color=True).pixels, expected.astype(np.uint8))


def test_color_on_grayscale_and_grayscale_on_color() -> None:
    rgb = rgb_image(30, 40)
    luma = rgb.pixel_array @ np.array([0.299, 0.587, 0.114])
    assert np.abs(prepare_print_image(rgb).pixels.astype(float) - luma).max() <= 0.5
    gray12 = prepare_print_image(ct_image(30, 40), bits=12).pixels
    as_color = prepare_print_image(ct_image(30, 40), bits=12, color=True).pixels
    assert as_color.shape == (30, 40, 3) and np.array_equal(as_color[..., 1], (gray12 >> 4).astype(np.uint8))


@pytest.mark.parametrize("bits", [8, 12])
def test_image_box_item_round_trip(bits: int) -> None:
    image = prepare_print_image(ct_image(30, 40), bits=bits)
    item = image_box_item(image)
    assert (item.BitsAllocated, item.BitsStored) == ((8, 8) if bits == 8 else (16, 12))
    decoded = decode_image_box_item(item, color=False, max_pixels=10**6)
    assert np.abs(decoded.astype(float) - image.pixels * 255.0 / (2**bits - 1)).max() <= 0.5


def test_color_item_is_color_by_plane() -> None:
    rgb = rgb_image(30, 40)
    item = image_box_item(prepare_print_image(rgb, color=True))
    assert item.PlanarConfiguration == 1
    planes = np.frombuffer(item.PixelData, np.uint8).reshape(3, 30, 40)
    assert np.array_equal(planes[0], rgb.pixel_array[..., 0])
    assert np.array_equal(decode_image_box_item(item, color=True, max_pixels=10**6), rgb.pixel_array)
    with pytest.raises(PrintError) as caught:
        decode_image_box_item(item, color=False, max_pixels=10**6)
    assert caught.value.status == 0x0106


def test_high_bits_above_bits_stored_are_ignored() -> None:
    image = prepare_print_image(ct_image(10, 10), bits=12)
    item = image_box_item(image)
    noisy = np.frombuffer(item.PixelData, "<u2") | 0xF000  # garbage above the High Bit
    item.PixelData = noisy.astype("<u2").tobytes()
    clean = decode_image_box_item(image_box_item(image), color=False, max_pixels=100)
    assert np.array_equal(decode_image_box_item(item, color=False, max_pixels=100), clean)
