"""An S3 storage area for Orthanc, run by Orthanc's Python plugin (Debian ``orthanc-python``).

Not imported by pacskit: :func:`pacskit.testing.peers.orthanc_s3_storage` points an Orthanc's
``PythonScript`` at this file. It exists because Orthanc's own S3 plugin (orthanc-object-storage,
built on the AWS C++ SDK) is not packaged in Debian, and a scale-out comparison is only like for like
when both archives keep their files in the same object store. Orthanc documents this route
("Implementing a custom storage area" in its Python plugin's book page: ``RegisterStorageArea``,
plugin 3.3 and later) for object stores reachable from Python.

It uses the S3 client pacskit's own store uses (obstore), so neither side is measured with a slower
client: one ``PutObject`` per attachment, awaited before the callback returns (Orthanc answers a
C-STORE only after its storage area's ``create`` has returned, so an acknowledged instance is in the
object store, as with pacskit), one ``GetObject`` per read, one ``DeleteObject`` per removal.
Objects are named as orthanc-object-storage names them: ``<uuid>.dcm`` for DICOM files,
``<uuid>.json`` for JSON attachments, ``<uuid>.unk`` otherwise, under ``Prefix``.

A storage area registered this way cannot read a byte range, so Orthanc (1.9.1 and later) also stores
each instance's "DICOM until pixel data" (attachment 3) beside it: two PUTs per instance, where
orthanc-object-storage, which reads ranges, makes one. ``UntilPixelDataFolder`` keeps attachment 3 in
a local folder instead: one PUT per instance, the object store's load of the native plugin (for a
benchmark: another Orthanc on the same bucket could not read that attachment).

Configuration, in the Orthanc configuration file::

    "PacskitS3Storage": {"Bucket": "...", "Prefix": "orthanc/", "Endpoint": "http://127.0.0.1:8333",
                         "Region": "us-east-1", "AccessKeyId": "...", "SecretAccessKey": "...",
                         "PythonPath": ["<site-packages holding obstore>"],
                         "UntilPixelDataFolder": null}
"""

from __future__ import annotations

import json
import os
import sys

import orthanc  # type: ignore[import-not-found]  # provided by Orthanc's Python plugin

_CONFIG = json.loads(orthanc.GetConfiguration())["PacskitS3Storage"]
sys.path[:0] = [p for p in _CONFIG.get("PythonPath", []) if p not in sys.path]

import obstore  # noqa: E402  # after PythonPath: Orthanc's embedded interpreter has no venv of its own
from obstore.store import S3Store  # noqa: E402

_PREFIX = _CONFIG.get("Prefix", "")
_STORE = S3Store(
    _CONFIG["Bucket"],
    config={"endpoint": _CONFIG["Endpoint"], "region": _CONFIG.get("Region", "us-east-1"),
            "access_key_id": _CONFIG["AccessKeyId"], "secret_access_key": _CONFIG["SecretAccessKey"],
            "virtual_hosted_style_request": False},
    client_options={"allow_http": _CONFIG["Endpoint"].startswith("http:")},
)
_EXTENSIONS = {orthanc.ContentType.DICOM: ".dcm", orthanc.ContentType.DICOM_AS_JSON: ".json"}
_UNTIL_PIXEL_DATA = 3  # OrthancPluginContentType_DicomUntilPixelData
_LOCAL = _CONFIG.get("UntilPixelDataFolder")


def _key(uuid: str, content_type: int) -> str:
    return f"{_PREFIX}{uuid}{_EXTENSIONS.get(content_type, '.unk')}"


def _local(uuid: str, content_type: int) -> str | None:
    if _LOCAL is None or content_type != _UNTIL_PIXEL_DATA or not all(c in "0123456789abcdef-" for c in uuid):
        return None
    return os.path.join(_LOCAL, uuid)


def _create(uuid: str, content_type: int, data: bytes) -> None:
    if (path := _local(uuid, content_type)) is not None:
        with open(path, "wb") as file:
            file.write(data)
        return
    obstore.put(_STORE, _key(uuid, content_type), data)


def _read(uuid: str, content_type: int) -> bytes:
    if (path := _local(uuid, content_type)) is not None:
        with open(path, "rb") as file:
            return file.read()
    return bytes(obstore.get(_STORE, _key(uuid, content_type)).bytes())


def _remove(uuid: str, content_type: int) -> None:
    if (path := _local(uuid, content_type)) is not None:
        os.remove(path)
        return
    obstore.delete(_STORE, _key(uuid, content_type))


orthanc.RegisterStorageArea(_create, _read, _remove)
