"""Reading the indexed attributes: values like pydicom's, Unicode names, strict UIDs, streamed hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pydicom
import pytest

from pacskit.dicom.part10 import read_part10_header
from pacskit.store import InvalidInstance, is_valid_uid, normalise_person_name, read_index_attributes, sha256_file
from pacskit.store.index.extract import INDEX_TAGS

from ._util import REAL_FILES, dicom_file, make_instance


@pytest.mark.parametrize("name", REAL_FILES)
def test_attributes_match_pydicom(name: str) -> None:
    path = dicom_file(name)
    a = read_index_attributes(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert a.sop_instance_uid == ds.SOPInstanceUID
    assert a.sop_class_uid == ds.SOPClassUID
    assert a.study_instance_uid == ds.StudyInstanceUID
    assert a.series_instance_uid == ds.SeriesInstanceUID
    assert a.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert a.patient_name == (str(ds.PatientName).strip() or None if "PatientName" in ds else None)
    assert a.patient_id == (ds.get("PatientID") or None)
    assert a.modality == (ds.get("Modality") or None)
    assert a.study_date == (ds.get("StudyDate") or None)
    assert a.accession_number == (ds.get("AccessionNumber") or None)
    if "SeriesNumber" in ds and ds.SeriesNumber not in (None, ""):
        assert a.series_number == int(ds.SeriesNumber)
    charset = ds.get("SpecificCharacterSet")
    if charset is None:
        assert a.specific_character_set is None
    else:
        expected = "\\".join(charset) if not isinstance(charset, str) else charset
        assert a.specific_character_set == expected


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtplan.dcm", "image_dfl.dcm", "chrH32.dcm",
                                  "MR_small_bigendian.dcm"])
def test_reading_from_offset_gives_the_same(name: str) -> None:
    path = dicom_file(name)
    offset = read_part10_header(path).dataset_offset
    assert read_index_attributes(path, offset=offset) == read_index_attributes(path)
    with open(path, "rb") as fh:
        assert read_index_attributes(fh) == read_index_attributes(path)


def test_unicode_names() -> None:
    assert read_index_attributes(dicom_file("chrH31.dcm")).patient_name == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert read_index_attributes(dicom_file("chrFren.dcm")).patient_name == "Buc^Jérôme"
    assert read_index_attributes(dicom_file("chrRuss.dcm")).patient_name == "Люкceмбypг"
    assert read_index_attributes(dicom_file("chrX2.dcm")).patient_name == "Wang^XiaoDong=王^小东"
    a = read_index_attributes(dicom_file("chrI2.dcm"))
    assert a.patient_name == "Hong^Gildong=洪^吉洞=홍^길동"
    assert a.specific_character_set == "\\ISO 2022 IR 149"
    assert a.patient_name_search == "HONG^GILDONG=洪^吉洞=홍^길동"


def test_only_index_tags_are_read() -> None:
    assert 0x7FE00010 not in INDEX_TAGS
    assert len(INDEX_TAGS) == 23  # charset + 15 text + 2 numbers + 4 UIDs + Request Attributes Sequence


def test_normalised_person_name() -> None:
    assert normalise_person_name("Doe^John^^^") == "DOE^JOHN"
    assert normalise_person_name("doe^john") == "DOE^JOHN"
    assert normalise_person_name("Buc^Je\u0301ro\u0302me") == "BUC^JÉRÔME"  # NFC
    assert normalise_person_name("Yamada^Tarou=山田^太郎=") == "YAMADA^TAROU=山田^太郎"
    assert normalise_person_name("^^^^") is None
    assert normalise_person_name(None) is None


@pytest.mark.parametrize(
    ("uid", "valid"),
    [
        ("1.2.840.10008.1.2", True),
        ("0", True),
        ("2.25.329800735698586629295641978511506172918", True),
        ("1." + "2" * 62, True),  # 64 characters
        ("1." + "2" * 63, False),  # 65
        ("1.02.3", False),  # leading zero
        ("1.2.", False),
        (".1.2", False),
        ("1..2", False),
        ("1.2.abc", False),
        ("1.2 ", False),
        ("", False),
    ],
)
def test_uid_grammar(uid: str, valid: bool) -> None:
    assert is_valid_uid(uid) is valid


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
@pytest.mark.parametrize(
    ("attributes", "tag", "words"),
    [
        ({"StudyInstanceUID": None}, 0x0020000D, "missing"),
        ({"SeriesInstanceUID": "1.2/03"}, 0x0020000E, "not a valid UID"),  # harmless "1.2.03" is accepted
        ({"SOPInstanceUID": "1.2.3.4.5." + "6" * 124}, 0x00080018, "longer than 128"),  # 65 is accepted
        ({"SOPClassUID": "1.2.840.a*"}, 0x00080016, "not a valid UID"),  # "1.2.840.abc" is accepted
    ],
)
def test_invalid_uids_raise_with_reason_and_tag(tmp_path: Path, attributes: dict, tag: int, words: str) -> None:
    path = make_instance(tmp_path, **attributes)
    with pytest.raises(InvalidInstance) as info:
        read_index_attributes(path)
    assert info.value.tag == tag
    assert words in info.value.reason
    assert pydicom.datadict.keyword_for_tag(tag) in str(info.value)


def test_charset_file_without_study_uid_is_invalid() -> None:
    with pytest.raises(InvalidInstance) as info:
        read_index_attributes(dicom_file("chrSQEncoding.dcm"))
    assert info.value.tag == 0x0020000D


def test_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(InvalidInstance, match="not a DICOM"):
        read_index_attributes(path)
    path.write_bytes(b"")
    with pytest.raises(InvalidInstance):
        read_index_attributes(path)


def test_sha256_is_streamed_and_correct(tmp_path: Path) -> None:
    data = os.urandom((5 << 20) // 2 + 17)  # 2.5 MiB + 17: several chunks and a partial one
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()
