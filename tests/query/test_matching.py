"""The matching-rule table (PS3.4 C.2.2.2): every rule, every level, both information models, on
SQLite, PostgreSQL and MariaDB, over the corpus of tests/query/_corpus.py (synthetic patients chosen
for the rules, plus pydicom's character-set files for non-ASCII names in eleven character sets).

Each row: information model, level, keys (keyword -> value), expected matches as corpus names, or
the failure status expected from :class:`pacskit.store.query.InvalidQuery`.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from pacskit.store import DataStore
from pacskit.store.query import PATIENT_ROOT, STUDY_ROOT, InvalidQuery

from ._corpus import ALL_STUDIES, CHARSET_FILES, Corpus, uid
from ._helpers import encoded, identifier, names, run

PR, SR = PATIENT_ROOT, STUDY_ROOT
A1 = uid("A1")
OT_STUDIES = set(CHARSET_FILES) - {"JAPMULTI"}
ALL_PATIENTS = {"PA", "PB", "PC", "PE"} | set(CHARSET_FILES)

_A11 = {"StudyInstanceUID": A1, "SeriesInstanceUID": uid("A1.1")}


def _item(**keys: str) -> Dataset:
    """A query item of a sequence key."""
    item = Dataset()
    for keyword, value in keys.items():
        setattr(item, keyword, value)
    return item

# (id, model, level, keys, expected names | status, relational)
TABLE: list[tuple[str, str, str, dict[str, Any], set[str] | int, bool]] = [
    # universal matching
    ("universal-study", SR, "STUDY", {}, ALL_STUDIES, False),
    ("universal-star", SR, "STUDY", {"PatientID": "*", "AccessionNumber": "*"}, ALL_STUDIES, False),
    ("universal-patient", PR, "PATIENT", {}, ALL_PATIENTS, False),
    # single value: exact, case-sensitive for non-PN
    ("single-patientid", SR, "STUDY", {"PatientID": "PA"}, {"A1", "A2"}, False),
    ("single-case-sensitive", SR, "STUDY", {"PatientID": "pa"}, set(), False),
    ("single-studyid", SR, "STUDY", {"StudyID": "1"}, {"A1", "B1"}, False),
    ("single-accession-literal-percent", SR, "STUDY", {"AccessionNumber": "ACC%1"}, {"A1"}, False),
    ("single-description-bang", SR, "STUDY", {"StudyDescription": "Chest!"}, {"B1"}, False),
    ("single-description", SR, "STUDY", {"StudyDescription": "Chest"}, {"JAPMULTI"}, False),
    ("single-sex", SR, "STUDY", {"PatientSex": "M"}, {"A1", "A2", "C1", "JAPMULTI"}, False),
    ("single-issuer", SR, "STUDY", {"IssuerOfPatientID": "HOSP"}, {"A1", "A2"}, False),
    ("single-refphys", SR, "STUDY", {"ReferringPhysicianName": "Ref^One"}, {"A1", "B1"}, False),
    # wildcards; SQL metacharacters literal
    ("wild-question", SR, "STUDY", {"PatientID": "P?"}, {"A1", "A2", "B1", "C1", "E1"}, False),
    ("wild-suffix", SR, "STUDY", {"PatientID": "*A"}, {"A1", "A2"}, False),
    ("wild-prefix", SR, "STUDY", {"PatientID": "SCS*"}, {"GERM", "FREN", "GREEK", "ARAB", "HBRW", "RUSS"}, False),
    ("wild-suffix-2", SR, "STUDY", {"PatientID": "*EXAMPLE"}, {"X1", "X2", "H31", "H32", "I2"}, False),
    ("wild-percent-literal", SR, "STUDY", {"AccessionNumber": "ACC%*"}, {"A1", "C1"}, False),
    ("wild-underscore-literal", SR, "STUDY", {"AccessionNumber": "ACC_*"}, {"A2"}, False),
    ("wild-question-any", SR, "STUDY", {"AccessionNumber": "ACC?1"}, {"A1", "B1"}, False),
    ("wild-acc", SR, "STUDY", {"AccessionNumber": "ACC*"}, {"A1", "A2", "B1", "C1"}, False),
    ("wild-trailing-percent", SR, "STUDY", {"StudyDescription": "*100%"}, {"A1"}, False),
    ("wild-bracket-literal", SR, "STUDY", {"StudyDescription": "*[1]"}, {"C1"}, False),
    ("wild-bracket-question", SR, "STUDY", {"StudyDescription": "Abdomen[?]"}, {"C1"}, False),
    ("wild-underscore-in-prefix", SR, "STUDY", {"StudyDescription": "CT_Head*"}, {"A1"}, False),
    ("wild-question-for-underscore", SR, "STUDY", {"StudyDescription": "CT?Head*"}, {"A1"}, False),
    ("wild-case-sensitive", SR, "STUDY", {"StudyDescription": "ct_head*"}, set(), False),
    ("wild-bang", SR, "STUDY", {"StudyDescription": "Chest!*"}, {"B1"}, False),
    ("wild-chest", SR, "STUDY", {"StudyDescription": "Chest*"}, {"B1", "JAPMULTI"}, False),
    ("wild-refphys", SR, "STUDY", {"ReferringPhysicianName": "Ref^T*"}, {"A2", "C1"}, False),
    ("pn-refphys-case", SR, "STUDY", {"ReferringPhysicianName": "ref^one"}, {"A1", "B1"}, False),
    ("pn-refphys-prefix", SR, "STUDY", {"ReferringPhysicianName": "REF^T*"}, {"A2", "C1"}, False),
    # list of UIDs
    ("uid-single", SR, "STUDY", {"StudyInstanceUID": uid("A2")}, {"A2"}, False),
    ("uid-list", SR, "STUDY", {"StudyInstanceUID": [uid("A1"), uid("B1"), "1.2.3.999"]}, {"A1", "B1"}, False),
    ("uid-no-match", SR, "STUDY", {"StudyInstanceUID": "1.2.3"}, set(), False),
    ("uid-wildcard-refused", SR, "STUDY", {"StudyInstanceUID": "1.2.*"}, 0xC000, False),
    # DA range matching
    ("date-single", SR, "STUDY", {"StudyDate": "20240105"}, {"A1", "E1"}, False),
    ("date-range", SR, "STUDY", {"StudyDate": "20240105-20240106"}, {"A1", "A2", "E1"}, False),
    ("date-open-lower", SR, "STUDY", {"StudyDate": "20240107-"}, {"B1"}, False),
    ("date-open-upper", SR, "STUDY", {"StudyDate": "-20231231"}, {"C1", "JAPMULTI"}, False),
    ("date-acr-nema", SR, "STUDY", {"StudyDate": "2024.01.07"}, {"B1"}, False),
    ("date-birth-range", SR, "STUDY", {"PatientBirthDate": "19700101-19851231"}, {"A1", "A2", "B1"}, False),
    ("date-birth-open", SR, "STUDY", {"PatientBirthDate": "-19600229"}, {"C1", "JAPMULTI"}, False),
    ("date-invalid-month", SR, "STUDY", {"StudyDate": "20241301"}, 0xC000, False),
    ("date-invalid-dashes", SR, "STUDY", {"StudyDate": "2024-01-05"}, 0xC000, False),
    ("date-invalid-short", SR, "STUDY", {"PatientBirthDate": "3124"}, 0xC000, False),
    # TM range matching
    ("time-range", SR, "STUDY", {"StudyTime": "1000-1200"}, {"B1", "E1"}, False),
    ("time-open-upper", SR, "STUDY", {"StudyTime": "-0930"}, {"A1"}, False),
    ("time-open-lower-frac", SR, "STUDY", {"StudyTime": "235959-"}, {"C1"}, False),
    ("time-single", SR, "STUDY", {"StudyTime": "171715"}, {"JAPMULTI"}, False),
    ("time-single-partial", SR, "STUDY", {"StudyTime": "17"}, set(), False),
    ("time-colons", SR, "STUDY", {"StudyTime": "09:30:00"}, {"A1"}, False),
    ("time-invalid-hour", SR, "STUDY", {"StudyTime": "2500"}, 0xC000, False),
    # date and time without combined matching negotiated (PS3.4 C.2.2.2.5.1): the time range within each
    # day (test_combined_date_time below for the negotiated case)
    ("datetime-each-day", SR, "STUDY", {"StudyDate": "20240105-20240107", "StudyTime": "1000-0930"}, set(), False),
    ("datetime-each-day-open", SR, "STUDY", {"StudyDate": "20240106-", "StudyTime": "1500-"}, {"A2"}, False),
    ("datetime-each-day-upper", SR, "STUDY", {"StudyDate": "-20240105", "StudyTime": "-1100"}, {"A1"}, False),
    # PN: case-insensitive on the normalised form, any component group
    ("pn-case", SR, "STUDY", {"PatientName": "doe^john"}, {"A1", "A2"}, False),
    ("pn-trailing-components", SR, "STUDY", {"PatientName": "Doe^John^^^"}, {"A1", "A2"}, False),
    ("pn-prefix", SR, "STUDY", {"PatientName": "DOE*"}, {"A1", "A2"}, False),
    ("pn-suffix", SR, "STUDY", {"PatientName": "*john"}, {"A1", "A2"}, False),
    ("pn-question", SR, "STUDY", {"PatientName": "D?E^J*"}, {"A1", "A2"}, False),
    ("pn-exact-not-prefix", SR, "STUDY", {"PatientName": "Doe"}, set(), False),
    ("pn-latin1-case", SR, "STUDY", {"PatientName": "müller^hans"}, {"C1"}, False),
    ("pn-latin1-prefix", SR, "STUDY", {"PatientName": "MÜLL*"}, {"C1"}, False),
    ("pn-lower-stored", SR, "STUDY", {"PatientName": "DE LA CRUZ^MARÍA"}, {"E1"}, False),
    ("pn-lower-stored-prefix", SR, "STUDY", {"PatientName": "de la*"}, {"E1"}, False),
    ("pn-german", SR, "STUDY", {"PatientName": "äneas^rüdiger"}, {"GERM"}, False),
    ("pn-french", SR, "STUDY", {"PatientName": "Buc^Jérôme"}, {"FREN"}, False),
    ("pn-greek-lower", SR, "STUDY", {"PatientName": "διονυσιος"}, {"GREEK"}, False),
    ("pn-arabic", SR, "STUDY", {"PatientName": "قباني^لنزار"}, {"ARAB"}, False),
    ("pn-hebrew", SR, "STUDY", {"PatientName": "שרון^דבורה"}, {"HBRW"}, False),
    ("pn-russian", SR, "STUDY", {"PatientName": "Люкceмбypг"}, {"RUSS"}, False),
    ("pn-alphabetic-group", SR, "STUDY", {"PatientName": "Yamada^Tarou"}, {"H31"}, False),
    ("pn-alphabetic-prefix", SR, "STUDY", {"PatientName": "yamada*"}, {"H31"}, False),
    ("pn-ideographic-group", SR, "STUDY", {"PatientName": "山田^太郎"}, {"H31", "H32"}, False),
    ("pn-ideographic-prefix", SR, "STUDY", {"PatientName": "山田*"}, {"H31", "H32"}, False),
    ("pn-phonetic-group", SR, "STUDY", {"PatientName": "やまだ^たろう"}, {"H31", "H32", "JAPMULTI"}, False),
    ("pn-halfwidth-katakana", SR, "STUDY", {"PatientName": "ﾔﾏﾀﾞ^ﾀﾛｳ"}, {"H32"}, False),
    ("pn-all-groups", SR, "STUDY", {"PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう"}, {"H31"}, False),
    ("pn-chinese-alphabetic", SR, "STUDY", {"PatientName": "Wang^XiaoDong"}, {"X1", "X2"}, False),
    ("pn-chinese-traditional", SR, "STUDY", {"PatientName": "王^小東"}, {"X1"}, False),
    ("pn-chinese-simplified", SR, "STUDY", {"PatientName": "王^小东"}, {"X2"}, False),
    ("pn-korean-hanja", SR, "STUDY", {"PatientName": "洪^吉洞"}, {"I2"}, False),
    ("pn-korean-hangul", SR, "STUDY", {"PatientName": "홍^길동"}, {"I2"}, False),
    ("pn-patient-level", PR, "PATIENT", {"PatientName": "*^J*"}, {"PA", "PB", "FREN"}, False),
    # ModalitiesInStudy: any series
    ("modalities-one", SR, "STUDY", {"ModalitiesInStudy": "SR"}, {"A1"}, False),
    ("modalities-list", SR, "STUDY", {"ModalitiesInStudy": ["CT", "MR"]}, {"A1", "A2", "C1"}, False),
    ("modalities-wildcard", SR, "STUDY", {"ModalitiesInStudy": "C*"}, {"A1", "B1", "C1", "JAPMULTI"}, False),
    ("modalities-ot", SR, "STUDY", {"ModalitiesInStudy": "OT"}, OT_STUDIES, False),
    # PATIENT level (Patient Root only)
    ("patient-id-prefix", PR, "PATIENT", {"PatientID": "P*"}, {"PA", "PB", "PC", "PE"}, False),
    ("patient-sex", PR, "PATIENT", {"PatientSex": "F"}, {"PB", "PE"}, False),
    ("patient-birth", PR, "PATIENT", {"PatientBirthDate": "19851231"}, {"PB"}, False),
    ("patient-birth-range", PR, "PATIENT", {"PatientBirthDate": "19600101-19751231"}, {"PA", "PC"}, False),
    ("patient-issuer", PR, "PATIENT", {"IssuerOfPatientID": "HOSP"}, {"PA"}, False),
    ("patient-pn-ideographic", PR, "PATIENT", {"PatientName": "山田*"}, {"H31", "H32"}, False),
    ("patient-level-not-in-study-root", SR, "PATIENT", {}, 0xA900, False),
    # Patient Root hierarchical: PatientID above STUDY
    ("pr-study", PR, "STUDY", {"PatientID": "PA"}, {"A1", "A2"}, False),
    ("pr-study-and-date", PR, "STUDY", {"PatientID": "PA", "StudyDate": "20240106"}, {"A2"}, False),
    ("pr-study-wildcard", PR, "STUDY", {"PatientID": "PA", "AccessionNumber": "ACC_*"}, {"A2"}, False),
    ("pr-study-time-range", PR, "STUDY", {"PatientID": "PA", "StudyTime": "-1000"}, {"A1"}, False),
    ("pr-study-uid-list", PR, "STUDY", {"PatientID": "PA", "StudyInstanceUID": [A1, uid("B1")]}, {"A1"}, False),
    ("pr-study-pn", PR, "STUDY", {"PatientID": "PA", "PatientName": "DOE^J*"}, {"A1", "A2"}, False),
    ("pr-study-needs-patientid", PR, "STUDY", {"StudyDate": "20240105"}, 0xA900, False),
    ("pr-study-patientid-wildcard", PR, "STUDY", {"PatientID": "P*"}, 0xA900, False),
    ("pr-study-relational", PR, "STUDY", {"StudyDate": "20240105"}, {"A1", "E1"}, True),
    ("pr-series", PR, "SERIES", {"PatientID": "PA", "StudyInstanceUID": A1}, {"A1.1", "A1.2"}, False),
    ("pr-series-modality-wildcard", PR, "SERIES", {"PatientID": "PA", "StudyInstanceUID": A1, "Modality": "S?"},
     {"A1.2"}, False),
    ("pr-series-needs-patientid", PR, "SERIES", {"StudyInstanceUID": A1}, 0xA900, False),
    ("pr-series-wrong-patient", PR, "SERIES", {"PatientID": "PB", "StudyInstanceUID": A1}, set(), False),
    ("pr-image", PR, "IMAGE", {"PatientID": "PA", "StudyInstanceUID": A1, "SeriesInstanceUID": uid("A1.2")}, {"A1.2.1"}, False),
    ("pr-image-needs-series", PR, "IMAGE", {"PatientID": "PA", "StudyInstanceUID": A1}, 0xA900, False),
    # SERIES level, Study Root
    ("series-of-study", SR, "SERIES", {"StudyInstanceUID": A1}, {"A1.1", "A1.2"}, False),
    ("series-modality", SR, "SERIES", {"StudyInstanceUID": A1, "Modality": "CT"}, {"A1.1"}, False),
    ("series-number", SR, "SERIES", {"StudyInstanceUID": A1, "SeriesNumber": "2"}, {"A1.2"}, False),
    ("series-description", SR, "SERIES", {"StudyInstanceUID": A1, "SeriesDescription": "ax*"}, {"A1.1"}, False),
    ("series-body-part", SR, "SERIES", {"StudyInstanceUID": A1, "BodyPartExamined": "HEAD"}, {"A1.1"}, False),
    ("series-uid", SR, "SERIES", {"StudyInstanceUID": A1, "SeriesInstanceUID": uid("A1.2")}, {"A1.2"}, False),
    ("series-uid-list", SR, "SERIES", {"StudyInstanceUID": A1, "SeriesInstanceUID": [uid("A1.1"), uid("A1.2")]}, {"A1.1", "A1.2"}, False),
    ("series-higher-key-matches", SR, "SERIES", {"StudyInstanceUID": A1, "StudyDate": "20240105"}, {"A1.1", "A1.2"}, False),
    ("series-higher-key-excludes", SR, "SERIES", {"StudyInstanceUID": A1, "StudyDate": "20240106"}, set(), False),
    ("series-universal-star", SR, "SERIES", {"StudyInstanceUID": A1, "SeriesDescription": "*"}, {"A1.1", "A1.2"}, False),
    ("series-needs-study", SR, "SERIES", {"Modality": "CT"}, 0xA900, False),
    ("series-study-list-refused", SR, "SERIES", {"StudyInstanceUID": [A1, uid("A2")]}, 0xA900, False),
    ("series-number-invalid", SR, "SERIES", {"StudyInstanceUID": A1, "SeriesNumber": b"abc "}, 0xC000, False),
    ("series-relational-modality", SR, "SERIES", {"Modality": "CT"}, {"A1.1", "C1.1"}, True),
    ("series-relational-ot", SR, "SERIES", {"Modality": "OT"}, {n + ".1" for n in OT_STUDIES}, True),
    ("series-relational-patient", SR, "SERIES", {"PatientName": "doe*"}, {"A1.1", "A1.2", "A2.1"}, True),
    # IMAGE level, Study Root
    ("image-of-series", SR, "IMAGE", {"StudyInstanceUID": A1, "SeriesInstanceUID": uid("A1.1")}, {"A1.1.1", "A1.1.2"}, False),
    ("image-number", SR, "IMAGE", {"StudyInstanceUID": A1, "SeriesInstanceUID": uid("A1.1"), "InstanceNumber": "2"}, {"A1.1.2"}, False),
    # DT range matching (AcquisitionDateTime; partial = earliest instant, UTC offsets ignored)
    ("dt-universal", SR, "IMAGE", {**_A11, "AcquisitionDateTime": ""}, {"A1.1.1", "A1.1.2"}, False),
    ("dt-single", SR, "IMAGE", {**_A11, "AcquisitionDateTime": "20240105103000.5"}, {"A1.1.1"}, False),
    ("dt-single-partial", SR, "IMAGE", {**_A11, "AcquisitionDateTime": "20240105110000"}, {"A1.1.2"}, False),
    ("dt-single-offset-ignored", SR, "IMAGE", {**_A11, "AcquisitionDateTime": "20240105103000.500-0500"}, {"A1.1.1"}, False),
    ("dt-range", SR, "IMAGE", {**_A11, "AcquisitionDateTime": "20240105100000-20240105105959"}, {"A1.1.1"}, False),
    ("dt-range-offsets", SR, "IMAGE", {**_A11, "AcquisitionDateTime": "2024010510+0100-2024010512-0500"}, {"A1.1.1", "A1.1.2"}, False),
    ("dt-open-lower", SR, "IMAGE", {**_A11, "AcquisitionDateTime": "2024010511-"}, {"A1.1.2"}, False),
    ("dt-open-lower-year", SR, "IMAGE", {**_A11, "AcquisitionDateTime": "2025-"}, set(), False),
    ("dt-open-upper", SR, "IMAGE", {**_A11, "AcquisitionDateTime": "-20240105103000.5"}, {"A1.1.1"}, False),
    ("dt-open-upper-partial", SR, "IMAGE", {**_A11, "AcquisitionDateTime": "-2024010510"}, set(), False),
    ("dt-invalid-month", SR, "IMAGE", {**_A11, "AcquisitionDateTime": "20241305"}, 0xC000, False),
    ("dt-invalid-dashes", SR, "IMAGE", {**_A11, "AcquisitionDateTime": "2024-01-05"}, 0xC000, False),
    ("dt-invalid-fraction", SR, "IMAGE", {**_A11, "AcquisitionDateTime": "20240105.5-"}, 0xC000, False),
    # sequence matching (Request Attributes Sequence, SERIES level): one item must match every key
    ("seq-universal", SR, "SERIES", {"StudyInstanceUID": A1, "RequestAttributesSequence": []}, {"A1.1", "A1.2"}, False),
    ("seq-empty-item", SR, "SERIES", {"StudyInstanceUID": A1, "RequestAttributesSequence": [_item()]}, {"A1.1", "A1.2"}, False),
    ("seq-single", SR, "SERIES", {"StudyInstanceUID": A1, "RequestAttributesSequence": [_item(RequestedProcedureID="RP2")]}, {"A1.1"}, False),
    ("seq-same-item", SR, "SERIES", {"StudyInstanceUID": A1, "RequestAttributesSequence": [_item(AccessionNumber="ACC%1", RequestedProcedureID="RP1")]}, {"A1.1"}, False),
    ("seq-not-across-items", SR, "SERIES", {"StudyInstanceUID": A1, "RequestAttributesSequence": [_item(AccessionNumber="ACC%1", RequestedProcedureID="RP2")]}, set(), False),
    ("seq-universal-key", SR, "SERIES", {"StudyInstanceUID": A1, "RequestAttributesSequence": [_item(AccessionNumber="*", RequestedProcedureID="RP1")]}, {"A1.1"}, False),
    ("seq-wildcard-relational", SR, "SERIES", {"RequestAttributesSequence": [_item(ScheduledProcedureStepID="SPS*")]}, {"A1.1", "A2.1", "B1.1"}, True),
    ("seq-underscore-literal", SR, "SERIES", {"RequestAttributesSequence": [_item(AccessionNumber="ACC_*")]}, {"A2.1"}, True),
    ("seq-no-match", SR, "SERIES", {"StudyInstanceUID": A1, "RequestAttributesSequence": [_item(ScheduledProcedureStepID="SPS4")]}, set(), False),
    ("seq-two-items-refused", SR, "SERIES", {"StudyInstanceUID": A1, "RequestAttributesSequence": [_item(), _item()]}, 0xC000, False),
    ("image-sop-class", SR, "IMAGE", {"StudyInstanceUID": A1, "SeriesInstanceUID": uid("A1.1"), "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, {"A1.1.1", "A1.1.2"}, False),
    ("image-sop-class-other", SR, "IMAGE", {"StudyInstanceUID": A1, "SeriesInstanceUID": uid("A1.1"), "SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.11"}, set(), False),
    ("image-uid-list", SR, "IMAGE", {"StudyInstanceUID": A1, "SeriesInstanceUID": uid("A1.1"), "SOPInstanceUID": [uid("A1.1.2"), uid("A1.2.1")]}, {"A1.1.2"}, False),
    ("image-wrong-study", SR, "IMAGE", {"StudyInstanceUID": uid("A2"), "SeriesInstanceUID": uid("A1.1")}, set(), False),
    ("image-needs-series", SR, "IMAGE", {"StudyInstanceUID": A1}, 0xA900, False),
    ("image-relational-class", SR, "IMAGE", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1"}, {"B1.1.1", "JAPMULTI.1.1"}, True),
    ("image-relational-number", SR, "IMAGE", {"InstanceNumber": "2"}, {"A1.1.2"}, True),
    ("pr-image-relational", PR, "IMAGE", {"PatientID": "PA", "InstanceNumber": "1"}, {"A1.1.1", "A1.2.1", "A2.1.1"}, True),
    ("pr-image-uid-list", PR, "IMAGE", {"PatientID": "PA", "StudyInstanceUID": A1, "SeriesInstanceUID": uid("A1.1"),
                                        "SOPInstanceUID": [uid("A1.1.1"), uid("B1.1.1")]}, {"A1.1.1"}, False),
    # the identifier's structure
    ("level-unknown", SR, "FOO", {}, 0xA900, False),
]


@pytest.mark.parametrize(("model", "level", "keys", "expected", "relational"),
                         [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_matching_table(loaded: DataStore, corpus: Corpus, model: str, level: str, keys: dict[str, Any],
                        expected: set[str] | int, relational: bool) -> None:
    query_level = "STUDY" if level == "FOO" else level
    ds = identifier(query_level, keys)
    if level == "FOO":
        ds.QueryRetrieveLevel = "FOO"
    if isinstance(expected, int):
        with pytest.raises(InvalidQuery) as err:
            run(loaded, model, query_level, ds, relational=relational)
        assert err.value.status == expected, err.value.comment
        return
    assert names(corpus, query_level, run(loaded, model, query_level, ds, relational=relational)) == expected


@pytest.mark.parametrize(("keys", "expected"), [
    # one date-time range (PS3.4 C.2.2.2.5.1), only when combined matching was negotiated
    ({"StudyDate": "20240105-20240107", "StudyTime": "1000-0930"}, {"E1", "A2"}),
    ({"StudyDate": "20240106-", "StudyTime": "1500-"}, {"A2", "B1"}),
    ({"StudyDate": "-20240105", "StudyTime": "-1100"}, {"A1", "C1", "JAPMULTI"}),
], ids=["range", "open", "upper"])
def test_combined_date_time(loaded: DataStore, corpus: Corpus, keys: dict[str, str], expected: set[str]) -> None:
    answers = run(loaded, SR, "STUDY", keys, combined_datetime=True)
    assert names(corpus, "STUDY", answers) == expected


def test_missing_level_is_refused(loaded: DataStore) -> None:
    ds = identifier("STUDY", {})
    del ds.QueryRetrieveLevel
    with pytest.raises(InvalidQuery) as err:
        run(loaded, STUDY_ROOT, "STUDY", ds)
    assert err.value.status == 0xA900 and err.value.tag == 0x00080052


def test_a_sequence_key_sent_with_another_vr_is_refused(loaded: DataStore) -> None:
    """Explicit VR lets a peer send Request Attributes Sequence as SS (a fuzzer found it): a clear
    refusal naming the key, not a crash of the translator."""
    ds = identifier("SERIES", {"StudyInstanceUID": "1.2.3"})
    ds.add_new(0x00400275, "SS", 17)
    with pytest.raises(InvalidQuery) as err:
        run(loaded, STUDY_ROOT, "SERIES", ds)
    assert err.value.status == 0xC000 and err.value.tag == 0x00400275, err.value.comment
    assert "VR SS" in err.value.comment


# Query values arrive encoded in the identifier's Specific Character Set: (charset, name, expected)
ENCODED = [
    ("ISO_IR 100", "äneas^rüdiger", {"GERM"}),
    ("ISO_IR 100", "müller*", {"C1"}),
    ("ISO_IR 126", "Διονυσιος", {"GREEK"}),
    ("ISO_IR 127", "قباني^لنزار", {"ARAB"}),
    ("ISO_IR 138", "שרון^דבורה", {"HBRW"}),
    ("ISO_IR 144", "Люкceмбypг", {"RUSS"}),
    ("ISO_IR 192", "王^小東", {"X1"}),
    ("GB18030", "王^小东", {"X2"}),
    (["", "ISO 2022 IR 87"], "山田^太郎", {"H31", "H32"}),
    (["", "ISO 2022 IR 87"], "やまだ*", {"H31", "H32", "JAPMULTI"}),
    (["", "ISO 2022 IR 149"], "홍^길동", {"I2"}),
]


@pytest.mark.parametrize(("charset", "name", "expected"), ENCODED, ids=[f"{c}-{n}" for c, n, _ in ENCODED])
def test_query_values_decoded_with_their_character_set(loaded: DataStore, corpus: Corpus, charset: Any,
                                                       name: str, expected: set[str]) -> None:
    ds = encoded(identifier("STUDY", {"PatientName": name}, charset=charset))
    raw = ds.get_item(0x00100010).value
    assert isinstance(raw, bytes) and raw != name.encode("utf-8") or charset == "ISO_IR 192"
    assert names(corpus, "STUDY", run(loaded, STUDY_ROOT, "STUDY", ds)) == expected
