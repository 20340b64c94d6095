"""Migrations: shipped in the package, run programmatically, idempotent, and equal to the models."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from pacskit.store import Base, Index, MemoryBlobStore
from pacskit.store.datastore import DataStore

TABLES = {"patients", "studies", "series", "series_requests", "instances", "transaction_log", "log_records",
          "audit_records", "storage_commitment_requests", "storage_commitment_items", "worklist_items",
          "worklist_station_aes", "performed_procedure_steps", "performed_step_links", "pacskit_store_version",
          "cluster_nodes", "cluster_inflight", "cluster_ae_titles", "cluster_forward_jobs", "cluster_forward_routed",
          "cluster_forward_destinations", "cluster_claims", "cluster_deletions"}

#: the newest revision in src/pacskit/store/migrations/versions (update with every migration)
HEAD = "0010"


def test_migrate_twice_is_idempotent(fresh_db_url: Any) -> None:
    index = Index.open(fresh_db_url)
    try:
        assert index.current_revision() is None
        assert not TABLES & set(index.table_names())
        index.migrate()
        assert index.current_revision() == index.head_revision() == HEAD
        assert TABLES <= set(index.table_names())
        index.migrate()  # already at head: nothing happens
        assert index.current_revision() == HEAD
        with index.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM pacskit_store_version")).scalar() == 1
    finally:
        index.close()
    # and through the facade, on an existing schema
    DataStore.open(fresh_db_url, blobs=MemoryBlobStore()).close()


def test_migrated_schema_matches_models(fresh_db_url: Any) -> None:
    index = Index.open(fresh_db_url)
    try:
        index.migrate()
        with index.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "version_table": "pacskit_store_version"})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], diff
        insp = inspect(index.engine)
        uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("patients")}
        indexes = {tuple(i["column_names"]) for i in insp.get_indexes("patients")}
        assert ("patient_id", "issuer_of_patient_id") in uniques | indexes
        study_indexes = {tuple(i["column_names"]) for i in insp.get_indexes("studies")}
        assert {("patient_fk",), ("study_date",), ("accession_number",)} <= study_indexes
        if index.backend == "mysql":
            with index.engine.connect() as conn:
                rows = conn.execute(text(
                    "SELECT table_name, table_collation FROM information_schema.tables "
                    "WHERE table_schema = DATABASE() AND table_name IN ('patients','studies','series','instances')"
                )).all()
            assert {r[1] for r in rows} == {"utf8mb4_bin"}
    finally:
        index.close()


def test_sqlite_pragmas(tmp_path: Any) -> None:
    index = Index.open(f"sqlite:///{tmp_path}/p.db")
    try:
        with index.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA mmap_size").scalar() == 1024 ** 3
    finally:
        index.close()
    normal = Index.open(f"sqlite:///{tmp_path}/n.db", sqlite_synchronous="NORMAL", sqlite_mmap_size=0)
    try:
        with normal.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA mmap_size").scalar() == 0
    finally:
        normal.close()


def test_urls_get_our_drivers() -> None:
    from pacskit.store import make_url

    assert make_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    mysql = make_url("mysql://root@h/db")
    assert (mysql.drivername, mysql.query["charset"]) == ("mysql+pymysql", "utf8mb4")
    assert make_url("mariadb://root@h/db").drivername == "mariadb+pymysql"
    assert make_url("mysql+pymysql://root@h/db?charset=utf8mb4").query["charset"] == "utf8mb4"
    assert make_url("sqlite:///x.db").drivername == "sqlite"


def test_mariadb_dialect_url_gets_the_same_schema(mariadb_server: Any) -> None:
    """``mariadb+pymysql://`` selects SQLAlchemy's mariadb dialect, which ignores ``mysql_*`` options."""
    url = mariadb_server.create().set(drivername="mariadb+pymysql")
    with DataStore.open(url, blobs=MemoryBlobStore()) as store:
        assert store.index.engine.dialect.name == "mariadb"
        with store.index.engine.connect() as conn:
            collations = set(conn.execute(text(
                "SELECT table_collation FROM information_schema.tables WHERE table_schema = DATABASE() "
                "AND table_name IN ('patients','studies','series','instances')")).scalars())
            prefix = conn.execute(text(
                "SELECT sub_part FROM information_schema.statistics WHERE table_schema = DATABASE() "
                "AND index_name = 'ix_patients_patient_name_search'")).scalar()
        assert collations == {"utf8mb4_bin"}
        assert prefix == 191


def test_in_memory_sqlite() -> None:
    from ._util import stage

    with DataStore.open("sqlite://", blobs=MemoryBlobStore()) as store:
        result = store.ingest(stage(store, "CT_small.dcm"), source_ae="A")
        assert store.get_instance(result.sop_instance_uid) is not None
        assert store.check().ok


def test_0002_fills_the_referring_physician_search_form(fresh_db_url: Any) -> None:
    index = Index.open(fresh_db_url)
    try:
        index.migrate("0001")
        with index.engine.begin() as conn:
            conn.execute(text("INSERT INTO patients (pk, patient_id, issuer_of_patient_id, num_studies) "
                              "VALUES (1, 'P', '', 2)"))
            conn.execute(text(
                "INSERT INTO studies (pk, patient_fk, study_instance_uid, referring_physician_name, num_series, "
                "num_instances) VALUES (1, 1, '1.2.3', :name, 0, 0), (2, 1, '1.2.4', NULL, 0, 0)"),
                {"name": "Müller^Anna^^^"})
        index.migrate("0002")
        assert index.current_revision() == "0002"
        with index.engine.connect() as conn:
            rows = conn.execute(text("SELECT pk, referring_physician_name_search FROM studies ORDER BY pk")).all()
        assert [tuple(r) for r in rows] == [(1, "MÜLLER^ANNA"), (2, None)]
    finally:
        index.close()


def test_0007_upgrades_an_archive_that_holds_data(fresh_db_url: Any) -> None:
    """Regression: on SQLite, 0007 rebuilds tables (batch mode); with foreign keys enforced, dropping
    ``studies`` while ``series`` rows reference it failed, so an existing archive could not be opened
    after the upgrade. The rows survive, and foreign keys are enforced again afterwards."""
    index = Index.open(fresh_db_url)
    try:
        index.migrate("0006")
        with index.engine.begin() as conn:
            conn.execute(text("INSERT INTO patients (pk, patient_id, issuer_of_patient_id, num_studies) "
                              "VALUES (1, 'P', '', 1)"))
            conn.execute(text("INSERT INTO studies (pk, patient_fk, study_instance_uid, num_series, num_instances) "
                              "VALUES (1, 1, '1.2.3', 1, 0)"))
            conn.execute(text("INSERT INTO series (pk, study_fk, series_instance_uid, num_instances) "
                              "VALUES (1, 1, '1.2.3.4', 0)"))
        index.migrate()
        assert index.current_revision() == HEAD
        with index.engine.connect() as conn:
            assert conn.execute(text("SELECT study_instance_uid FROM studies")).scalar() == "1.2.3"
            assert conn.execute(text("SELECT study_fk FROM series")).scalar() == 1
            if index.backend == "sqlite":
                assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        long_uid = "1." + "2" * 100  # fits the widened column
        with index.engine.begin() as conn:
            conn.execute(text("INSERT INTO studies (pk, patient_fk, study_instance_uid, num_series, num_instances) "
                              "VALUES (2, 1, :uid, 0, 0)"), {"uid": long_uid})
    finally:
        index.close()
