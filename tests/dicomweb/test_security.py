"""DICOMweb security: registry credentials (Bearer JWT validated as DICOM User Identity, HTTP Basic),
allowed services, CORS for browser viewers, the audit trail, the plain-HTTP-off-loopback refusal."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from pacskit.audit.messages import AuditMessage, AuditSource
from pacskit.config.passwords import hash_password
from pacskit.config.settings import load_settings
from pacskit.server.server import Server, ServerError
from pacskit.testing.dicomweb import ADDINS, Running, keep_copies, start_server, write_folder
from pacskit.testing.synth import make_series

SECRET = "a-shared-secret-of-at-least-32-bytes!!"
STUDY = "1.2.826.0.1.3680043.8.498.800"
REGISTRY = f"""
[[ae]]
title = "VIEWER"
host = "127.0.0.1"
port = 104
user_identity = "jwt"
jwt_algorithm = "HS256"
jwt_key = "{SECRET}"
username = "viewer"
allowed_services = ["find"]

[[ae]]
title = "UPLOADER"
host = "127.0.0.1"
port = 104
user_identity = "password"
username = "up"
password_hash = "{hash_password('s3cret')}"
"""


class Sink:
    source = AuditSource("TEST")

    def __init__(self) -> None:
        self.messages: list[AuditMessage] = []

    def emit(self, message: AuditMessage) -> bool:
        self.messages.append(message)
        return True


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Running]:
    folder = write_folder(tmp_path, 'auth = "registry"\ncors_origins = ["http://viewer.example"]\n', ae_titles=REGISTRY)
    with start_server(folder) as running:
        running.ingest(keep_copies(tmp_path, make_series(tmp_path / "s", 1, 8, 8, study_uid=STUDY)))
        yield running


def _token(sub: str = "viewer", exp: float | None = None, key: str = SECRET) -> str:
    return jwt.encode({"sub": sub, "exp": int(exp if exp is not None else time.time() + 300)}, key, algorithm="HS256")


def test_no_or_bad_credentials_are_401(secured: Running) -> None:
    with httpx.Client(base_url=secured.url) as c:
        r = c.get("/studies")
        assert r.status_code == 401 and "authentication required" in r.text and "Bearer" in r.headers["www-authenticate"]
        assert c.get("/studies", headers={"Authorization": f"Bearer {_token(exp=time.time() - 10)}"}).status_code == 401
        assert c.get("/studies", headers={"Authorization": f"Bearer {_token(key='x' * 40)}"}).status_code == 401
        assert c.get("/studies", headers={"Authorization": f"Bearer {_token(sub='mallory')}"}).status_code == 401
        bad = base64.b64encode(b"up:wrong").decode()
        assert c.get("/studies", headers={"Authorization": f"Basic {bad}"}).status_code == 401


def test_a_token_gives_the_entry_s_services_only(secured: Running) -> None:
    with httpx.Client(base_url=secured.url, headers={"Authorization": f"Bearer {_token()}"}) as c:
        r = c.get("/studies")
        assert r.status_code == 200 and len(r.json()) == 1
        r = c.get(f"/studies/{STUDY}")
        assert r.status_code == 403 and "VIEWER may not use get" in r.text


def test_basic_over_loopback(secured: Running, tmp_path: Path) -> None:
    good = base64.b64encode(b"up:s3cret").decode()
    with httpx.Client(base_url=secured.url, headers={"Authorization": f"Basic {good}"}) as c:
        assert c.get(f"/studies/{STUDY}/metadata").status_code == 200
        assert c.get("/studies").status_code == 200
        # a caller off loopback (as the trusted local proxy reports it) over plain HTTP: refused
        # (tests/dicomweb/test_https.py: the same caller over TLS is let in)
        r = c.get("/studies", headers={"X-Forwarded-For": "203.0.113.5"})
        assert r.status_code == 401 and "only over TLS" in r.text


def test_cors_preflight_and_answer(secured: Running) -> None:
    with httpx.Client(base_url=secured.url) as c:
        pre = c.options("/studies", headers={"Origin": "http://viewer.example", "Access-Control-Request-Method": "GET",
                                             "Access-Control-Request-Headers": "authorization"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://viewer.example"
        r = c.get("/studies", headers={"Origin": "http://viewer.example", "Authorization": f"Bearer {_token()}"})
        assert r.headers["access-control-allow-origin"] == "http://viewer.example"
        other = c.get("/studies", headers={"Origin": "http://evil.example", "Authorization": f"Bearer {_token()}"})
        assert "access-control-allow-origin" not in other.headers


def test_accesses_and_refusals_are_audited(secured: Running) -> None:
    sink = Sink()
    secured.server.audit.attach(sink, "test")
    good = base64.b64encode(b"up:s3cret").decode()
    with httpx.Client(base_url=secured.url) as c:
        assert c.get(f"/studies/{STUDY}", headers={"Authorization": f"Basic {good}"}).status_code == 200
        assert c.get("/studies").status_code == 401
        assert c.get(f"/studies/{STUDY}", headers={"Authorization": f"Bearer {_token()}"}).status_code == 403
        assert c.get("/studies", params={"PatientID": "X"}, headers={"Authorization": f"Bearer {_token()}"}).status_code == 200
    kinds = [(m.event_id.meaning, m.study_instance_uid, m.requestor) for m in sink.messages]
    assert any(k[0] == "DICOM Instances Accessed" and k[1] == STUDY and k[2] == "UPLOADER" for k in kinds), kinds
    assert any(k[0] == "User Authentication" for k in kinds), kinds
    assert any(k[0] == "Security Alert" for k in kinds), kinds
    assert any(k[0] == "Query" and k[2] == "VIEWER" for k in kinds), kinds


def test_plain_http_off_loopback_is_refused(tmp_path: Path) -> None:
    import asyncio

    folder = write_folder(tmp_path)
    text = (folder / "server.toml").read_text().replace('[http]\nhost = "127.0.0.1"', '[http]\nhost = "0.0.0.0"')
    (folder / "server.toml").write_text(text)

    async def run() -> None:
        server = Server(load_settings(folder), addin_classes=ADDINS, use_entry_points=False)
        with pytest.raises((ServerError, ValueError), match="allow_insecure_http"):
            await server.start()
        await server.stop()

    asyncio.run(run())
