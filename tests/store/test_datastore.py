"""DataStore on SQLite, PostgreSQL and MariaDB: ingest, duplicates, check, reindex, concurrency."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select, update

from pacskit.store import (
    DataStore,
    FilesystemBlobStore,
    IngestStatus,
    InstanceMismatch,
    InvalidBlobKey,
    InvalidInstance,
    MemoryBlobStore,
    Patient,
    Series,
    Study,
    normalise_person_name,
    starts_with,
)
from pacskit.store.index.models import Instance

from ._util import REAL_FILES, dicom_file, make_instance, new_uid, stage


def _bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _blob_bytes(store: DataStore, key: str) -> bytes:
    with store.blobs.open(key) as fh:
        return fh.read()


def _ingest_all(store: DataStore, names: list[str]) -> dict[str, Any]:
    results = {}
    for name in names:
        results[name] = store.ingest(stage(store, name), source_ae="MODALITY1")
    return results


def snapshot(store: DataStore, *, with_reception: bool = True) -> list[tuple]:
    """Everything the index holds except row ids, in a comparable form."""
    rows = []
    with store.index.reading() as s:
        for inst, series, study, patient in s.execute(
            select(Instance, Series, Study, Patient)
            .join(Series, Instance.series_fk == Series.pk)
            .join(Study, Series.study_fk == Study.pk)
            .join(Patient, Study.patient_fk == Patient.pk)
        ).all():
            row = tuple(
                getattr(obj, col.key)
                for obj in (inst, series, study, patient)
                for col in obj.__table__.columns
                if col.key != "pk" and not col.key.endswith("_fk")
                and (with_reception or col.key not in ("received_at", "source_ae"))
            )
            rows.append(row)
    return sorted(rows, key=repr)


# --- ingest --------------------------------------------------------------------------------------


def test_ingest_real_files(store: DataStore) -> None:
    before = dt.datetime.now(dt.UTC)
    results = _ingest_all(store, REAL_FILES)
    assert all(r.status == IngestStatus.STORED for r in results.values())
    assert os.listdir(store.temp_dir) == [], "every temp file was consumed"

    patients, studies, series = set(), Counter(), Counter()
    series_of_study: dict[str, set[str]] = {}
    for name, result in results.items():
        path = dicom_file(name)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        raw = _bytes(path)
        assert result.sha256 == hashlib.sha256(raw).hexdigest()
        assert result.size == len(raw)
        assert _blob_bytes(store, result.blob_key) == raw, "blob is the received file, byte for byte"

        inst = store.get_instance(ds.SOPInstanceUID)
        assert inst is not None and inst.pk == result.instance_id
        assert inst.sop_class_uid == ds.SOPClassUID
        assert inst.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        assert inst.sha256 == result.sha256 and inst.size == len(raw)
        assert inst.blob_key == result.blob_key
        assert inst.source_ae == "MODALITY1"
        assert inst.received_at.tzinfo is not None and inst.received_at >= before - dt.timedelta(seconds=1)
        charset = ds.get("SpecificCharacterSet")
        if charset is not None:
            assert inst.specific_character_set == (charset if isinstance(charset, str) else "\\".join(charset))
        se, st = inst.series, inst.series.study
        pa = st.patient
        assert se.series_instance_uid == ds.SeriesInstanceUID
        assert se.modality == ds.Modality
        assert st.study_instance_uid == ds.StudyInstanceUID
        assert st.study_date == (ds.get("StudyDate") or None)
        assert st.accession_number == (ds.get("AccessionNumber") or None)
        assert pa.patient_id == (ds.get("PatientID") or None)
        assert pa.patient_name == (str(ds.PatientName) or None), "decoded to Unicode"
        assert pa.patient_name_search == normalise_person_name(str(ds.PatientName))
        patients.add(ds.get("PatientID") or ds.StudyInstanceUID)
        studies[ds.StudyInstanceUID] += 1
        series[ds.SeriesInstanceUID] += 1
        series_of_study.setdefault(ds.StudyInstanceUID, set()).add(ds.SeriesInstanceUID)

    counts = store.counts()
    assert (counts.patients, counts.studies, counts.series, counts.instances) == (
        len(patients), len(studies), len(series), len(REAL_FILES))
    with store.index.reading() as s:
        for study in s.scalars(select(Study)):
            assert study.num_instances == studies[study.study_instance_uid]
            assert study.num_series == len(series_of_study[study.study_instance_uid])
        for se in s.scalars(select(Series)):
            assert se.num_instances == series[se.series_instance_uid]
        for pa in s.scalars(select(Patient)):
            assert pa.num_studies == len(pa.studies)
    assert store.check().ok


def test_unicode_names_stored_and_searchable(store: DataStore) -> None:
    _ingest_all(store, ["chrH31.dcm", "chrFren.dcm", "chrRuss.dcm", "chrGerm.dcm", "chrX1.dcm", "CT_small.dcm"])

    def find(prefix: str) -> list[str]:
        key = normalise_person_name(prefix) or ""
        with store.index.reading() as s:
            return sorted(s.scalars(select(Patient.patient_name).where(
                starts_with(Patient.patient_name_search, key))))

    assert find("yamada") == ["Yamada^Tarou=山田^太郎=やまだ^たろう"]
    assert find("Yamada^Tarou=山田") == ["Yamada^Tarou=山田^太郎=やまだ^たろう"]
    assert find("buc^jé") == ["Buc^Jérôme"]
    assert find("люк") == ["Люкceмбypг"]
    assert find("äneas") == ["Äneas^Rüdiger"]
    assert find("wang^xiaodong=王") == ["Wang^XiaoDong=王^小東"]
    assert find("compressed") == ["CompressedSamples^CT1"]
    assert find("c") == ["CompressedSamples^CT1"]
    assert find("x") == []


def test_patient_ids_are_case_sensitive(store: DataStore, tmp_path: Path) -> None:
    for pid in ("abc", "ABC", "abc "):
        store.ingest(make_instance(store.temp_dir, StudyInstanceUID=new_uid(), SeriesInstanceUID=new_uid(),
                                   PatientID=pid), source_ae="A")
    with store.index.reading() as s:
        assert sorted(s.scalars(select(Patient.patient_id))) == ["ABC", "abc"]  # 'abc ' is 'abc' padded
    assert store.counts().patients == 2


def test_counts_and_modalities_in_study(store: DataStore) -> None:
    study, other = new_uid(), new_uid()
    ct, mr = new_uid(), new_uid()
    for series_uid, modality in [(ct, "CT"), (mr, "MR")]:
        for n in range(3):
            store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series_uid,
                                       Modality=modality, InstanceNumber=n + 1, PatientID="P1"), source_ae="A")
    store.ingest(make_instance(store.temp_dir, StudyInstanceUID=other, SeriesInstanceUID=new_uid(),
                               Modality="SR", PatientID="P1"), source_ae="A")
    with store.index.reading() as s:
        st = s.scalars(select(Study).where(Study.study_instance_uid == study)).one()
        assert (st.num_series, st.num_instances, st.modalities_in_study) == (2, 6, "CT\\MR")
        assert st.patient.num_studies == 2
        assert sorted(se.num_instances for se in st.series) == [3, 3]
    assert store.counts().patients == 1
    assert store.check().ok


# --- duplicates ----------------------------------------------------------------------------------


def _original_and_variant(store: DataStore) -> tuple[Any, str]:
    first = store.ingest(stage(store, "CT_small.dcm"), source_ae="FIRST")
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    variant = make_instance(store.temp_dir, base="CT_small.dcm", SOPInstanceUID=ds.SOPInstanceUID,
                            InstanceNumber=99)
    return first, variant


def test_keep_first_ignores_and_leaves_stored_copy(store: DataStore) -> None:
    first, variant = _original_and_variant(store)
    before = snapshot(store)
    result = store.ingest(variant, source_ae="SECOND")  # default policy: keep-first
    assert result.status == IngestStatus.DUPLICATE_IGNORED
    assert result.instance_id == first.instance_id and result.blob_key == first.blob_key
    assert not result.same_content and result.stored_sha256 == first.sha256
    assert not os.path.exists(variant), "the ignored copy is deleted"
    assert _blob_bytes(store, first.blob_key) == _bytes(dicom_file("CT_small.dcm"))
    assert snapshot(store) == before
    assert list(store.blobs.iter_keys()) == [first.blob_key]
    again = store.ingest(stage(store, "CT_small.dcm"), source_ae="THIRD")
    assert again.status == IngestStatus.DUPLICATE_IGNORED and again.same_content


def test_reject_refuses_and_leaves_stored_copy(store: DataStore) -> None:
    first, variant = _original_and_variant(store)
    before = snapshot(store)
    result = store.ingest(variant, source_ae="SECOND", duplicate_policy="reject")
    assert result.status == IngestStatus.DUPLICATE_REJECTED and not result.stored
    assert result.blob_key == first.blob_key
    assert not os.path.exists(variant)
    assert snapshot(store) == before
    assert list(store.blobs.iter_keys()) == [first.blob_key]


def test_overwrite_replaces_blob_and_row(store: DataStore) -> None:
    first, variant = _original_and_variant(store)
    variant_bytes = _bytes(variant)
    result = store.ingest(variant, source_ae="SECOND", duplicate_policy="overwrite")
    assert result.status == IngestStatus.OVERWRITTEN and result.stored
    assert result.instance_id == first.instance_id, "the same row now points to the new copy"
    assert result.blob_key != first.blob_key
    assert not store.blobs.exists(first.blob_key), "old blob deleted after the commit"
    assert list(store.blobs.iter_keys()) == [result.blob_key]
    assert _blob_bytes(store, result.blob_key) == variant_bytes
    inst = store.get_instance(result.sop_instance_uid)
    assert inst is not None
    assert (inst.instance_number, inst.sha256, inst.source_ae) == (99, hashlib.sha256(variant_bytes).hexdigest(),
                                                                  "SECOND")
    assert store.counts().instances == 1
    assert store.check().ok


def test_overwrite_into_another_series_moves_and_prunes(store: DataStore) -> None:
    study, s1, s2 = new_uid(), new_uid(), new_uid()
    uid = new_uid()
    store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=s1, SOPInstanceUID=uid,
                               Modality="CT"), source_ae="A")
    store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=s2, Modality="MR"),
                 source_ae="A")
    r = store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=s2, SOPInstanceUID=uid,
                                   Modality="MR"), source_ae="A", duplicate_policy="overwrite")
    assert r.status == IngestStatus.OVERWRITTEN
    with store.index.reading() as s:
        st = s.scalars(select(Study).where(Study.study_instance_uid == study)).one()
        assert (st.num_series, st.num_instances, st.modalities_in_study) == (1, 2, "MR")
        assert s.scalars(select(Series.series_instance_uid)).all() == [s2]
    assert store.check().ok


def test_concurrent_copies_of_one_instance(store: DataStore) -> None:
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    paths = [stage(store, "MR_small.dcm") for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda p: store.ingest(p, source_ae="A"), paths))
    statuses = Counter(r.status for r in results)
    assert statuses == {IngestStatus.STORED: 1, IngestStatus.DUPLICATE_IGNORED: 5}
    assert {r.instance_id for r in results} == {store.get_instance(ds.SOPInstanceUID).pk}  # type: ignore[union-attr]
    assert len(list(store.blobs.iter_keys())) == 1
    assert os.listdir(store.temp_dir) == []
    assert store.check().ok


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_invalid_uid_rejected_nothing_stored(store: DataStore) -> None:
    """A leading zero is refused with ``strict_uids`` (accepted with a warning by default)."""
    path = make_instance(store.temp_dir, SOPInstanceUID="1.2.3.04")
    with pytest.raises(InvalidInstance) as info:
        store.ingest(path, source_ae="A", strict_uids=True)
    assert info.value.tag == 0x00080018 and "not a valid UID" in info.value.reason
    assert not os.path.exists(path)
    assert list(store.blobs.iter_keys()) == [] and store.counts().instances == 0


def test_command_uid_mismatch_rejected(store: DataStore) -> None:
    path = stage(store, "CT_small.dcm")
    with pytest.raises(InvalidInstance) as info:
        store.ingest(path, source_ae="A", expected_sop_instance_uid="1.2.3.4")
    assert isinstance(info.value, InstanceMismatch)  # the storage add-in answers 0xA900
    assert info.value.tag == 0x00080018
    assert "1.2.3.4" in str(info.value) and "differs" in str(info.value)
    assert not os.path.exists(path)
    with pytest.raises(InvalidInstance) as info:
        store.ingest(stage(store, "CT_small.dcm"), source_ae="A",
                     expected_sop_class_uid="1.2.840.10008.5.1.4.1.1.4")
    assert info.value.tag == 0x00080016
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ok = store.ingest(stage(store, "CT_small.dcm"), source_ae="A", expected_sop_instance_uid=ds.SOPInstanceUID,
                      expected_sop_class_uid=ds.SOPClassUID)
    assert ok.status == IngestStatus.STORED
    assert len(list(store.blobs.iter_keys())) == 1


def test_series_reused_in_other_study_rejected(store: DataStore) -> None:
    series = new_uid()
    store.ingest(make_instance(store.temp_dir, StudyInstanceUID=new_uid(), SeriesInstanceUID=series), source_ae="A")
    before = snapshot(store)
    with pytest.raises(InvalidInstance) as info:
        store.ingest(make_instance(store.temp_dir, StudyInstanceUID=new_uid(), SeriesInstanceUID=series),
                     source_ae="A")
    assert info.value.tag == 0x0020000E and "already belongs" in info.value.reason
    assert snapshot(store) == before
    assert len(list(store.blobs.iter_keys())) == 1, "the new blob was deleted when the transaction failed"


def test_database_failure_deletes_new_blob(store: DataStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(store.index, "record_instance", broken)
    monkeypatch.setattr(store.index, "_create_on_cursor", broken)  # the lean lane too (it falls back)
    if store.index._pg_lane is not None:  # and its new-study statement on PostgreSQL
        monkeypatch.setattr(store.index._pg_lane, "_append_new_study", broken)
    path = stage(store, "CT_small.dcm")
    with pytest.raises(RuntimeError):
        store.ingest(path, source_ae="A")
    assert not os.path.exists(path)
    assert list(store.blobs.iter_keys()) == []


def test_delete_instance_prunes_parents(store: DataStore) -> None:
    r = _ingest_all(store, ["CT_small.dcm", "MR_small.dcm"])["CT_small.dcm"]
    assert store.delete_instance(r.sop_instance_uid)
    assert not store.delete_instance(r.sop_instance_uid)
    assert not store.blobs.exists(r.blob_key)
    counts = store.counts()
    assert (counts.patients, counts.studies, counts.series, counts.instances) == (1, 1, 1, 1)
    assert store.check().ok


# --- check and reindex ---------------------------------------------------------------------------


def test_check_detects_corruption_missing_and_orphan(store: DataStore, tmp_path: Path) -> None:
    results = _ingest_all(store, ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "chrH31.dcm"])
    report = store.check()
    assert report.ok, str(report)
    assert (report.instances_checked, report.blobs_seen) == (4, 4)

    corrupted = results["CT_small.dcm"].blob_key
    path = store.blobs.path(corrupted)
    assert path is not None
    with open(path, "r+b") as fh:  # flip one byte in the middle: same size, other content
        fh.seek(20000)
        byte = fh.read(1)
        fh.seek(20000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    missing = results["MR_small.dcm"].blob_key
    os.unlink(store.blobs.path(missing) or "")
    truncated = results["rtplan.dcm"].blob_key
    os.truncate(store.blobs.path(truncated) or "", 100)
    orphan = store.blobs.put_file(stage(tmp_path, "JPEG2000.dcm"))

    report = store.check()
    assert not report.ok
    assert [p.blob_key for p in report.of_kind("hash-mismatch")] == [corrupted]
    assert [p.blob_key for p in report.of_kind("missing-blob")] == [missing]
    assert [p.blob_key for p in report.of_kind("size-mismatch")] == [truncated]
    assert [p.blob_key for p in report.of_kind("orphan-blob")] == [orphan]
    assert len(report.problems) == 4
    assert report.of_kind("missing-blob")[0].sop_instance_uid == results["MR_small.dcm"].sop_instance_uid
    quick = store.check(verify_hash=False)
    assert {p.kind for p in quick.problems} == {"missing-blob", "size-mismatch", "orphan-blob"}
    # only orphans are deleted (the others need a person), each checked again first
    assert store.delete_orphans(report) == [orphan]
    assert not store.blobs.exists(orphan) and store.blobs.exists(corrupted)
    assert {p.kind for p in store.check().problems} == {"hash-mismatch", "missing-blob", "size-mismatch"}


def test_hostile_key_in_a_row_goes_nowhere(store: DataStore) -> None:
    r = store.ingest(stage(store, "CT_small.dcm"), source_ae="A")
    store.index.run_write(lambda s: s.execute(update(Instance).values(blob_key="../../../../etc/passwd")))
    with pytest.raises(InvalidBlobKey):
        store.open_instance(r.sop_instance_uid)
    with pytest.raises(InvalidBlobKey):
        store.instance_path(r.sop_instance_uid)
    report = store.check()
    assert [p.kind for p in report.problems] == ["invalid-key", "orphan-blob"]


def test_check_detects_wrong_counts(store: DataStore) -> None:
    _ingest_all(store, ["CT_small.dcm", "MR_small.dcm"])
    store.index.run_write(lambda s: s.execute(update(Series).values(num_instances=7)))
    store.index.run_write(lambda s: s.execute(update(Study).values(modalities_in_study="XX")))
    kinds = Counter(p.kind for p in store.check().problems)
    assert kinds == {"count-mismatch": 4}  # 2 series counts, 2 studies ModalitiesInStudy


def test_reindex_rebuilds_the_same_index(store: DataStore) -> None:
    names = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "chrH31.dcm", "chrRuss.dcm",
             "chrX2.dcm", "image_dfl.dcm"]
    _ingest_all(store, names)
    study = new_uid()
    for modality in ("CT", "PT", "CT"):
        store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=new_uid(),
                                   Modality=modality), source_ae="B")
    original = snapshot(store)
    report = store.reindex()
    assert (report.indexed, report.skipped, report.duplicates) == (len(names) + 3, [], [])
    assert snapshot(store) == original
    assert store.check().ok

    # from the blobs alone (the index lost): the same, except what only the index knew
    store.index.run_write(store.index.clear)
    assert store.counts().instances == 0
    report = store.reindex()
    assert report.indexed == len(names) + 3
    assert snapshot(store, with_reception=False) == snapshot_without_reception(original, store)
    assert store.check().ok


def snapshot_without_reception(original: list[tuple], store: DataStore) -> list[tuple]:
    columns = [c.key for model in (Instance, Series, Study, Patient) for c in model.__table__.columns
               if c.key != "pk" and not c.key.endswith("_fk")]
    drop = {columns.index("received_at"), columns.index("source_ae")}
    return sorted((tuple(v for i, v in enumerate(row) if i not in drop) for row in original), key=repr)


def test_reindex_after_interrupted_overwrite(store: DataStore, tmp_path: Path) -> None:
    first, variant = _original_and_variant(store)
    # a crash after the new copy was stored but before the row was switched: two blobs, one instance
    leftover = store.blobs.put_file(variant)
    assert [p.blob_key for p in store.check().of_kind("orphan-blob")] == [leftover]
    original = snapshot(store)
    report = store.reindex()
    assert report.duplicates == [leftover], "the copy the index referred to wins"
    assert snapshot(store) == original
    # unreadable blobs are reported, not fatal
    junk = tmp_path / "junk"
    junk.write_bytes(b"not dicom")
    bad = store.blobs.put_file(str(junk))
    report = store.reindex()
    assert [k for k, _ in report.skipped] == [bad]
    assert report.indexed == 1


def test_memory_blob_store(db_url: Any) -> None:
    with DataStore.open(db_url, blobs=MemoryBlobStore()) as store:
        r = store.ingest(stage(store, "CT_small.dcm"), source_ae="A")
        assert store.instance_path(r.sop_instance_uid) is None
        with store.open_instance(r.sop_instance_uid) as fh:
            assert fh.read() == _bytes(dicom_file("CT_small.dcm"))
        assert store.check().ok
        original = snapshot(store)
        assert store.reindex().indexed == 1
        assert snapshot(store) == original


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrent_ingest_keeps_counts_exact(store: DataStore) -> None:
    study = new_uid()
    series = [new_uid() for _ in range(3)]
    paths = [make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=series[i % 3],
                           Modality=("CT", "MR", "SR")[i % 3], PatientID="CONC") for i in range(18)]
    # a second and third study of the same (new) patient, racing to create it
    paths += [make_instance(store.temp_dir, StudyInstanceUID=new_uid(), SeriesInstanceUID=new_uid(),
                            PatientID="CONC") for _ in range(2)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: store.ingest(p, source_ae="A"), paths))
    assert all(r.status == IngestStatus.STORED for r in results)
    counts = store.counts()
    assert (counts.patients, counts.studies, counts.series, counts.instances) == (1, 3, 5, 20)
    with store.index.reading() as s:
        st = s.scalars(select(Study).where(Study.study_instance_uid == study)).one()
        assert (st.num_series, st.num_instances, st.modalities_in_study) == (3, 18, "CT\\MR\\SR")
        assert st.patient.num_studies == 3
    report = store.check()
    assert report.ok, str(report)


def test_get_instance_usable_after_session(store: DataStore) -> None:
    r = store.ingest(stage(store, "chrX1.dcm"), source_ae="A")
    inst = store.get_instance(r.sop_instance_uid)
    assert inst is not None
    assert inst.series.study.patient.patient_name == "Wang^XiaoDong=王^小東"
    assert store.get_instance("1.2.3") is None
    assert store.count() == 1 and store.count("patients") == 1
    assert isinstance(store.blobs, FilesystemBlobStore)
    assert store.instance_path(r.sop_instance_uid) == store.blobs.path(r.blob_key)


def test_group_commit_shares_one_transaction_and_isolates_failures(store: DataStore) -> None:
    """Callers queued behind a running transaction run together, each in its own SAVEPOINT."""
    import threading

    from sqlalchemy import text

    from pacskit.store.index.database import Index

    index = Index(store.index.engine, group_commit=True)
    release, leading = threading.Event(), threading.Event()
    sessions: dict[str, int] = {}

    def slow(s: Any) -> str:
        leading.set()
        release.wait(10)
        return "first"

    def writer(name: str, fail: bool = False):
        def work(s: Any) -> str:
            sessions[name] = id(s)
            s.execute(text("UPDATE patients SET patient_sex = :n WHERE patient_id = 'GC'"), {"n": name})
            if fail:
                raise ValueError(name)
            return name
        return work

    store.ingest(make_instance(store.temp_dir, PatientID="GC"), source_ae="A")
    results: dict[str, Any] = {}

    def run(name: str, work: Any) -> None:
        try:
            results[name] = index.run_write_shared(work)
        except Exception as exc:
            results[name] = exc

    first = threading.Thread(target=run, args=("first", slow))
    first.start()
    assert leading.wait(10)
    others = [threading.Thread(target=run, args=(n, writer(n, fail=(n == "B")))) for n in ("A", "B", "C")]
    for t in others:
        t.start()
    while len(index._group._queue) < 3:  # type: ignore[union-attr]
        threading.Event().wait(0.01)
    release.set()
    for t in (first, *others):
        t.join(10)
    assert results["first"] == "first" and results["A"] == "A" and results["C"] == "C"
    assert isinstance(results["B"], ValueError)
    assert sessions["A"] == sessions["B"] == sessions["C"]  # one shared transaction
    with store.index.reading() as s:  # A and C committed, B's change undone: the last writer is C
        assert s.execute(text("SELECT patient_sex FROM patients WHERE patient_id = 'GC'")).scalar() in ("A", "C")


def test_fast_path_survives_deleted_and_reused_series(store: DataStore) -> None:
    """A cached series that was pruned (and whose row id another series took) is not appended to."""
    study, gone, other = new_uid(), new_uid(), new_uid()
    first = store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=gone),
                         source_ae="A")
    store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=gone), source_ae="A")
    for uid in [first.sop_instance_uid] + [
        u for (u,) in store.index.engine.connect().execute(select(Instance.sop_instance_uid))
        if u != first.sop_instance_uid
    ]:
        assert store.delete_instance(uid)
    assert store.counts().series == 0
    store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=other), source_ae="A")
    again = store.ingest(make_instance(store.temp_dir, StudyInstanceUID=study, SeriesInstanceUID=gone),
                         source_ae="A")
    assert again.status == IngestStatus.STORED
    inst = store.get_instance(again.sop_instance_uid)
    assert inst is not None and inst.series.series_instance_uid == gone
    counts = store.counts()
    assert (counts.studies, counts.series, counts.instances) == (1, 2, 2)
    report = store.check()
    assert report.ok, str(report)
