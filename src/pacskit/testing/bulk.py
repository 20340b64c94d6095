"""Bulk-load a synthetic index (rows only, no files) for query benchmarks and large-result tests.

``bulk_load(store, patients=..., ...)`` inserts patients, studies, series and instances with
SQLAlchemy Core ``executemany`` in batches, with primary keys computed up front (no round trip per
row), counts and ModalitiesInStudy consistent with the rows. The instances have no blobs: their
``blob_key`` is ``bulk<n>`` and nothing exists under it, so only index-answered keys make sense on such
a store (and ``DataStore.check`` reports them all as missing — never use it on a real store).

Values are deterministic (seeded): PatientID ``BP0000001``…, names from a list of surnames and given
names, StudyDate spread over 2000-2024, AccessionNumber ``AN00000001``…, modalities cycling.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, text

from pacskit.store import DataStore
from pacskit.store.index.models import Instance, Patient, Series, Study, normalise_person_name

SURNAMES = ["SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS", "MARTIN", "MULLER",
            "SCHMIDT", "SCHNEIDER", "FISCHER", "WEBER", "MEYER", "WAGNER", "BECKER", "SCHULZ", "HOFFMANN", "KOCH",
            "DUBOIS", "MOREAU", "LAURENT", "SIMON", "MICHEL", "LEFEBVRE", "LEROY", "ROUX", "DAVID", "BERTRAND",
            "ROSSI", "RUSSO", "FERRARI", "ESPOSITO", "BIANCHI", "ROMANO", "COLOMBO", "RICCI", "MARINO", "GRECO"]
GIVEN = ["JOHN", "MARY", "JAMES", "ANNA", "PETER", "LINDA", "PAUL", "SARA", "MARK", "EMMA", "LUKAS", "LEA",
         "HANS", "CLARA", "PIERRE", "MARIE", "LUCA", "GIULIA", "TOM", "NORA"]
MODALITIES = ["CT", "MR", "CR", "US", "DX", "MG", "NM", "PT"]
SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4", "CR": "1.2.840.10008.5.1.4.1.1.1",
             "US": "1.2.840.10008.5.1.4.1.1.6.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1",
             "MG": "1.2.840.10008.5.1.4.1.1.1.2", "NM": "1.2.840.10008.5.1.4.1.1.20",
             "PT": "1.2.840.10008.5.1.4.1.1.128"}
ROOT = "1.2.826.0.1.3680043.9.7778"


@dataclass(frozen=True, slots=True)
class BulkShape:
    patients: int
    studies_per_patient: int = 1
    series_per_study: int = 2
    instances_per_series: int = 5

    @property
    def studies(self) -> int:
        return self.patients * self.studies_per_patient

    @property
    def series(self) -> int:
        return self.studies * self.series_per_study

    @property
    def instances(self) -> int:
        return self.series * self.instances_per_series


def patient_id(i: int) -> str:
    return f"BP{i:07d}"


def patient_name(i: int) -> str:
    rnd = random.Random(i)
    return f"{rnd.choice(SURNAMES)}^{rnd.choice(GIVEN)}"


def study_uid(j: int) -> str:
    return f"{ROOT}.1.{j}"


def series_uid(k: int) -> str:
    return f"{ROOT}.2.{k}"


def instance_uid(n: int) -> str:
    return f"{ROOT}.3.{n}"


def study_date(j: int) -> str:
    day = dt.date(2000, 1, 1) + dt.timedelta(days=(j * 7919) % 9131)  # 2000-01-01 .. 2024-12-31
    return day.strftime("%Y%m%d")


def _batches(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def bulk_load(store: DataStore, shape: BulkShape, *, batch: int = 20000, first: int = 1) -> BulkShape:
    """Insert ``shape`` worth of rows into an empty index; entity numbers start at ``first``."""
    sp, ss, si = shape.studies_per_patient, shape.series_per_study, shape.instances_per_series
    now = dt.datetime.now(dt.UTC)

    def patients() -> Iterator[dict[str, Any]]:
        for i in range(first, first + shape.patients):
            name = patient_name(i)
            yield {"pk": i, "patient_id": patient_id(i), "issuer_of_patient_id": "", "patient_name": name,
                   "patient_name_search": normalise_person_name(name), "patient_birth_date": study_date(i * 3)[:4] + "0101",
                   "patient_sex": "MF"[i % 2], "num_studies": sp}

    def studies() -> Iterator[dict[str, Any]]:
        for i in range(first, first + shape.patients):
            for a in range(sp):
                j = (i - first) * sp + a + first
                mods = sorted({MODALITIES[(j + b) % len(MODALITIES)] for b in range(ss)})
                yield {"pk": j, "patient_fk": i, "study_instance_uid": study_uid(j), "study_date": study_date(j),
                       "study_time": f"{(j * 37) % 24:02d}{(j * 11) % 60:02d}00", "accession_number": f"AN{j:08d}",
                       "study_id": str(j % 1000), "referring_physician_name": "REFERRER^BULK",
                       "referring_physician_name_search": "REFERRER^BULK",
                       "study_description": f"Bulk study {j % 50}", "modalities_in_study": "\\".join(mods),
                       "num_series": ss, "num_instances": ss * si}

    def series() -> Iterator[dict[str, Any]]:
        for j in range(first, first + shape.studies):
            for b in range(ss):
                k = (j - first) * ss + b + first
                yield {"pk": k, "study_fk": j, "series_instance_uid": series_uid(k), "series_number": b + 1,
                       "modality": MODALITIES[(j + b) % len(MODALITIES)], "series_description": f"series {b + 1}",
                       "body_part_examined": "CHEST", "num_instances": si}

    def instances() -> Iterator[dict[str, Any]]:
        for k in range(first, first + shape.series):
            j = (k - first) // ss + first
            b = (k - first) % ss
            sop_class = SOP_CLASS[MODALITIES[(j + b) % len(MODALITIES)]]
            for c in range(si):
                n = (k - first) * si + c + first
                yield {"pk": n, "series_fk": k, "sop_instance_uid": instance_uid(n), "sop_class_uid": sop_class,
                       "instance_number": c + 1, "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                       "specific_character_set": None, "size": 0, "sha256": "0" * 64, "blob_key": f"bulk{n}",
                       "received_at": now, "source_ae": "BULK"}

    engine = store.index.engine
    for model, rows in ((Patient, patients()), (Study, studies()), (Series, series()), (Instance, instances())):
        table = model.__table__
        for chunk in _batches(rows, batch):
            with engine.begin() as conn:
                conn.execute(insert(table), chunk)
    if store.index.backend == "postgresql":  # explicit keys: move the sequences past them
        with engine.begin() as conn:
            for name in ("patients", "studies", "series", "instances"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'pk'), "
                                  f"(SELECT COALESCE(MAX(pk), 1) FROM {name}))"))
    return shape
