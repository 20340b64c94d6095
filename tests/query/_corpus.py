"""The query test corpus: a few patients whose attributes exercise every matching rule, plus pydicom's
character-set files (real files in ISO_IR 100/126/127/138/144/192, GB18030 and ISO 2022 IR 87/149).

Entities have short names (``A1`` a study, ``A1.1`` a series, ``A1.1.2`` an instance); tests state the
expected matches as sets of names and compare them with what came back.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.data import get_charset_files

from pacskit.store import DataStore
from pacskit.testing.synth import make_instance

ROOT = "1.2.826.0.1.3680043.9.7777"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
CR = "1.2.840.10008.5.1.4.1.1.1"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
US = "1.2.840.10008.5.1.4.1.1.6.1"

PATIENTS = {
    "PA": {"PatientName": "Doe^John", "IssuerOfPatientID": "HOSP", "PatientBirthDate": "19700101", "PatientSex": "M"},
    "PB": {"PatientName": "Smith^Jane", "PatientBirthDate": "19851231", "PatientSex": "F"},
    "PC": {"PatientName": "Müller^Hans", "PatientBirthDate": "19600229", "PatientSex": "M"},
    "PE": {"PatientName": "de la Cruz^María", "PatientBirthDate": "20000101", "PatientSex": "F"},
}
# study name -> (patient, attributes)
STUDIES = {
    "A1": ("PA", {"StudyDate": "20240105", "StudyTime": "093000", "AccessionNumber": "ACC%1", "StudyID": "1",
                  "StudyDescription": "CT_Head 100%", "ReferringPhysicianName": "Ref^One"}),
    "A2": ("PA", {"StudyDate": "20240106", "StudyTime": "180000", "AccessionNumber": "ACC_2", "StudyID": "2",
                  "StudyDescription": "MR brain", "ReferringPhysicianName": "Ref^Two"}),
    "B1": ("PB", {"StudyDate": "20240107", "StudyTime": "1000", "AccessionNumber": "ACCX1", "StudyID": "1",
                  "StudyDescription": "Chest!", "ReferringPhysicianName": "Ref^One"}),
    "C1": ("PC", {"StudyDate": "20231231", "StudyTime": "235959.5", "AccessionNumber": "ACC%X", "StudyID": "7",
                  "StudyDescription": "Abdomen[1]", "ReferringPhysicianName": "Ref^Three"}),
    "E1": ("PE", {"StudyDate": "20240105", "StudyTime": "120000", "AccessionNumber": "", "StudyID": "",
                  "StudyDescription": "", "ReferringPhysicianName": ""}),
}
# series name -> (modality, sop class, series number, description, body part, number of instances)
SERIES = {
    "A1.1": ("CT", CT, 1, "axial", "HEAD", 2),
    "A1.2": ("SR", SR, 2, "report", "", 1),
    "A2.1": ("MR", MR, 1, "t1 sag", "BRAIN", 1),
    "B1.1": ("CR", CR, 3, "pa", "CHEST", 1),
    "C1.1": ("CT", CT, 1, "coronal", "ABDOMEN", 1),
    "E1.1": ("US", US, 1, "", "", 1),
}
#: pydicom's character-set files in the corpus (each is its own patient and study); name -> file
CHARSET_FILES = {
    "GERM": "chrGerm.dcm",  # ISO_IR 100
    "FREN": "chrFren.dcm",  # ISO_IR 100
    "GREEK": "chrGreek.dcm",  # ISO_IR 126
    "ARAB": "chrArab.dcm",  # ISO_IR 127
    "HBRW": "chrHbrw.dcm",  # ISO_IR 138
    "RUSS": "chrRuss.dcm",  # ISO_IR 144
    "X1": "chrX1.dcm",  # ISO_IR 192
    "X2": "chrX2.dcm",  # GB18030
    "H31": "chrH31.dcm",  # ISO 2022 IR 87
    "H32": "chrH32.dcm",  # ISO 2022 IR 13 + IR 87
    "I2": "chrI2.dcm",  # ISO 2022 IR 149
    "JAPMULTI": "chrJapMulti.dcm",  # ISO 2022 IR 87
}


def uid(name: str) -> str:
    """The UID of a corpus entity (its name with letters mapped to digits)."""
    return ROOT + "." + ".".join(str(ord(part[0]) - 64) + part[1:] if part[0].isalpha() else part
                                 for part in name.split("."))


@dataclass
class Corpus:
    files: list[Path] = field(default_factory=list)
    #: level -> UID (PatientID at PATIENT level) -> short name. Per level: pydicom's character-set
    #: files use one UID for their study, series and instance.
    names: dict[str, dict[str, str]] = field(
        default_factory=lambda: {"PATIENT": {}, "STUDY": {}, "SERIES": {}, "IMAGE": {}}
    )

    def name(self, level: str, uid: str) -> str:
        return self.names[level].get(uid, uid)

    def load(self, store: DataStore) -> None:
        for path in self.files:
            dest = os.path.join(store.temp_dir, f"corpus-{os.getpid()}-{path.name}")
            shutil.copyfile(path, dest)
            store.ingest(dest, source_ae="CORPUS")


def charset_file(name: str) -> str:
    found = get_charset_files(name)
    if not found:
        raise FileNotFoundError(name)
    return str(found[0])


#: instance -> AcquisitionDateTime (DT matching at IMAGE level: an offset, a partial value)
ACQUISITION_DATETIMES = {"A1.1.1": "20240105103000.5+0100", "A1.1.2": "2024010511"}


#: series -> Request Attributes Sequence items as (AccessionNumber, RequestedProcedureID,
#: ScheduledProcedureStepID); None leaves the attribute out of the item (sequence matching)
REQUESTS = {
    "A1.1": [("ACC%1", "RP1", "SPS1"), ("ACC9", "RP2", None)],
    "A2.1": [("ACC_2", "RP3", "SPS3")],
    "B1.1": [(None, None, "SPS4")],
}


def request_sequence(items: list[tuple[str | None, str | None, str | None]]) -> Sequence:
    out = Sequence()
    for accession, requested, step in items:
        item = Dataset()
        for keyword, value in (("AccessionNumber", accession), ("RequestedProcedureID", requested),
                               ("ScheduledProcedureStepID", step)):
            if value is not None:
                setattr(item, keyword, value)
        out.append(item)
    return out


def build(folder: Path) -> Corpus:
    corpus = Corpus()
    folder.mkdir(parents=True, exist_ok=True)
    for study, (patient, attrs) in STUDIES.items():
        corpus.names["STUDY"][uid(study)] = study
        corpus.names["PATIENT"][patient] = patient
        for series, (modality, sop_class, number, desc, body, count) in SERIES.items():
            if not series.startswith(study + "."):
                continue
            corpus.names["SERIES"][uid(series)] = series
            for i in range(1, count + 1):
                inst = f"{series}.{i}"
                corpus.names["IMAGE"][uid(inst)] = inst
                extra = {k: v for k, v in {**PATIENTS[patient], **attrs}.items() if k != "PatientName"}
                extra.update(SeriesNumber=number, SeriesDescription=desc, BodyPartExamined=body)
                if inst in ACQUISITION_DATETIMES:
                    extra["AcquisitionDateTime"] = ACQUISITION_DATETIMES[inst]
                if series in REQUESTS:
                    extra["RequestAttributesSequence"] = request_sequence(REQUESTS[series])
                path = make_instance(
                    folder / f"{inst}.dcm", rows=2, cols=2, patient_id=patient,
                    patient_name=PATIENTS[patient]["PatientName"], study_uid=uid(study), series_uid=uid(series),
                    sop_uid=uid(inst), modality=modality, sop_class_uid=sop_class, instance_number=i,
                    attrs=extra,  # '' leaves the attribute empty (not indexed: NULL)
                )
                corpus.files.append(path)
    for name, filename in CHARSET_FILES.items():
        src = charset_file(filename)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(src, stop_before_pixels=True)
        corpus.names["STUDY"][str(ds.StudyInstanceUID)] = name
        corpus.names["SERIES"][str(ds.SeriesInstanceUID)] = name + ".1"
        corpus.names["IMAGE"][str(ds.SOPInstanceUID)] = name + ".1.1"
        corpus.names["PATIENT"][str(ds.PatientID)] = name
        dest = folder / f"{name}.dcm"
        shutil.copyfile(src, dest)
        corpus.files.append(dest)
    return corpus


ALL_STUDIES = set(STUDIES) | set(CHARSET_FILES)
