"""DICOMweb over HTTPS end to end: TLS on the HTTP listener (a certificate from a test CA), bearer tokens
and HTTP Basic, with pacskit's client, httpx and the `dicomweb-client` package verifying the server
against the CA; plain HTTP and unverified clients get nowhere."""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from pydicom import dcmread

from pacskit.cli.labca import issue_certificate, make_ca, write_pem
from pacskit.client.dicomweb import DicomWebClient
from pacskit.config.passwords import hash_password
from pacskit.testing.dicomweb import Running, start_server
from pacskit.testing.synth import make_series

SECRET = "https-test-secret-of-at-least-32-bytes!"
STUDY = "1.2.826.0.1.3680043.8.498.900"
REGISTRY = f"""
[[ae]]
title = "WORKSTATION"
host = "127.0.0.1"
port = 104
user_identity = "jwt"
jwt_algorithm = "HS256"
jwt_key = "{SECRET}"
username = "ws"

[[ae]]
title = "UPLOADER"
host = "127.0.0.1"
port = 104
user_identity = "password"
username = "up"
password_hash = "{hash_password('s3cret')}"
allowed_services = ["store"]
"""


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[Running, Path]]:
    folder = tmp_path / "srv"
    folder.mkdir()
    ca = make_ca("pacskit test CA")
    ca_file = tmp_path / "ca.pem"
    write_pem(ca_file, ca.certificate)
    issue_certificate(ca, "127.0.0.1", server=True, ip_addresses=["127.0.0.1"]).save(folder, "http")
    (folder / "server.toml").write_text(
        'ae_title = "PACSKIT"\nport = 0\ndata_dir = "data"\n[admin]\nenabled = false\n'
        '[http]\nhost = "127.0.0.1"\nport = 0\ntls_cert = "http.pem"\ntls_key = "http.key"\n'
        '[addins.dicomweb]\nenabled = true\nauth = "registry"\n')
    (folder / "ae-titles.toml").write_text(REGISTRY)
    with start_server(folder) as running:
        yield running, ca_file


def _url(running: Running) -> str:
    return f"https://127.0.0.1:{running.server.http.port}/dicom-web"


def _token() -> str:
    return jwt.encode({"sub": "ws", "exp": int(time.time() + 300)}, SECRET, algorithm="HS256")


def test_pacskit_client_stores_searches_and_retrieves_over_tls(tls: tuple[Running, Path], tmp_path: Path) -> None:
    running, ca = tls
    files = make_series(tmp_path / "s", 2, 16, 16, study_uid=STUDY, patient_id="TLS1")
    with DicomWebClient(_url(running), token=_token(), verify=str(ca)) as client:
        stored = client.store(files)
        assert stored.status == 200 and len(stored.stored) == 2
        # the RetrieveURLs name the scheme the client used
        assert stored.response["00081190"]["Value"][0].startswith(f"{_url(running)}/studies/")
        assert [s["0020000D"]["Value"][0] for s in client.search("studies", {"PatientID": "TLS1"})] == [STUDY]
        out = tmp_path / "out"
        client.retrieve(STUDY, into=out)
        assert sorted(p.read_bytes() for p in out.rglob("*.dcm")) == sorted(f.read_bytes() for f in files)
    with DicomWebClient(_url(running), verify=str(ca)) as anonymous:
        with pytest.raises(Exception, match="401"):
            anonymous.search("studies")


def test_dicomweb_client_package_over_tls(tls: tuple[Running, Path], tmp_path: Path) -> None:
    dicomweb_client = pytest.importorskip("dicomweb_client")
    import requests

    running, ca = tls
    files = make_series(tmp_path / "s", 1, 16, 16, study_uid=STUDY)
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override session.verify
    session.verify = str(ca)
    session.headers["Authorization"] = f"Bearer {_token()}"
    client = dicomweb_client.DICOMwebClient(url=_url(running), session=session)
    client.store_instances([dcmread(f) for f in files])
    ds = dcmread(files[0])
    got = client.retrieve_instance(STUDY, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert got.PixelData == ds.PixelData
    assert [s["0020000D"]["Value"][0] for s in client.search_for_studies()] == [STUDY]
    session.close()


def test_basic_over_tls_from_off_loopback_and_refusals(tls: tuple[Running, Path], tmp_path: Path) -> None:
    running, ca = tls
    url = _url(running)
    body_file = make_series(tmp_path / "b", 1, 8, 8)[0].read_bytes()
    body = b"--x\r\nContent-Type: application/dicom\r\n\r\n" + body_file + b"\r\n--x--\r\n"
    basic = "Basic " + base64.b64encode(b"up:s3cret").decode()
    # a caller off loopback (as the trusted local proxy reports it): Basic is taken over TLS
    headers = {"Authorization": basic, "X-Forwarded-For": "203.0.113.5",
               "Content-Type": 'multipart/related; type="application/dicom"; boundary=x'}
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca))) as c:
        assert c.post(f"{url}/studies", content=body, headers=headers).status_code == 200
        # its entry may store, not search
        r = c.get(f"{url}/studies", headers={"Authorization": basic})
        assert r.status_code == 403 and "UPLOADER may not use find" in r.text
        wrong = "Basic " + base64.b64encode(b"up:guess").decode()
        assert c.get(f"{url}/studies", headers={"Authorization": wrong}).status_code == 401
    # an unverified certificate, and plain HTTP on the TLS port, get nowhere
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{url}/studies", headers={"Authorization": f"Bearer {_token()}"})
    with pytest.raises(httpx.HTTPError):
        r = httpx.get(url.replace("https://", "http://") + "/studies", headers={"Authorization": f"Bearer {_token()}"})
        r.raise_for_status()
    assert running.server.store.count("instances") == 1
