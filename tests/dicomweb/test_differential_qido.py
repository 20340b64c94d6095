"""Differential QIDO-RS: the same instances in pacskit and in Orthanc + its DICOMweb plugin, the same
searches against both, equal answers (the matched UIDs, and the values of the attributes both return).

Every intentional difference is listed in DIFFERENCES with its reason, and tested (the answers differ
exactly there); docs/addins/dicomweb.md lists them for users."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pacskit.testing.dicomweb import have_orthanc_dicomweb, keep_copies, orthanc_dicomweb, start_server, write_folder
from pacskit.testing.synth import make_series

pytestmark = pytest.mark.skipif(not have_orthanc_dicomweb(), reason="Orthanc + orthanc-dicomweb not installed")

R = "1.2.826.0.1.3680043.8.498.9"
#: (patient id, name, birth date, sex, study uid, date, time, accession, description, referring, series)
#: series: (uid, modality, number, description, body part, instances)
STUDIES = [
    ("P1", "Doe^John", "19600101", "M", f"{R}.1", "20240105", "101500", "ACC100", "CT Head", "Smith^Ann",
     [(f"{R}.1.1", "CT", 1, "Axial", "HEAD", 3), (f"{R}.1.2", "SR", 99, "Report", "", 1)]),
    ("P1", "Doe^John", "19600101", "M", f"{R}.2", "20240320", "083000", "ACC101", "MR Knee", "Jones^Bob",
     [(f"{R}.2.1", "MR", 1, "T1 sag", "KNEE", 2), (f"{R}.2.2", "MR", 2, "T2 cor", "KNEE", 2)]),
    ("P2", "Doe^Jane", "19851224", "F", f"{R}.3", "20231111", "235900", "ACC200", "CT Chest", "Smith^Ann",
     [(f"{R}.3.1", "CT", 3, "Lung", "CHEST", 4)]),
    ("P3", "Müller^Jörg", "19451231", "M", f"{R}.4", "20220601", "120000", "X-9", "US Abdomen", "",
     [(f"{R}.4.1", "US", 1, "Liver", "ABDOMEN", 1), (f"{R}.4.2", "CT", 2, "abdo", "ABDOMEN", 2)]),
    ("P4", "O'Brien^Pat", "20000229", "O", f"{R}.5", "20240105", "180000", "ACC300", "ct head", "Smith^Ann",
     [(f"{R}.5.1", "CT", 1, "Axial", "HEAD", 1)]),
]

#: (resource, query): the searches compared
SEARCHES: list[tuple[str, dict[str, str]]] = [
    ("studies", {}),
    ("studies", {"PatientID": "P1"}),
    ("studies", {"PatientID": "P*"}),
    ("studies", {"PatientName": "Doe^John"}),
    ("studies", {"PatientName": "Doe*"}),
    ("studies", {"PatientName": "doe*"}),
    ("studies", {"PatientName": "*Jane"}),
    ("studies", {"PatientName": "D?e^J*"}),
    ("studies", {"StudyDate": "20240105"}),
    ("studies", {"StudyDate": "20240101-20240331"}),
    ("studies", {"StudyDate": "-20231231"}),
    ("studies", {"StudyDate": "20231111-"}),
    ("studies", {"AccessionNumber": "ACC1*"}),
    ("studies", {"AccessionNumber": "X-9"}),
    ("studies", {"StudyInstanceUID": f"{R}.1"}),
    ("studies", {"StudyInstanceUID": f"{R}.1,{R}.3"}),
    ("studies", {"ModalitiesInStudy": "MR"}),
    ("studies", {"ModalitiesInStudy": "CT"}),
    ("studies", {"PatientBirthDate": "19000101-19700101"}),
    ("studies", {"PatientSex": "F"}),
    ("studies", {"ReferringPhysicianName": "Smith*"}),
    ("studies", {"StudyID": "*"}),
    ("studies", {"PatientID": "P1", "StudyDate": "20240301-"}),
    ("studies", {"limit": "2", "offset": "1", "PatientID": "P1"}),
    ("series", {"Modality": "CT"}),
    ("series", {"Modality": "MR", "PatientID": "P1"}),
    ("series", {"SeriesNumber": "1"}),
    ("series", {"SeriesInstanceUID": f"{R}.2.1"}),
    ("series", {"BodyPartExamined": "KNEE"}),
    ("series", {"SeriesDescription": "T*"}),
    (f"studies/{R}.1/series", {}),
    (f"studies/{R}.4/series", {"Modality": "US"}),
    ("instances", {"InstanceNumber": "2"}),
    ("instances", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}),
    (f"studies/{R}.3/instances", {}),
    (f"studies/{R}.2/series/{R}.2.2/instances", {}),
    ("instances", {"PatientName": "Doe^Jane"}),
    ("studies", {"StudyDescription": "CT*"}),
    ("studies", {"StudyDescription": "ct*"}),
    ("studies", {"AccessionNumber": "acc100"}),
    ("studies", {"StudyTime": "100000-190000"}),
    ("studies", {"StudyDate": "20240105", "StudyTime": "-120000"}),
    ("studies", {"PatientName": "Müller*"}),
    ("series", {"SeriesInstanceUID": f"{R}.1.1,{R}.3.1"}),
    ("series", {"Modality": "C?"}),
    ("studies", {"fuzzymatching": "true", "PatientName": "doe"}),
]

#: intentional differences: (resource, query) -> why (the test checks the answers do differ)
_CASE = ("PS3.4 C.2.2.2.4: single value and wildcard matching are case-sensitive (but for PN); pacskit "
         "matches as its C-FIND does, Orthanc ignores case for every text attribute")
DIFFERENCES: dict[tuple[str, str], str] = {
    ("studies", repr([("StudyDescription", "CT*")])): _CASE,  # Orthanc also finds "ct head"
    ("studies", repr([("StudyDescription", "ct*")])): _CASE,  # pacskit finds only "ct head"
    ("studies", repr([("AccessionNumber", "acc100")])): _CASE,  # pacskit finds nothing
    # a non-ASCII value travels percent-encoded (RFC 3986); Orthanc 1.10 does not decode query values
    # (it does not find Doe%5EJohn either), so it finds nothing; pacskit decodes and finds Müller^Jörg
    ("studies", repr([("PatientName", "Müller*")])): "Orthanc 1.10 does not percent-decode query values",
}


def _uid_key(resource: str) -> str:
    return {"studies": "0020000D", "series": "0020000E", "instances": "00080018"}[resource.rsplit("/", 1)[-1]]


def _load(folder: Path) -> list[Path]:
    files = []
    for pid, name, birth, sex, study, date, time, acc, desc, ref, series in STUDIES:
        for uid, modality, number, sdesc, part, count in series:
            sop_class = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
                         "US": "1.2.840.10008.5.1.4.1.1.6.1", "SR": "1.2.840.10008.5.1.4.1.1.7"}[modality]
            attrs: dict[str, Any] = {"PatientBirthDate": birth, "PatientSex": sex, "StudyDate": date,
                                     "StudyTime": time, "AccessionNumber": acc, "StudyDescription": desc,
                                     "ReferringPhysicianName": ref, "SeriesDescription": sdesc, "SOPClassUID": sop_class,
                                     "SpecificCharacterSet": "ISO_IR 192", "StudyID": "S" + study[-1]}
            if part:
                attrs["BodyPartExamined"] = part
            files += make_series(folder / uid, count, 8, 8, study_uid=study, series_uid=uid, patient_id=pid,
                                 patient_name=name, modality=modality, series_number=number, attrs=attrs)
    return files


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("diff")
    files = _load(tmp / "data")
    with start_server(write_folder(tmp)) as pacs, orthanc_dicomweb(tmp / "orthanc") as orthanc:
        pacs.ingest(keep_copies(tmp, files))
        for f in files:
            orthanc.post("/instances", f.read_bytes())
        yield pacs.url, f"{orthanc.url}/dicom-web"


def _answer(base: str, resource: str, query: dict[str, str]) -> list[dict[str, Any]]:
    # the query string as written (Orthanc 1.10 matches percent-encoded "^" and "*" literally)
    text = "&".join(f"{k}={v}" for k, v in query.items())
    r = httpx.get(f"{base}/{resource}" + (f"?{text}" if text else ""), headers={"Accept": "application/dicom+json"},
                  timeout=60)  # httpx waits 5 s by default: not enough on a loaded CI machine
    assert r.status_code in (200, 204), (base, resource, query, r.status_code, r.text)
    return r.json() if r.content.strip() else []


def _comparable(item: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    out = {}
    for k in sorted(keys):
        v = item.get(k, {}).get("Value")
        if isinstance(v, list) and v and isinstance(v[0], dict) and "Alphabetic" in v[0]:
            v = [x.get("Alphabetic") for x in v]
        if isinstance(v, list):
            v = sorted(str(x) for x in v) if k == "00080061" else [str(x) for x in v]
        out[k] = v
    return out


@pytest.mark.parametrize("resource,query", SEARCHES, ids=[f"{r}?{'&'.join(f'{k}={v}' for k, v in q.items())}" for r, q in SEARCHES])
def test_same_answers_as_orthanc(peers: tuple[str, str], resource: str, query: dict[str, str]) -> None:
    ours_url, theirs_url = peers
    ours = _answer(ours_url, resource, query)
    theirs = _answer(theirs_url, resource, query)
    key = _uid_key(resource)
    ours_uids = sorted(i[key]["Value"][0] for i in ours)
    theirs_uids = sorted(i[key]["Value"][0] for i in theirs)
    difference = DIFFERENCES.get((resource, repr(sorted(query.items()))))
    if difference:
        assert ours_uids != theirs_uids, f"documented difference no longer seen: {difference}"
        return
    if "limit" in query:
        assert len(ours_uids) == len(theirs_uids)
        return
    assert ours_uids == theirs_uids
    # the attributes both answer (non-empty on both sides) have the same values
    by_uid = {i[key]["Value"][0]: i for i in theirs}
    for item in ours:
        other = by_uid[item[key]["Value"][0]]
        common = {k for k in item if k in other and item[k].get("Value") and other[k].get("Value")} - {"00081190"}
        assert _comparable(item, common) == _comparable(other, common)
