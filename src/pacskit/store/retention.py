"""Which studies retention rules select: by age, by sending AE, by quota and by free disk space.

A study's *reception time* is the last time one of its instances was received (``received_at``): a
study that still grows is not old. Rules (:class:`RetentionRule`, evaluated in order, a study taken
by one rule is not counted again) select:

- ``max_age_days``: studies received longer ago than that;
- ``source_aes``: narrows a rule to studies every instance of which came from one of these calling
  AE titles (a study mixed with another source is kept: the rule is about that modality's data);
- the watermarks of :func:`plan` (``max_bytes``: the archive's indexed size must not exceed it;
  ``min_free_bytes``: the file system must keep that much free): the oldest-received studies go
  first until the watermark is met, never one received within ``protect_days``.

:func:`plan` only selects; :class:`pacskit.store.deletion.Deleter` deletes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from pacskit.store.index.models import Instance, Patient, Series, Study

if TYPE_CHECKING:
    from pacskit.store.datastore import DataStore


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """One age rule: studies last received more than ``max_age_days`` ago (from ``source_aes`` only,
    when given). ``name`` names the rule in reports and audit messages."""

    name: str
    max_age_days: float
    source_aes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StudyAge:
    """What retention knows of one study."""

    study_instance_uid: str
    patient_id: str | None
    received_at: dt.datetime
    bytes: int
    instances: int
    source_aes: frozenset[str]


@dataclass(slots=True)
class Selection:
    """What one rule (or watermark) selected."""

    rule: str
    studies: list[StudyAge] = field(default_factory=list)
    shortfall: int = 0  # watermark: bytes still missing (every other study is protected)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.studies)

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "bytes": self.bytes, "shortfall": self.shortfall, "studies": [
            {"study_instance_uid": s.study_instance_uid, "patient_id": s.patient_id,
             "received_at": s.received_at.isoformat(), "bytes": s.bytes, "instances": s.instances,
             "source_aes": sorted(s.source_aes)} for s in self.studies]}


def study_ages(store: DataStore) -> Iterator[StudyAge]:
    """Every study with its reception time, size and sources, oldest received first."""
    last = func.max(Instance.received_at)
    stmt = (
        select(Study.study_instance_uid, Patient.patient_id, last, func.sum(Instance.size), func.count(Instance.pk))
        .join(Series, Instance.series_fk == Series.pk)
        .join(Study, Series.study_fk == Study.pk)
        .join(Patient, Study.patient_fk == Patient.pk)
        .group_by(Study.pk, Study.study_instance_uid, Patient.patient_id)
        .order_by(last, Study.study_instance_uid)
    )
    sources_stmt = (
        select(Study.study_instance_uid, Instance.source_ae).distinct()
        .join(Series, Instance.series_fk == Series.pk)
        .join(Study, Series.study_fk == Study.pk)
    )
    with store.index.reading() as s:
        sources: dict[str, set[str]] = {}
        for uid, ae in s.execute(sources_stmt):
            sources.setdefault(uid, set()).add(ae or "")
        rows = s.execute(stmt).all()
    for uid, patient_id, received, size, count in rows:
        if received.tzinfo is None:
            received = received.replace(tzinfo=dt.UTC)
        yield StudyAge(uid, patient_id, received, int(size or 0), int(count), frozenset(sources.get(uid, ())))


def plan(
    store: DataStore,
    rules: Sequence[RetentionRule] = (),
    *,
    now: dt.datetime | None = None,
    max_bytes: int | None = None,
    free_bytes: int | None = None,
    min_free_bytes: int | None = None,
    protect_days: float = 0.0,
) -> list[Selection]:
    """The studies each rule selects, then those the watermarks need (see the module docstring).

    ``free_bytes`` is the file system's free space now (the caller measures it: ``shutil.disk_usage``);
    deleting a study is counted as freeing its indexed size.
    """
    now = now or dt.datetime.now(dt.UTC)
    studies = list(study_ages(store))
    taken: set[str] = set()
    out: list[Selection] = []
    for rule in rules:
        sel = Selection(rule.name)
        limit = now - dt.timedelta(days=rule.max_age_days)
        wanted = {ae.strip() for ae in rule.source_aes}
        for study in studies:
            if study.study_instance_uid in taken or study.received_at >= limit:
                continue
            if wanted and not study.source_aes <= wanted:
                continue
            sel.studies.append(study)
            taken.add(study.study_instance_uid)
        out.append(sel)
    need = 0
    kept = sum(s.bytes for s in studies if s.study_instance_uid not in taken)
    freed = sum(s.bytes for s in studies if s.study_instance_uid in taken)
    if max_bytes is not None and kept > max_bytes:
        need = kept - max_bytes
    if min_free_bytes is not None and free_bytes is not None and free_bytes + freed < min_free_bytes:
        need = max(need, min_free_bytes - free_bytes - freed)
    if need > 0:
        sel = Selection("watermark")
        protected = now - dt.timedelta(days=protect_days)
        for study in studies:  # oldest received first
            if need <= 0:
                break
            if study.study_instance_uid in taken or study.received_at >= protected:
                continue
            sel.studies.append(study)
            taken.add(study.study_instance_uid)
            need -= study.bytes
        sel.shortfall = max(need, 0)
        out.append(sel)
    return out


__all__ = ["RetentionRule", "Selection", "StudyAge", "plan", "study_ages"]
