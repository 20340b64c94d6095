"""The S3 blob store on a real S3-compatible object store (SeaweedFS, started by tests/store/conftest.py).

The protocol conformance tests (tests/store/test_blobs.py) run on S3 too; here: what only S3 has
(ranged reads, multipart uploads, server-side copy, listing under a prefix, the in-flight grace), the
data store's crash flow on S3, and a whole ``pacskit serve`` on S3 driven by DCMTK.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pacskit.store import BlobNotFound, DataStore, open_blob_store
from pacskit.store.blobs import new_key

pytest.importorskip("obstore", reason="the s3 extra (obstore) is not installed")
boto3 = pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")

from pacskit.store.s3 import S3BlobStore, S3ConfigError, S3Error  # noqa: E402

MB = 1 << 20


def _file(folder: Path, data: bytes) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"in-{os.urandom(4).hex()}"
    path.write_bytes(data)
    return str(path)


def test_the_s3_backend_is_built_in(tmp_path: Path, s3_options: dict[str, Any]) -> None:
    store = open_blob_store("s3", tmp_path / "node", s3_options)
    assert isinstance(store, S3BlobStore)
    assert store.temp_dir == str(tmp_path / "node" / "tmp") and store.path(new_key()) is None
    with pytest.raises(ValueError, match="blob store 's3': the s3 blob store needs options.bucket"):
        open_blob_store("s3", tmp_path, {"bucket": ""})
    with pytest.raises(ValueError, match="blob store 's3':.*unexpected keyword argument 'bukket'"):
        open_blob_store("s3", tmp_path, {"bukket": "x"})
    with pytest.raises(ValueError, match="give both access_key_id and secret_access_key"):
        open_blob_store("s3", tmp_path, {"bucket": "x", "access_key_id": "a"})


def test_the_options_reach_the_client(tmp_path: Path) -> None:
    """Endpoint, addressing style, TLS and credentials as obstore takes them (no request is sent)."""
    import ssl

    system = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    pem = Path(system).read_text()
    pem = pem[pem.index("-----BEGIN CERTIFICATE-----"):pem.index("-----END CERTIFICATE-----") + 25] + "\n"
    bundle = tmp_path / "ca.pem"
    bundle.write_text(pem)
    virtual = S3BlobStore(tmp_path / "a", bucket="pacs", endpoint_url="https://s3.example.org:9000",
                          access_key_id="a", secret_access_key="b", addressing_style="virtual", verify_tls=str(bundle))
    assert virtual._store.config["endpoint"] == "https://pacs.s3.example.org:9000"  # the bucket in the host name
    assert virtual._store.client_options["root_certificate"] in (pem, pem.encode())
    def flag(value: Any) -> bool:  # obstore hands options back as strings
        return str(value).lower() == "true"

    assert not flag(virtual._store.client_options["allow_http"])
    path = S3BlobStore(tmp_path / "b", bucket="pacs", endpoint_url="http://127.0.0.1:9000/", access_key_id="a",
                       secret_access_key="b", verify_tls=False, session_token="t", region="eu-central-1")
    assert path._store.config["endpoint"] == "http://127.0.0.1:9000"  # auto: path style on a custom endpoint
    assert not flag(path._store.config["virtual_hosted_style_request"])
    assert path._store.config["session_token"] == "t" and path._store.config["region"] == "eu-central-1"
    assert flag(path._store.client_options["allow_invalid_certificates"])
    assert flag(path._store.client_options["allow_http"])
    with pytest.raises(S3ConfigError, match="verify_tls: no CA bundle"):
        S3BlobStore(tmp_path / "c", bucket="pacs", verify_tls=str(tmp_path / "missing.pem"))
    bundle.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    with pytest.raises(S3ConfigError, match="the S3 client refused these options"):
        S3BlobStore(tmp_path / "c", bucket="pacs", verify_tls=str(bundle))
    with pytest.raises(S3ConfigError, match="at least 5"):
        S3BlobStore(tmp_path / "c", bucket="pacs", part_size_mb=1)


def test_the_body_is_signed_over_plain_http_only(tmp_path: Path, s3_options: dict[str, Any]) -> None:
    """SigV4's hash of the body (0.3 ms per 512 KiB) is skipped over TLS, whose records carry their own
    integrity check, and kept over plain HTTP; either way the object store takes the PUT and the
    bytes read back are the bytes sent (SeaweedFS verifies signed payloads, accepts UNSIGNED-PAYLOAD)."""
    def unsigned(store: S3BlobStore) -> bool:
        return str(store._store.config.get("unsigned_payload")).lower() == "true"

    assert unsigned(S3BlobStore(tmp_path / "a", bucket="pacs", endpoint_url="https://s3.example.org",
                                access_key_id="a", secret_access_key="b"))
    assert unsigned(S3BlobStore(tmp_path / "b", bucket="pacs", access_key_id="a", secret_access_key="b"))  # AWS
    with pytest.raises(S3ConfigError, match="sign_payload"):
        S3BlobStore(tmp_path / "c", bucket="pacs", sign_payload="sometimes")
    data = os.urandom(600 * 1024)
    for sign in ("auto", False, True):
        store = S3BlobStore(tmp_path / f"s-{sign}", **s3_options, sign_payload=sign)
        assert store.sign_payload is (sign != False)  # noqa: E712 - "auto" over http: signed
        assert unsigned(store) is (sign == False)  # noqa: E712
        key = store.put_file(_file(tmp_path, data))
        with store.open(key) as fh:
            assert hashlib.sha256(fh.read()).digest() == hashlib.sha256(data).digest()


def test_layout_is_the_filesystem_stores_under_the_prefix(tmp_path: Path, s3_options: dict[str, Any], seaweed: Any) -> None:
    store = S3BlobStore(tmp_path / "node", **s3_options)
    key = store.put_file(_file(tmp_path, b"data"))
    prefix = s3_options["prefix"]
    client = seaweed.client()
    listed = [o["Key"] for o in client.list_objects_v2(Bucket="pacskit-test", Prefix=prefix)["Contents"]]
    assert listed == [f"{prefix}{key[:2]}/{key[2:4]}/{key}.dcm"]
    # foreign and misplaced objects are not keys; neither are other prefixes' blobs
    client.put_object(Bucket="pacskit-test", Key=f"{prefix}notes.txt", Body=b"x")
    client.put_object(Bucket="pacskit-test", Key=f"{prefix}{key[:2]}/{key[2:4]}/{'f' * 32}.dcm", Body=b"x")
    other = S3BlobStore(tmp_path / "other", **{**s3_options, "prefix": prefix.rstrip("/") + "-other"})
    other.put_file(_file(tmp_path, b"elsewhere"))
    assert list(store.iter_keys()) == [key]


def test_ranged_reads_fetch_only_what_is_read(tmp_path: Path, recorded_options: dict[str, Any], recorder: Any) -> None:
    data = os.urandom(3 * MB + 123)
    store = S3BlobStore(tmp_path / "node", **recorded_options, read_block_kb=256)
    key = store.put_file(_file(tmp_path, data))
    calls = recorder
    calls.clear()
    with store.open(key) as fh:  # the first block, with the size (Content-Range): no HEAD
        assert calls.ranges() == [f"bytes=0-{256 * 1024 - 1}"] and "HeadObject" not in calls.names()
        fh.seek(2 * MB + 5)
        assert fh.read(100) == data[2 * MB + 5 : 2 * MB + 105]  # a frame: one small ranged GET
        assert calls.ranges()[1:] == [f"bytes={2 * MB + 5}-{2 * MB + 5 + 256 * 1024 - 1}"]
        fh.seek(-10, os.SEEK_END)
        assert fh.read() == data[-10:]
        fh.seek(0)
        assert fh.read() == data  # the first block from memory, the rest in one streamed GET
        assert fh.tell() == len(data) and fh.read(5) == b""
    assert calls.ranges()[-1] == f"bytes={256 * 1024}-{len(data) - 1}"
    small = store.put_file(_file(tmp_path, b"x" * 1000))
    before = len(calls.ranges())
    with store.open(small) as fh:  # an instance smaller than a block: one GET in all
        assert fh.read() == b"x" * 1000
    assert len(calls.ranges()) == before + 1
    store.delete(small)
    store.delete(key)
    with pytest.raises(BlobNotFound):
        store.open(key)


def test_large_files_go_up_in_parts(tmp_path: Path, recorded_options: dict[str, Any], recorder: Any) -> None:
    data = os.urandom(23 * MB)
    store = S3BlobStore(tmp_path / "node", **recorded_options, multipart_threshold_mb=5, part_size_mb=5)
    calls = recorder
    src = _file(tmp_path, data)
    key = store.put_file(src)
    assert not os.path.exists(src)
    names = calls.names()
    assert names.count("CreateMultipartUpload") == 1 and names.count("UploadPart") == 5
    assert names.count("CompleteMultipartUpload") == 1
    assert store.size(key) == len(data)
    with store.open(key) as fh:
        assert hashlib.sha256(fh.read()).digest() == hashlib.sha256(data).digest()


def test_a_failed_upload_leaves_nothing(tmp_path: Path, recorded_options: dict[str, Any], recorder: Any,
                                       s3_options: dict[str, Any], seaweed: Any) -> None:
    store = S3BlobStore(tmp_path / "node", **recorded_options, multipart_threshold_mb=5, part_size_mb=5,
                        max_concurrency=1, retries=0)
    parts = iter(range(1, 100))
    recorder.fail = lambda r: r.operation == "UploadPart" and next(parts) == 3  # the third part: a 500
    src = _file(tmp_path, os.urandom(16 * MB))
    with pytest.raises(S3Error, match="500"):
        store.put_file(src)
    assert "AbortMultipartUpload" in recorder.names()
    assert list(store.iter_keys()) == []
    uploads = seaweed.client().list_multipart_uploads(Bucket="pacskit-test", Prefix=s3_options["prefix"])
    assert not uploads.get("Uploads"), "the multipart upload was aborted"


def test_a_put_whose_answer_was_lost_is_retried_and_succeeds(tmp_path: Path, recorded_options: dict[str, Any],
                                                             recorder: Any) -> None:
    """The store wrote the object but the answer was lost: the client's retry is refused as a second
    write of the key (If-None-Match), and the store sees that the object is this very file."""
    store = S3BlobStore(tmp_path / "node", **recorded_options, retries=2)
    first = iter([True])
    recorder.lose_answer = lambda r: r.operation == "PutObject" and next(first, False)
    key = new_key()
    assert store.put_file(_file(tmp_path, b"the bytes"), key_hint=key) == key
    assert recorder.names().count("PutObject") == 2, recorder.names()
    with store.open(key) as fh:
        assert fh.read() == b"the bytes"
    # another body under an existing key is refused
    with pytest.raises(FileExistsError):
        store.put_file(_file(tmp_path, b"other bytes"), key_hint=key)
    with pytest.raises(FileExistsError):
        store.put_bytes(b"the bytes!", key_hint=key)


def test_server_side_copy(tmp_path: Path, recorded_options: dict[str, Any], recorder: Any) -> None:
    store = S3BlobStore(tmp_path / "node", **recorded_options)
    key = store.put_file(_file(tmp_path, b"original bytes"))
    calls = recorder
    calls.clear()
    copy = store.copy(key)
    assert copy != key and "CopyObject" in calls.names() and "PutObject" not in calls.names()
    with store.open(copy) as fh:
        assert fh.read() == b"original bytes"
    with pytest.raises(BlobNotFound):
        store.copy(new_key())


def test_recent_blobs_may_be_another_nodes_ingest(tmp_path: Path, s3_options: dict[str, Any]) -> None:
    key = S3BlobStore(tmp_path / "a", **s3_options).put_file(_file(tmp_path, b"x"))
    assert S3BlobStore(tmp_path / "b", **s3_options).maybe_in_flight(key)
    assert not S3BlobStore(tmp_path / "b", **s3_options, in_flight_grace=0).maybe_in_flight(key)
    assert not S3BlobStore(tmp_path / "b", **s3_options).maybe_in_flight(new_key())


def test_purge_aborts_only_stale_multipart_uploads(tmp_path: Path, s3_options: dict[str, Any], seaweed: Any) -> None:
    client = seaweed.client()
    name = f"{s3_options['prefix']}ab/cd/{'ab' * 16}.dcm"
    client.create_multipart_upload(Bucket="pacskit-test", Key=name)
    young = S3BlobStore(tmp_path / "node", **s3_options)
    assert young.purge_temp() == 0, "an upload younger than the grace may be another node's"
    stale = S3BlobStore(tmp_path / "node", **s3_options, in_flight_grace=0)
    assert stale.purge_temp() == 1
    assert not client.list_multipart_uploads(Bucket="pacskit-test", Prefix=s3_options["prefix"]).get("Uploads")


# --- the data store's crash flow on S3 ----------------------------------------------------------------

CRASH = textwrap.dedent('''
    import os, sys
    from pacskit.store import DataStore
    from pacskit.store.s3 import S3BlobStore
    import json
    options = json.loads(sys.argv[3])
    store = DataStore.open(sys.argv[1], S3BlobStore(sys.argv[2], **options))
    def crash(*args, **kwargs):
        os._exit(9)  # killed after the upload was acknowledged, before the index commit
    store.index.run_write_shared = crash
    store.ingest(sys.argv[4])
''')


def test_a_crash_between_upload_and_commit_is_found_and_cleaned(tmp_path: Path, s3_options: dict[str, Any]) -> None:
    import json

    from pacskit.testing.synth import make_instance

    url = f"sqlite:///{tmp_path / 'index.db'}"
    node = tmp_path / "node"
    instance = make_instance(tmp_path / "one.dcm", rows=8, cols=8)
    proc = subprocess.run([sys.executable, "-c", CRASH, url, str(node), json.dumps(s3_options), str(instance)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 9, proc.stderr
    (key,) = S3BlobStore(node, **s3_options).iter_keys()  # the object store acknowledged it

    # this node's check: the key is in its journal, an ingest a crash interrupted (not an orphan)
    with DataStore.open(url, S3BlobStore(node, **s3_options), recover=False) as store:
        report = store.check()
        assert report.ok and report.in_flight == 1, report
    # another node (its own local folder, so not this journal): within the grace, maybe an ingest of
    # the crashed node still committing (counted in flight); after it, an orphan
    with DataStore.open(url, S3BlobStore(tmp_path / "b", **s3_options), recover=False) as store:
        report = store.check()
        assert report.ok and report.in_flight == 1, report
    with DataStore.open(url, S3BlobStore(tmp_path / "b", **s3_options, in_flight_grace=0), recover=False) as store:
        report = store.check()
        assert [(p.kind, p.blob_key) for p in report.problems] == [("orphan-blob", key)]
    # deleting orphans respects the grace: within it, the object may be an ingest in flight
    with DataStore.open(url, S3BlobStore(tmp_path / "b", **s3_options), recover=False) as store:
        assert store.delete_orphans(report) == [] and store.blobs.exists(key)
    # the crashed node starts again: recovery deletes the never-acknowledged object
    with DataStore.open(url, S3BlobStore(node, **s3_options, in_flight_grace=0)) as store:
        assert not store.blobs.exists(key)
        report = store.check()
        assert report.ok and report.in_flight == 0 and report.blobs_seen == 0, report


def test_an_unreachable_object_store_fails_the_ingest_and_keeps_nothing(tmp_path: Path) -> None:
    from pacskit.testing.peers import free_port
    from pacskit.testing.synth import make_instance

    closed = free_port()  # nothing listens there
    blobs = S3BlobStore(tmp_path / "node", bucket="pacs", endpoint_url=f"http://127.0.0.1:{closed}",
                        access_key_id="k", secret_access_key="s", region="us-east-1", addressing_style="path",
                        retries=1, connect_timeout=2)
    assert blobs.purge_temp() == 0, "start-up goes on (each store then fails with the reason)"
    with DataStore.open(f"sqlite:///{tmp_path / 'index.db'}", blobs) as store:
        received = Path(blobs.temp_dir) / "rx.part"
        make_instance(received, rows=8, cols=8)
        with pytest.raises(S3Error, match=r"s3://pacs/.*\.dcm: cannot connect to the object store"):
            store.ingest(str(received))
        assert not received.exists(), "the received file is consumed"
        assert store.count("instances") == 0
        with pytest.raises(S3Error, match="listing s3://pacs/: cannot connect"):
            store.check()


def test_reindex_rebuilds_the_index_from_the_bucket(tmp_path: Path, s3_options: dict[str, Any]) -> None:
    from pacskit.testing.synth import make_instance

    url = f"sqlite:///{tmp_path / 'index.db'}"
    with DataStore.open(url, S3BlobStore(tmp_path / "node", **s3_options)) as store:
        uids = {store.ingest(str(make_instance(tmp_path / "in" / f"{i}.dcm", rows=8, cols=8))).sop_instance_uid
                for i in range(3)}
        orphan = store.blobs.put_file(str(make_instance(tmp_path / "in" / "orphan.dcm", rows=8, cols=8)))
        report = store.reindex()
        assert report.indexed == 4 and not report.skipped, report
        assert store.count("instances") == 4 and uids < {r[1] for r in store._iter_rows()}
        assert store.index.is_blob_referenced(orphan), "the orphan was adopted"
        assert store.check().ok


def test_a_wado_frame_is_read_with_ranged_gets(tmp_path: Path, recorded_options: dict[str, Any], recorder: Any) -> None:
    """WADO-RS frames (pacskit.addins.dicomweb.wado.read_frames) seek in the blob: on S3 they fetch the
    header and the frame, not the instance."""
    from pydicom import dcmread

    from pacskit.addins.dicomweb.wado import read_frames
    from pacskit.store.query.retrieve import RetrieveItem
    from pacskit.testing.synth import make_large_instance

    source = make_large_instance(tmp_path / "in" / "multi.dcm", 20 * MB, rows=512, cols=512)
    ds = dcmread(source)
    frame_bytes = 512 * 512 * 2
    expected = ds.PixelData[29 * frame_bytes : 30 * frame_bytes]
    with DataStore.open(f"sqlite:///{tmp_path / 'index.db'}",
                        S3BlobStore(tmp_path / "node", **recorded_options, read_block_kb=256)) as store:
        result = store.ingest(str(source))
        item = RetrieveItem(result.instance_id, result.blob_key, ds.SOPClassUID, ds.SOPInstanceUID,
                            ds.file_meta.TransferSyntaxUID, result.size)
        calls = recorder
        calls.clear()
        frames = read_frames(store, item, [30], True, [])
        assert frames.data == [expected]
        fetched = 0
        for spec in calls.ranges():
            start, _, end = spec.removeprefix("bytes=").partition("-")
            fetched += int(end) - int(start) + 1
        assert fetched < 2 * MB, f"{fetched} bytes fetched for one {frame_bytes}-byte frame of a {result.size}-byte blob"


def test_check_on_an_unreachable_object_store_is_one_line(tmp_path: Path) -> None:
    import tomli_w

    from pacskit.testing.peers import free_port

    srv = tmp_path / "srv"
    (srv / "data").mkdir(parents=True)
    options = {"bucket": "pacs", "endpoint_url": f"http://127.0.0.1:{free_port()}", "access_key_id": "k",
               "secret_access_key": "s", "region": "us-east-1", "retries": 1, "connect_timeout": 2}
    (srv / "server.toml").write_text(tomli_w.dumps({"ae_title": "S3PACS", "data_dir": "data",
                                                    "storage": {"backend": "s3", "options": options}}))
    proc = subprocess.run([sys.executable, "-m", "pacskit", "check", "--data-dir", str(srv), "--quiet"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: cannot check S3BlobStore(s3://pacs/ at http://127.0.0.1:"), proc.stderr
    assert "cannot connect to the object store" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_store_to_an_unreachable_object_store_fails_and_the_server_keeps_serving(tmp_path: Path) -> None:
    import tomli_w

    from pacskit.addins.storage import StorageAddIn
    from pacskit.addins.verification import VerificationAddIn
    from pacskit.client import EchoScu, StoreScu
    from pacskit.config.settings import load_settings
    from pacskit.server.server import Server
    from pacskit.testing.peers import free_port
    from pacskit.testing.synth import make_instance

    srv = tmp_path / "srv"
    srv.mkdir()
    options = {"bucket": "pacs", "endpoint_url": f"http://127.0.0.1:{free_port()}", "access_key_id": "k",
               "secret_access_key": "s", "region": "us-east-1", "retries": 1, "connect_timeout": 2}
    (srv / "server.toml").write_text(tomli_w.dumps({
        "ae_title": "S3PACS", "port": 0, "data_dir": "data", "admin": {"enabled": False},
        "storage": {"backend": "s3", "options": options}}))
    path = make_instance(tmp_path / "in" / "one.dcm", rows=8, cols=8)

    async def run() -> None:
        async with Server(load_settings(srv), addin_classes=[VerificationAddIn, StorageAddIn]) as server:
            remote = f"S3PACS@127.0.0.1:{server.port}"
            report = await StoreScu(remote).store([path])
            assert not report.ok and not report.succeeded, report
            (result,) = report.results  # a failure status that names the cause (the log has it whole)
            assert result.status == 0xC000 and (result.error_comment or "").startswith("S3Error: s3://pacs/"), result
            assert await EchoScu(remote).echo() == 0, "the server keeps serving"
            assert server.store.count("instances") == 0
        left = [p for p in (srv / "data" / "files" / "tmp").iterdir() if p.stat().st_size]
        assert not left, "the received file was not kept"

    asyncio.run(run())


def test_a_received_file_is_emptied_and_kept_as_a_spare_after_its_put(tmp_path: Path, s3_options: dict[str, Any]) -> None:
    """The network engine's temp file (created ahead of need by its pool) is not deleted once its bytes
    are in the object store: emptied, it is the pool's next spare (a name costs more than a file's
    bytes here, see pacskit.net.sinks.TempFiles). Files the pool did not hand out are deleted."""
    from pacskit.net.sinks import Part10FileSink, temp_files

    store = S3BlobStore(tmp_path / "node", **s3_options)
    pool = temp_files(store.temp_dir, spare=2)
    try:
        data = os.urandom(5000)
        sink = Part10FileSink(store.temp_dir, b"", "1.2.840.10008.1.2.1", spare=2)
        sink.write(data)
        received = sink.finish()
        assert received.path is not None
        key = store.put_file(received.path)
        with store.open(key) as fh:
            assert fh.read() == data
        assert os.path.exists(received.path) and os.path.getsize(received.path) == 0
        assert received.path in pool.spare_paths()
        # handed out again, empty, and written from the start
        again = Part10FileSink(store.temp_dir, b"", "1.2.840.10008.1.2.1", spare=2)
        paths = {again._path}
        again.write(b"xy")
        second = again.finish()
        while received.path not in paths:  # the recycled file comes after the spares made before it
            other = Part10FileSink(store.temp_dir, b"", "1.2.840.10008.1.2.1", spare=2)
            paths.add(other._path)
            other.abort()
        assert second.path is not None and Path(second.path).read_bytes() == b"xy"
        # a file from elsewhere is deleted, not kept
        foreign = _file(tmp_path, b"elsewhere")
        store.put_file(foreign)
        assert not os.path.exists(foreign)
        assert len(pool.spare_paths()) <= 2 * pool.spare + 1
    finally:
        pool.close()
