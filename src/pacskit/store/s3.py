"""The S3 blob store: Part 10 files as objects of an S3-compatible object store (``[storage] backend = "s3"``).

Several pacskit nodes share one bucket (and one index database); each node keeps a small local folder
(``[storage] path``) for what is per node on purpose: the temp files the network engine receives
into and the ingest crash journal.

* **Layout**: ``<prefix><ab>/<cd>/<key>.dcm``, the filesystem store's layout, so a folder of blobs and
  a bucket convert into each other with any sync tool (``aws s3 sync files/ s3://bucket/prefix/``).
* **put_file** streams the received temp file to the store (one PUT below ``multipart_threshold``, a
  multipart upload above it, ``part_size`` per part, ``max_concurrency`` parts in flight: memory stays
  flat whatever the instance's size), then deletes the temp file (a file the network engine received
  into is emptied and kept as its next spare instead: :func:`pacskit.net.sinks.recycle_temp`). It returns only once the object
  store acknowledged the write (PUT or CompleteMultipartUpload answered 200): that is the durability
  the C-STORE's Success waits for. A failed upload leaves no object (an incomplete multipart upload is
  aborted; one a crash leaves is aborted by :meth:`S3BlobStore.purge_temp` once older than
  ``in_flight_grace``, and a bucket lifecycle rule should abort them too).
* **open** returns a seekable reader that fetches with ranged GETs (frames read only their bytes).
* **Crash between upload and index commit**: the key is in this node's local journal (the data store
  journals it before the upload), and start-up recovery of that node deletes it. If the node never
  comes back, :meth:`pacskit.store.DataStore.check` lists the bucket and reports the object as an
  ``orphan-blob`` once it is older than ``in_flight_grace`` (younger ones may be another node's ingest
  in flight, whose journal this node cannot read: counted ``in_flight``).

The client is obstore (the Rust ``object_store`` crate behind a thin Python layer): every request of
the hot path (the PUT of each C-STORE, the ranged GETs of each read) costs about a fifth of boto3's
CPU (``benchmarks/s3_clients.py``: 0.5 against 2.6 ms per 100 KB PUT), and it releases the GIL while
it waits. obstore has no call to list or abort incomplete multipart uploads; for those alone (start-up
cleanup, and an upload that failed half-way) boto3 is used, created on first need.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from pacskit.net.sinks import recycle_temp
from pacskit.store.blobs import BlobNotFound, DurablePut, new_key, validate_key

log = logging.getLogger("pacskit.store")

_SUFFIX = ".dcm"
_MIB = 1 << 20
#: CopyObject's limit: a larger object is copied in parts (boto3's managed copy)
_COPY_LIMIT = 5 << 30
_NAME = re.compile(r"\A([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{32}|[0-9a-f]{64})\.dcm\Z")
_DNS_BUCKET = re.compile(r"\A[a-z0-9][a-z0-9-]{1,61}[a-z0-9]\Z")
_CONTENT_TYPE = "application/dicom"


class S3ConfigError(ValueError):
    """The ``[storage] options`` of the S3 store are incomplete or wrong (one line, the reason)."""


class S3Error(OSError):
    """The object store refused or could not be reached (an ``OSError``, as a disk's failure would be:
    a C-STORE fails, ``check`` reports the blob unreadable). The message names the object and the cause."""


def _brief(exc: BaseException) -> str:
    """One line of an obstore (or botocore) error: obstore's text carries the response body and a
    multi-line debug dump; the first line says what failed, and a refused connection is named."""
    text = str(exc)
    first = text.split("\n", 1)[0].strip()
    if "ConnectionRefused" in text or "kind: Connect" in text:
        return f"cannot connect to the object store ({first})"
    return first


@contextmanager
def _s3_errors(where: str, key: str | None = None) -> Iterator[None]:
    """The clients' errors as :class:`S3Error`; a missing object as :class:`BlobNotFound` when
    ``key`` is given. ``BlobNotFound`` and our own errors pass unchanged."""
    try:
        yield
    except (BlobNotFound, S3Error, FileExistsError):
        raise
    except FileNotFoundError as exc:  # obstore's "not found" (404)
        if key is not None:
            raise BlobNotFound(key) from None
        raise S3Error(f"{where}: {_brief(exc)}") from exc
    except Exception as exc:
        module = type(exc).__module__
        if module.startswith(("obstore", "botocore", "boto3", "s3transfer", "urllib3")):
            raise S3Error(f"{where}: {_brief(exc)}") from exc
        raise


def _not_found(exc: Exception) -> bool:
    """A botocore error that is a 404."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound") or status == 404


def _seconds(value: float) -> str:
    """obstore's duration strings (``"10s"``, ``"500ms"``)."""
    return f"{max(1, round(float(value) * 1000))}ms"


class S3BlobStore:
    """Blobs as objects of an S3-compatible store. Thread-safe (one obstore client, shared).

    ``root`` is this node's local folder: temp files (``root/tmp``) and the ingest journal
    (``root/journal``). Options (``[storage] options`` in server.toml):

    ``bucket`` (required), ``prefix`` (``""``; a ``/`` is added if missing), ``endpoint_url`` (an
    S3-compatible service; AWS when unset), ``region``, ``access_key_id`` / ``secret_access_key`` /
    ``session_token`` (else boto3's usual chain: environment, ``~/.aws``, instance role), ``profile``,
    ``verify_tls`` (``true``, ``false`` or the path of a CA bundle), ``addressing_style`` (``"path"``,
    ``"virtual"`` or ``"auto"``), ``multipart_threshold_mb`` (8), ``part_size_mb`` (8),
    ``max_concurrency`` (4: parts of one upload in flight), ``max_connections`` (32: idle connections
    kept), ``in_flight_grace`` (3600 s: how long an object without an index row may be another node's
    ingest in flight), ``read_block_kb`` (1024: the ranged GET size of readers), ``connect_timeout`` /
    ``read_timeout`` (10 / 60 s), ``retries`` (5), ``sign_payload`` (``"auto"``: the body's SHA-256 is
    part of the request's signature over plain HTTP, not over HTTPS; ``true`` / ``false`` always / never).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        profile: str | None = None,
        verify_tls: bool | str = True,
        addressing_style: str = "auto",
        multipart_threshold_mb: int = 8,
        part_size_mb: int = 8,
        max_concurrency: int = 4,
        max_connections: int = 32,
        in_flight_grace: float = 3600.0,
        read_block_kb: int = 1024,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        retries: int = 5,
        sign_payload: bool | str = "auto",
    ) -> None:
        try:
            import obstore
            from obstore.store import S3Store
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise S3ConfigError("the s3 blob store needs obstore: pip install 'pacskit[s3]'") from exc
        if not isinstance(bucket, str) or not bucket:
            raise S3ConfigError("the s3 blob store needs options.bucket")
        if addressing_style not in ("path", "virtual", "auto"):
            raise S3ConfigError(f"addressing_style must be path, virtual or auto, not {addressing_style!r}")
        if (access_key_id is None) != (secret_access_key is None):
            raise S3ConfigError("give both access_key_id and secret_access_key, or neither")
        if part_size_mb < 5 or multipart_threshold_mb < 5:
            raise S3ConfigError("part_size_mb and multipart_threshold_mb must be at least 5 (the S3 minimum part)")
        if isinstance(verify_tls, str) and not os.path.isfile(verify_tls):
            raise S3ConfigError(f"verify_tls: no CA bundle at {verify_tls}")
        if sign_payload not in (True, False, "auto"):
            raise S3ConfigError(f"sign_payload must be true, false or \"auto\", not {sign_payload!r}")
        self._ob = obstore
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.endpoint_url = endpoint_url
        self.in_flight_grace = float(in_flight_grace)
        self.read_block = max(64, int(read_block_kb)) * 1024
        self.multipart_threshold = multipart_threshold_mb * _MIB
        self.part_size = part_size_mb * _MIB
        self.max_concurrency = max(1, int(max_concurrency))
        self.root = os.path.abspath(os.fspath(root))
        self._temp = os.path.join(self.root, "tmp")
        os.makedirs(self._temp, exist_ok=True)
        # what boto3 (the client of the few calls obstore lacks) is built from
        self._boto_options: dict[str, Any] = dict(
            access_key_id=access_key_id, secret_access_key=secret_access_key, session_token=session_token,
            region=region, profile=profile, endpoint_url=endpoint_url, verify_tls=verify_tls,
            addressing_style=addressing_style, max_connections=max_connections, connect_timeout=connect_timeout,
            read_timeout=read_timeout, retries=retries)
        self._boto: Any = None
        self._boto_lock = threading.Lock()

        virtual = addressing_style == "virtual" or (
            addressing_style == "auto" and endpoint_url is None and _DNS_BUCKET.match(bucket) is not None)
        config: dict[str, Any] = {"virtual_hosted_style_request": virtual}
        if endpoint_url is not None:
            endpoint = endpoint_url.rstrip("/")
            if virtual:  # object_store expects the bucket in a virtual-hosted endpoint's host name
                parts = urlsplit(endpoint)
                endpoint = urlunsplit(parts._replace(netloc=f"{bucket}.{parts.netloc}"))
            config["endpoint"] = endpoint
        if region is not None:
            config["region"] = region
        # SigV4 over a body hashes it with SHA-256 (0.3 ms of CPU per 512 KiB instance, measured):
        # over TLS, whose records carry their own integrity check, "auto" sends UNSIGNED-PAYLOAD as
        # AWS's SDKs do; over plain HTTP the signature is the body's only protection, so it is kept.
        # (The index keeps every blob's SHA-256, which `pacskit check` verifies against the object.)
        self.sign_payload = bool(sign_payload) if sign_payload != "auto" else not (
            endpoint_url is None or endpoint_url.startswith("https:"))
        config["unsigned_payload"] = not self.sign_payload
        client: dict[str, Any] = {
            "allow_http": endpoint_url is not None and endpoint_url.startswith("http:"),
            "connect_timeout": _seconds(connect_timeout),
            "read_timeout": _seconds(read_timeout),
            # a whole request (a part, or a streamed GET of a large instance): generous, stalls are
            # caught by read_timeout
            "timeout": _seconds(max(600.0, 10 * read_timeout)),
            "pool_max_idle_per_host": str(int(max_connections)),
            "default_content_type": _CONTENT_TYPE,
        }
        if verify_tls is False:
            client["allow_invalid_certificates"] = True
        elif isinstance(verify_tls, str):
            client["root_certificate"] = Path(verify_tls).read_text()
        provider = None
        if access_key_id is not None:
            config["access_key_id"] = access_key_id
            config["secret_access_key"] = secret_access_key
            if session_token is not None:
                config["session_token"] = session_token
        else:
            provider = self._boto3_credentials(profile)
        try:
            self._store = S3Store(bucket, config=config, client_options=client,  # type: ignore[arg-type]
                                  retry_config={"max_retries": max(0, int(retries))},
                                  credential_provider=provider)
        except (obstore.exceptions.BaseError, ValueError) as exc:  # e.g. a CA bundle that is not PEM
            raise S3ConfigError(f"the S3 client refused these options: {_brief(exc)}") from exc

    @staticmethod
    def _boto3_credentials(profile: str | None) -> Any:
        """boto3's credential chain (environment, ``~/.aws``, SSO, instance role) for obstore, whose own
        chain lacks the shared files and profiles; ``None`` (obstore's chain: environment, web
        identity, container and instance metadata) when boto3 is not installed or finds nothing."""
        try:
            import boto3
            from obstore.auth.boto3 import Boto3CredentialProvider
        except ImportError:
            if profile is not None:
                raise S3ConfigError("options.profile needs boto3: pip install 'pacskit[s3]'") from None
            return None
        try:
            session = boto3.session.Session(profile_name=profile)
        except Exception as exc:  # botocore's ProfileNotFound
            raise S3ConfigError(f"profile {profile!r}: {exc}") from exc
        if session.get_credentials() is None:
            if profile is not None:
                raise S3ConfigError(f"profile {profile!r} has no credentials")
            return None
        return Boto3CredentialProvider(session)

    @property
    def client(self) -> Any:
        """A boto3 S3 client on the same bucket, for what obstore cannot do (listing and aborting
        incomplete multipart uploads, copies over 5 GiB). Created on first use."""
        with self._boto_lock:
            if self._boto is None:
                self._boto = self._make_boto()
            return self._boto

    def _make_boto(self) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise S3Error(f"{self!r}: this needs boto3 (pip install 'pacskit[s3]')") from exc
        o = self._boto_options
        session = boto3.session.Session(
            aws_access_key_id=o["access_key_id"], aws_secret_access_key=o["secret_access_key"],
            aws_session_token=o["session_token"], region_name=o["region"], profile_name=o["profile"],
        )
        return session.client(
            "s3", endpoint_url=o["endpoint_url"], verify=o["verify_tls"],
            config=Config(s3={"addressing_style": o["addressing_style"]}, max_pool_connections=o["max_connections"],
                          connect_timeout=o["connect_timeout"], read_timeout=o["read_timeout"],
                          retries={"max_attempts": o["retries"], "mode": "standard"}),
        )

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3BlobStore(s3://{self.bucket}/{self.prefix}{where})"

    # names -------------------------------------------------------------------------------------------

    def object_name(self, key: str) -> str:
        """The object's name in the bucket (the filesystem store's relative path, after the prefix)."""
        validate_key(key)
        return f"{self.prefix}{key[:2]}/{key[2:4]}/{key}{_SUFFIX}"

    def _where(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    # optional capabilities ----------------------------------------------------------------------------

    @property
    def temp_dir(self) -> str:
        """This node's local folder for received files (uploaded by :meth:`put_file`)."""
        return self._temp

    @property
    def journal_dir(self) -> str:
        """This node's ingest journal (local: recovery at this node's start deletes its interrupted uploads)."""
        folder = os.path.join(self.root, "journal")
        os.makedirs(folder, exist_ok=True)
        return folder

    def size(self, key: str) -> int:
        return int(self._head(key)["size"])

    def maybe_in_flight(self, key: str) -> bool:
        """True while the object is younger than ``in_flight_grace``: another node (whose journal this
        one cannot read) may still be committing its index row, so it is not reported as an orphan."""
        try:
            modified: dt.datetime = self._head(key)["last_modified"]
        except BlobNotFound:
            return False
        age = (dt.datetime.now(dt.UTC) - modified).total_seconds()
        return age < self.in_flight_grace

    def purge_temp(self) -> int:
        """Delete this node's leftover temp files and abort multipart uploads under the prefix that
        were started more than ``in_flight_grace`` ago (a crash during an upload; younger ones may be
        another node's uploads in flight). Returns how many were removed."""
        removed = 0
        for name in os.listdir(self._temp):
            try:
                os.unlink(os.path.join(self._temp, name))
                removed += 1
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                pass
        try:
            removed += self._abort_uploads(self.prefix, older_than=self.in_flight_grace)
        except Exception as exc:  # noqa: BLE001 - the store unreachable now: each C-STORE reports it
            log.warning("%r: cannot list incomplete multipart uploads (left for later): %s", self, _brief(exc))
        return removed

    def _abort_uploads(self, prefix: str, *, older_than: float | None = None, exact: bool = False) -> int:
        """Abort the incomplete multipart uploads under ``prefix`` (only of that very object with
        ``exact``; only those started more than ``older_than`` seconds ago when given). boto3: obstore
        has no ListMultipartUploads."""
        now = dt.datetime.now(dt.UTC)
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for upload in page.get("Uploads", ()) or ():
                if exact and upload["Key"] != prefix:
                    continue
                if older_than is not None and (now - upload["Initiated"]).total_seconds() < older_than:
                    continue
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted += 1
        return aborted

    # BlobStore ---------------------------------------------------------------------------------------

    def put_file(self, src: str, key_hint: str | None = None) -> str:
        """Upload ``src`` (streamed; multipart above the threshold) and delete it; returns once the
        object store acknowledged the write. ``FileExistsError`` if ``key_hint`` names an existing blob."""
        src = os.fspath(src)
        key = validate_key(key_hint) if key_hint is not None else new_key()
        name = self.object_name(key)
        if os.path.getsize(src) < self.multipart_threshold:
            # one conditional PutObject (If-None-Match: *): the store refuses an existing key, so no
            # HEAD first; obstore reads the file itself (no Python buffer per instance)
            self._put(name, key, Path(src))
        else:
            if key_hint is not None and self.exists(key):  # a multipart upload cannot be conditional
                raise FileExistsError(f"blob {key} already exists")
            self._upload(src, name)
        if not recycle_temp(src):  # a received file: emptied and kept for the next C-STORE
            try:
                os.unlink(src)
            except FileNotFoundError:
                pass
        return key

    def start_put(self, src: str, key_hint: str | None = None) -> DurablePut:
        """:meth:`put_file`: the object store's acknowledgement is its durability, so the put is
        complete when this returns (the data store's index transaction then follows it)."""
        return DurablePut(self.put_file(src, key_hint))

    def _put(self, name: str, key: str, body: Path | bytes) -> None:
        """One conditional PUT: ``FileExistsError`` if the object exists, unless the key is a random
        one (32 digits, :func:`new_key`: nobody else writes it) and the object is this very body: a
        PUT whose answer was lost (the connection dropped after the store had written it) is retried
        by the client, and the store then refuses the retry as a second write of the key. A 64-digit
        key may be a content hash another writer also chose: refused as the protocol says."""
        with _s3_errors(self._where(name)):
            try:
                self._ob.put(self._store, name, body, mode="create", use_multipart=False)
            except self._ob.exceptions.AlreadyExistsError as exc:
                if len(key) != 32 or not self._holds(name, body):
                    raise FileExistsError(f"blob {key} already exists") from exc
                log.info("%s: a retried PUT found its own first attempt written", self._where(name))

    def _holds(self, name: str, body: Path | bytes) -> bool:
        """The object ``name`` is ``body``: same size, and its ETag (a single PUT's is the body's
        MD5, unless the store encrypts with KMS) is the body's MD5."""
        import hashlib

        meta = self._ob.head(self._store, name)
        data = body.read_bytes() if isinstance(body, Path) else body
        etag = str(meta.get("e_tag") or "").strip('"')
        return int(meta["size"]) == len(data) and etag == hashlib.md5(data, usedforsecurity=False).hexdigest()

    def _upload(self, src: str, name: str) -> None:
        """A multipart upload of ``part_size`` parts read from the open file as they go
        (``max_concurrency`` in flight: memory flat whatever the size). obstore does not abort the
        upload when a part fails, so it is aborted here (the key is new: any upload of it is ours)."""
        try:
            with _s3_errors(self._where(name)), open(src, "rb") as body:
                self._ob.put(self._store, name, body, use_multipart=True, chunk_size=self.part_size,
                             max_concurrency=self.max_concurrency)
        except BaseException:
            try:
                self._abort_uploads(name, exact=True)
            except Exception as exc:  # noqa: BLE001 - purge_temp aborts it once older than the grace
                log.warning("%r: cannot abort the failed multipart upload of %s (left for later): %s",
                            self, name, _brief(exc))
            raise

    def put_bytes(self, data: bytes, key_hint: str | None = None) -> str:
        """Store ``data`` as a new blob (one PUT, refused by the store if the key exists)."""
        key = validate_key(key_hint) if key_hint is not None else new_key()
        self._put(self.object_name(key), key, bytes(data))
        return key

    def _head(self, key: str) -> dict[str, Any]:
        name = self.object_name(key)
        with _s3_errors(self._where(name), key):
            return self._ob.head(self._store, name)  # type: ignore[return-value]

    def open(self, key: str) -> BinaryIO:
        """A seekable reader: sequential reads fetch ``read_block_kb`` at a time, a seek then a read
        (a frame) fetches only from there; ``read()`` of the rest is one streamed GET."""
        name = self.object_name(key)
        # The first block comes with the size (Content-Range): no HEAD before reading, and an instance
        # smaller than a block is read in this one request.
        with _s3_errors(self._where(name), key):
            try:
                result = self._ob.get(self._store, name, options={"range": (0, self.read_block)})
            except self._ob.exceptions.GenericError as exc:
                if "InvalidRange" not in str(exc):  # an empty object has no byte 0
                    raise
                result = None
            if result is None:
                size, first = self.size(key), b""
            else:
                size, first = int(result.meta["size"]), bytes(result.bytes())
        raw = _RangedReader(self, name, key, size, first)
        return io.BufferedReader(raw, buffer_size=self.read_block)

    def path(self, key: str) -> None:
        validate_key(key)
        return None

    def delete(self, key: str) -> None:
        name = self.object_name(key)
        with _s3_errors(self._where(name)):
            self._ob.delete(self._store, name)  # S3: no error if absent

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except BlobNotFound:
            return False
        return True

    def copy(self, key: str) -> str:
        """A server-side copy of a blob under a new key (no bytes pass through this process):
        CopyObject, or boto3's copy in parts for an object over CopyObject's 5 GiB."""
        new = new_key()
        source, target = self.object_name(key), self.object_name(new)
        if self.size(key) > _COPY_LIMIT:
            with _s3_errors(self._where(source), key):
                try:
                    self.client.copy({"Bucket": self.bucket, "Key": source}, self.bucket, target)
                except Exception as exc:
                    if _not_found(exc):
                        raise BlobNotFound(key) from None
                    raise
            return new
        with _s3_errors(self._where(source), key):
            self._ob.copy(self._store, source, target)
        return new

    def iter_keys(self) -> Iterator[str]:
        """Every blob under the prefix (a listing of the bucket); other objects are ignored."""
        where = f"listing s3://{self.bucket}/{self.prefix}"
        with _s3_errors(where):
            pages = iter(self._ob.list(self._store, prefix=self.prefix or None, chunk_size=1000))
        while True:
            with _s3_errors(where):
                page = next(pages, None)
            if page is None:
                return
            for obj in page:
                m = _NAME.match(obj["path"][len(self.prefix):])
                if m and m.group(3)[:2] == m.group(1) and m.group(3)[2:4] == m.group(2):
                    yield m.group(3)


class _RangedReader(io.RawIOBase):
    """A read-only raw file over one object: each ``readinto`` is one ranged GET; ``readall`` one
    GET of the rest."""

    def __init__(self, store: S3BlobStore, name: str, key: str, size: int, first: bytes = b"") -> None:
        super().__init__()
        self._blobs, self._name, self._key, self._size = store, name, key, size
        self._pos = 0
        self._first = first  # the object's first bytes, fetched by open() with the size

    def _from_first(self, want: int) -> bytes:
        """Up to ``want`` bytes at the position from the prefetched first block (b"" past it)."""
        if self._pos >= len(self._first):
            return b""
        return self._first[self._pos:self._pos + want]

    @property
    def name(self) -> str:
        """``s3://bucket/object`` (readers of file objects name them in messages)."""
        return self._blobs._where(self._name)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        pos = base + offset
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def _get(self, start: int, end: int) -> Any:
        """Bytes ``start`` to ``end`` (exclusive) of the object, in one ranged GET."""
        blobs = self._blobs
        with _s3_errors(self.name, self._key):
            data = blobs._ob.get_range(blobs._store, self._name, start=start, end=end)
        if len(data) != end - start:
            raise OSError(f"blob {self._key}: object store sent {len(data)} of {end - start} bytes")
        return data

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        cached = self._from_first(want)
        if cached:
            memoryview(buffer).cast("B")[:len(cached)] = cached
            self._pos += len(cached)
            return len(cached)
        data = self._get(self._pos, self._pos + want)
        memoryview(buffer).cast("B")[:want] = memoryview(data)
        self._pos += want
        return want

    def readall(self) -> bytes:
        if self._pos >= self._size:
            return b""
        head = self._from_first(self._size - self._pos)
        self._pos += len(head)
        if self._pos >= self._size:
            return head
        rest = self._get(self._pos, self._size)
        self._pos = self._size
        return b"".join((head, memoryview(rest)))


def open_s3_blob_store(root: Path, **options: Any) -> S3BlobStore:
    """The ``"s3"`` backend's factory: :class:`S3BlobStore` over ``root`` (the local folder) with the
    ``[storage] options`` of server.toml."""
    return S3BlobStore(root, **options)


__all__ = ["S3BlobStore", "S3ConfigError", "S3Error", "open_s3_blob_store"]
