"""The lean lane's first instance of a new series (``Index._create_on_cursor``, issue 17), against the
general path it replaces: the same instances indexed by both into two fresh SQLite indexes must leave
the same rows in every table, the same warnings, and the lean lane must really have taken them."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, select

from pacskit.store import DataStore, FilesystemBlobStore, IngestStatus
from pacskit.store.index.database import Index
from pacskit.store.index.extract import InstanceAttributes, InvalidInstance
from pacskit.store.index.models import Study

from ._util import make_instance, new_uid

_ROOT = "1.2.826.0.1.3680043.8.498.17"
_CR = "1.2.840.10008.5.1.4.1.1.1"


def _uid(*parts: int) -> str:
    return ".".join([_ROOT, *map(str, parts)])


def _varied() -> list[InstanceAttributes]:
    """Instances in the order a sender might send them: new patients, new studies under a known
    patient, new series under a known study (and a known series, the older lean lane), odd issuers,
    ideographic names, absent attributes, a study named for another patient, many modalities."""
    when = "20240105103000.5+0100"
    out: list[InstanceAttributes] = []
    n = iter(range(1, 10_000))

    def add(study: int, series: int, **kw: Any) -> None:
        out.append(InstanceAttributes(sop_instance_uid=_uid(3, next(n)), sop_class_uid=_CR,
                                      study_instance_uid=_uid(1, study), series_instance_uid=_uid(2, series),
                                      **kw))

    full = dict(patient_id="P1", issuer_of_patient_id="HOSP", patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう",
                patient_birth_date="19700101", patient_sex="M", study_date="20240105", study_time="103000.5",
                accession_number="ACC1", study_id="S1", referring_physician_name="Doe^John^^^",
                study_description="Chest", series_number=1, modality="CR", series_description="PA",
                body_part_examined="CHEST", instance_number=1, acquisition_datetime=when,
                transfer_syntax_uid="1.2.840.10008.1.2.1", specific_character_set="ISO_IR 192",
                source_ae="MOD", request_attributes=(("ACC1", "RP1", "SPS1"), (None, "RP2", None)))
    add(1, 1, **full)                                                       # new patient, study, series
    add(1, 1, **full)                                                       # known series
    add(1, 2, **{**full, "modality": "DX", "series_number": 2, "request_attributes": ()})  # known study
    add(1, 3, **{**full, "modality": "CR"})                                 # a modality the study has
    add(1, 4, **{**full, "modality": None, "body_part_examined": None})     # no modality
    add(2, 5, **{**full, "patient_name": "Other^Name", "study_description": None})  # known patient, as it is
    add(3, 6, **{**full, "issuer_of_patient_id": None})                     # P1 without issuer: another patient
    add(4, 7, **{**full, "issuer_of_patient_id": ""})                       # ... the same one as no issuer
    add(5, 8, **{**full, "issuer_of_patient_id": "hosp"})                   # issuers are case-sensitive
    add(6, 9, **{**full, "issuer_of_patient_id": "ISS^X\\Y é"})
    add(7, 10)                                                              # nothing optional at all
    add(8, 11)                                                              # no PatientID: a patient of its own
    add(9, 12, patient_id="P2", patient_name=" 김^민수 = キム^ミンス ^^ ")        # name with spaces and groups
    add(9, 13, patient_id="P9", patient_name="Someone^Else")                # the study is P2's: a warning
    add(9, 14)                                                              # no PatientID in a known study
    for i in range(40):                                                     # ModalitiesInStudy overflows
        add(10, 100 + i, patient_id="P3", modality=f"M{i:02d}XXXXX")
    add(11, 200, patient_id="P3", modality="MG", request_attributes=((None, None, None),))
    add(11, 201, patient_id="P3", modality="MG", series_number=-3, instance_number=2**31 - 1)
    return out


@pytest.fixture
def two_indexes(tmp_path: Path) -> Iterator[tuple[Index, Index]]:
    indexes = [Index.open(f"sqlite:///{tmp_path}/{name}.db", sqlite_synchronous="NORMAL")
               for name in ("lean", "general")]
    try:
        for index in indexes:
            index.migrate()
            assert not index.durable_commits  # the lean lane's condition (synchronous=NORMAL)
        yield indexes[0], indexes[1]
    finally:
        for index in indexes:
            index.close()


def _record(index: Index, a: InstanceAttributes, key: str, when: dt.datetime) -> Any:
    return index.run_write_shared(lambda s: index.record_instance(
        s, a, blob_key=key, size=len(key), sha256=key.ljust(64, "0")[:64], received_at=when,
        source_ae=a.source_ae, policy="keep-first"))


def _through_general_path(general: Index, instances: list[InstanceAttributes], when: dt.datetime,
                          caplog: pytest.LogCaptureFixture) -> list[str]:
    """Record ``instances`` in ``general`` through the ORM alone (blob keys ``blobNNNN``, as the lean
    side's); returns the warnings logged meanwhile (``caplog`` is cleared first)."""
    caplog.clear()
    for i, a in enumerate(instances):
        general._forget()  # every instance through the ORM, as the general path alone would
        assert _record(general, a, f"blob{i:04d}", when).status == IngestStatus.STORED
    return [r.getMessage() for r in caplog.records]


def _rows(index: Index) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, row ids replaced by the natural key of what they point to."""
    meta = MetaData()
    meta.reflect(index.engine)
    names = {"patients": ("patient_id", "issuer_of_patient_id", "patient_name"), "studies": ("study_instance_uid",),
             "series": ("series_instance_uid",), "instances": ("sop_instance_uid",)}
    out: dict[str, list[tuple[Any, ...]]] = {}
    with index.engine.connect() as conn:
        keys = {table: {r[0]: tuple(r[1:]) for r in conn.execute(
            select(meta.tables[table].c.pk, *(meta.tables[table].c[c] for c in cols)))}
            for table, cols in names.items()}
        fk_targets = {"patient_fk": "patients", "study_fk": "studies", "series_fk": "series"}
        for table in sorted(meta.tables):
            t = meta.tables[table]
            columns = [c.name for c in t.columns if c.name != "pk"]
            rows = []
            for r in conn.execute(select(*(t.c[c] for c in columns))):
                rows.append(tuple(keys[fk_targets[c]][v] if c in fk_targets else v for c, v in zip(columns, r)))
            out[table] = sorted(rows, key=repr)
    return out


def test_new_series_rows_are_the_general_paths(two_indexes: tuple[Index, Index],
                                               caplog: pytest.LogCaptureFixture) -> None:
    lean, general = two_indexes
    instances = _varied()
    when = dt.datetime(2024, 1, 5, 10, 30, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    caplog.set_level(logging.WARNING, logger="pacskit.store")
    fell_back = []
    for i, a in enumerate(instances):
        key = f"blob{i:04d}"
        rec = lean.append_instance(a, blob_key=key, size=len(key), sha256=key.ljust(64, "0")[:64],
                                   received_at=when, source_ae=a.source_ae)
        if rec is None:
            fell_back.append(a.sop_instance_uid)
            rec = _record(lean, a, key, when)
        assert rec.status == IngestStatus.STORED
    lean_warnings = [r.getMessage() for r in caplog.records]
    general_warnings = _through_general_path(general, instances, when, caplog)

    assert fell_back == []  # every instance took the lean lane, first ones of a series included
    assert lean_warnings == general_warnings and len(general_warnings) == 1
    lean_rows, general_rows = _rows(lean), _rows(general)
    assert set(lean_rows) >= {"patients", "studies", "series", "series_requests", "instances"}
    for table in general_rows:
        assert lean_rows[table] == general_rows[table], table
    assert len(general_rows["instances"]) == len(instances)
    with general.reading() as session:  # the overflow case did overflow (and was cut the same way)
        modalities = session.scalar(select(Study.modalities_in_study).where(Study.study_instance_uid == _uid(1, 10)))
    assert modalities is not None and 200 < len(modalities) <= 255 and modalities.startswith("M00XXXXX\\M01")


def test_a_known_series_the_cache_does_not_know_falls_back(two_indexes: tuple[Index, Index]) -> None:
    lean, _ = two_indexes
    first, second = _varied()[:2]
    now = dt.datetime.now(dt.UTC)
    _record(lean, first, "k1", now)
    lean._forget()  # a restart: the series is in the database, not in the cache
    assert lean.append_instance(second, blob_key="k2", size=2, sha256="0" * 64, received_at=now,
                                source_ae=None) is None
    assert lean.counts().instances == 1  # nothing of it was kept
    assert _record(lean, second, "k2", now).status == IngestStatus.STORED
    third = InstanceAttributes(sop_instance_uid=_uid(4, 1), sop_class_uid=_CR,
                               study_instance_uid=first.study_instance_uid,
                               series_instance_uid=first.series_instance_uid)
    assert lean.append_instance(third, blob_key="k3", size=2, sha256="0" * 64, received_at=now,
                                source_ae=None) is not None  # learnt by the general path


def test_a_series_of_another_study_is_refused_by_the_general_path(tmp_path: Path) -> None:
    store = DataStore.open(f"sqlite:///{tmp_path}/index.db", blobs=FilesystemBlobStore(tmp_path / "blobs"))
    try:
        series = new_uid()
        store.ingest(make_instance(store.temp_dir, StudyInstanceUID=new_uid(), SeriesInstanceUID=series))
        store.index._forget()
        with pytest.raises(InvalidInstance):
            store.ingest(make_instance(store.temp_dir, StudyInstanceUID=new_uid(), SeriesInstanceUID=series))
        assert store.counts().instances == 1 and store.check().ok
    finally:
        store.close()


def test_one_instance_per_series_never_takes_the_general_path(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store = DataStore.open(f"sqlite:///{tmp_path}/index.db", blobs=FilesystemBlobStore(tmp_path / "blobs"))
    try:
        def refused(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("the general path ran")

        monkeypatch.setattr(store.index, "run_write_shared", refused)
        study = new_uid()
        for patient in ("A", "A", "B"):
            done = store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study if patient == "A" else new_uid(),
                                              SeriesInstanceUID=new_uid(), PatientID=patient), source_ae="X")
            assert done.status == IngestStatus.STORED
        counts = store.counts()
        assert (counts.patients, counts.studies, counts.series, counts.instances) == (2, 2, 3, 3)
        assert store.check().ok
    finally:
        store.close()
