"""What retention rules select (pacskit.store.retention), on every backend: age, AE, quota and free
space watermarks (oldest received first, protected recent studies, the shortfall reported)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import update

from pacskit.store import DataStore, Instance, Series, Study
from pacskit.store.retention import RetentionRule, plan, study_ages
from pacskit.testing.synth import make_series

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def _study(store: DataStore, tmp_path: Path, name: str, count: int, days_old: float, ae: str) -> str:
    paths = make_series(tmp_path / name, count, 16, 16, patient_id=name.upper())
    for path in paths:
        r = store.ingest(path, source_ae=ae)
    uid = store.get_instance(r.sop_instance_uid).series.study.study_instance_uid
    when = NOW - dt.timedelta(days=days_old)

    def age(s):  # type: ignore[no-untyped-def]
        series = [pk for (pk,) in s.execute(Series.__table__.select().with_only_columns(Series.pk)
                                            .join(Study.__table__).where(Study.study_instance_uid == uid))]
        s.execute(update(Instance).where(Instance.series_fk.in_(series)).values(received_at=when))

    store.index.run_write(age)
    return uid


def test_rules_and_watermarks(store: DataStore, tmp_path: Path) -> None:
    old_ct = _study(store, tmp_path, "a", 2, 400, "CT1")
    old_mr = _study(store, tmp_path, "b", 3, 300, "MR1")
    mid_ct = _study(store, tmp_path, "c", 1, 100, "CT1")
    new_ct = _study(store, tmp_path, "d", 2, 0.5, "CT1")
    ages = list(study_ages(store))
    assert [a.study_instance_uid for a in ages] == [old_ct, old_mr, mid_ct, new_ct]  # oldest received first
    size = {a.study_instance_uid: a.bytes for a in ages}
    assert ages[1].instances == 3 and ages[1].source_aes == {"MR1"}

    [ct] = plan(store, [RetentionRule("ct-90d", 90, ("CT1",))], now=NOW)
    assert [s.study_instance_uid for s in ct.studies] == [old_ct, mid_ct]
    first, second = plan(store, [RetentionRule("ct", 90, ("CT1",)), RetentionRule("all-200d", 200)], now=NOW)
    assert [s.study_instance_uid for s in second.studies] == [old_mr]  # old_ct taken by the first rule
    assert plan(store, [RetentionRule("none", 1000)], now=NOW)[0].studies == []

    total = sum(size.values())
    [quota] = plan(store, now=NOW, max_bytes=total - size[old_ct] - 1)  # one byte more than old_ct frees
    assert [s.study_instance_uid for s in quota.studies] == [old_ct, old_mr] and quota.shortfall == 0
    # free space: 10 bytes short -> the oldest study goes; the rule's selection counts as freed
    [free] = plan(store, now=NOW, free_bytes=1000, min_free_bytes=1010)
    assert [s.study_instance_uid for s in free.studies] == [old_ct]
    [rule] = plan(store, [RetentionRule("x", 350)], now=NOW, free_bytes=1000, min_free_bytes=1010)
    assert [s.study_instance_uid for s in rule.studies] == [old_ct]  # enough: no watermark selection
    assert plan(store, now=NOW, free_bytes=1000, min_free_bytes=1000) == []
    # protected recent studies: the watermark cannot be met, and says by how much
    [short] = plan(store, now=NOW, max_bytes=0, protect_days=1)
    assert [s.study_instance_uid for s in short.studies] == [old_ct, old_mr, mid_ct]
    assert short.shortfall == size[new_ct]
