"""DataStore.verify_instances, on which commitment decides: present and intact, missing, changed
bytes (same size), truncated, and not indexed; on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pacskit.store import DataStore, FilesystemBlobStore

from ._util import blob_path, corrupt, store_files


def test_verify_instances(tmp_path: Path, fresh_db_url: Any) -> None:
    with DataStore.open(fresh_db_url, blobs=FilesystemBlobStore(tmp_path / "blobs")) as store:
        stored = store_files(store, tmp_path / "src", 4)
        (_, good), (_, missing), (_, changed), (_, truncated) = stored
        blob_path(store, missing.sop_instance_uid).unlink()
        corrupt(blob_path(store, changed.sop_instance_uid))
        path = blob_path(store, truncated.sop_instance_uid)
        path.chmod(0o644)
        path.write_bytes(path.read_bytes()[:-10])
        found = store.verify_instances([r.sop_instance_uid for _, r in stored] + ["1.2.3.4"])
        assert set(found) == {r.sop_instance_uid for _, r in stored}  # the unknown UID is left out
        assert found[good.sop_instance_uid].ok and found[good.sop_instance_uid].sop_class_uid == good.sop_class_uid
        kinds = {uid: copy.problem.kind for uid, copy in found.items() if copy.problem is not None}
        assert kinds == {
            missing.sop_instance_uid: "missing-blob",
            changed.sop_instance_uid: "hash-mismatch",
            truncated.sop_instance_uid: "size-mismatch",
        }
        assert len(store.check().problems) == 3  # the same test as check()
