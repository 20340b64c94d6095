"""The access-control matrix (issue 6): who may associate and what each caller may do, seen by DCMTK
echoscu/storescu, pacskit's SCUs and pynetdicom (User Identity Negotiation), against a registered-only
pacskit server.

Every refusal also leaves a ``pacskit.security`` log line and a PS3.15 audit message (checked in the
server's audit_records for a refused service).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE as PyndAE
from pynetdicom import evt
from pynetdicom.pdu_primitives import UserIdentityNegotiation

from pacskit.client import EchoScu, QueryRetrieveScu, StoreScu
from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import AssociationRejected
from pacskit.server.access import NOT_AUTHORIZED
from pacskit.config.passwords import hash_password, verify_password
from pacskit.config.aetitles import RemoteAE
from pacskit.testing.peers import count_store_successes, have_dcmtk, run_echoscu, run_storescu
from pacskit.testing.synth import make_instance

from .conftest import running_server, server_folder

AET = "ACLPACS"
HS_SECRET = "a-shared-secret-of-at-least-32-bytes!"
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC = _RSA.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def entries() -> list[RemoteAE]:
    return [
        RemoteAE(title="GOODSCU", host="127.0.0.1", port=104),
        RemoteAE(title="HOSTBOUND", host="10.1.2.3", port=104, source_hosts=["10.1.2.0/24"]),
        RemoteAE(title="LOCALNET", host="127.0.0.1", port=104, source_hosts=["127.0.0.0/8"]),
        RemoteAE(title="LOCALNAME", host="127.0.0.1", port=104, source_hosts=["localhost"]),
        RemoteAE(title="ECHOONLY", host="127.0.0.1", port=104, allowed_services={"echo"}),
        RemoteAE(title="MOVER", host="127.0.0.1", port=104, move_destinations={"DEST1"}),
        RemoteAE(title="DEST1", host="127.0.0.1", port=9),
        RemoteAE(title="DEST2", host="127.0.0.1", port=9),
        RemoteAE(title="PWUSER", host="127.0.0.1", port=104, user_identity="password", username="alice",
                 password_hash=hash_password("s3cret")),
        RemoteAE(title="JWTHS", host="127.0.0.1", port=104, user_identity="jwt", jwt_algorithm="HS256",
                 jwt_key=HS_SECRET, username="bob", jwt_audience="pacskit"),
        RemoteAE(title="JWTRS", host="127.0.0.1", port=104, user_identity="jwt", jwt_algorithm="RS256",
                 jwt_key=RSA_PUBLIC, username="carol"),
    ]


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = server_folder(tmp_path_factory.mktemp("acl"), ae_title=AET, open_mode=False, entries=entries())
    with running_server(folder) as server:
        yield server


@pytest.fixture(scope="module")
def need_dcmtk() -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")


def _audited(server, event_id: str, text: str, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    """An audit message with ``event_id`` whose XML holds ``text`` reached the server's audit_records."""
    from sqlalchemy import select

    from pacskit.store.records import AuditRecord

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with server.server.store.index.engine.connect() as conn:
            rows = conn.execute(select(AuditRecord.xml).where(AuditRecord.event_id == event_id)).scalars().all()
        if any(text in xml for xml in rows):
            return True
        time.sleep(0.1)
    return False


def logged(caplog: pytest.LogCaptureFixture, *texts: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        messages = [r.getMessage() for r in caplog.records]
        if any(all(t in m for t in texts) for m in messages):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# ---------------------------------------------------------------------- who may associate


def dcmtk_reject(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if "Result:" in line or "Reason:" in line]
    return " | ".join(line.split(": ", 2)[-1] for line in lines)


@pytest.mark.dcmtk
def test_dcmtk_echoscu_sees_each_reject_reason(need_dcmtk: None, acl_server, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="pacskit.security")
    port = acl_server.port
    called = run_echoscu("127.0.0.1", port, "NOTUS", "GOODSCU")
    assert dcmtk_reject(called.stdout) == "Rejected Permanent, Source: Service User | Called AE Title Not Recognized", called.stdout
    unknown = run_echoscu("127.0.0.1", port, AET, "STRANGER")
    assert dcmtk_reject(unknown.stdout) == "Rejected Permanent, Source: Service User | Calling AE Title Not Recognized", unknown.stdout
    assert logged(caplog, "STRANGER", "is not registered")
    wrong_host = run_echoscu("127.0.0.1", port, AET, "HOSTBOUND")
    assert dcmtk_reject(wrong_host.stdout) == "Rejected Permanent, Source: Service User | Calling AE Title Not Recognized", wrong_host.stdout
    assert logged(caplog, "HOSTBOUND may not associate from 127.0.0.1")
    no_identity = run_echoscu("127.0.0.1", port, AET, "PWUSER")
    assert dcmtk_reject(no_identity.stdout) == "Rejected Permanent, Source: Service User | No Reason", no_identity.stdout
    assert logged(caplog, "PWUSER: user identity refused: no User Identity item sent")
    for ok in ("GOODSCU", "LOCALNET", "LOCALNAME", "ECHOONLY"):
        result = run_echoscu("127.0.0.1", port, AET, ok)
        assert result.returncode == 0 and "Received Echo Response (Success)" in result.stdout, (ok, result.stdout)
    # each rejection is an audit point, including the engine's called-AE check
    assert logged(caplog, "security [Security Alert]", "NOTUS")
    assert logged(caplog, "security [Security Alert]", "STRANGER")


def _rejected(port: int, calling: str, called: str = AET) -> tuple[int, int, int] | None:
    try:
        status = EchoScu(f"{called}@127.0.0.1:{port}", calling_ae=calling).echo_sync()
    except AssociationRejected as exc:
        return exc.result, exc.source, exc.reason
    assert status == 0
    return None


def test_pacskit_scu_sees_each_reject_reason(acl_server) -> None:  # type: ignore[no-untyped-def]
    port = acl_server.port
    assert _rejected(port, "GOODSCU", "NOTUS") == (1, 1, 7)
    assert _rejected(port, "STRANGER") == (1, 1, 3)
    assert _rejected(port, "HOSTBOUND") == (1, 1, 3)
    assert _rejected(port, "PWUSER") == (1, 1, 1)
    assert _rejected(port, "JWTHS") == (1, 1, 1)
    assert _rejected(port, "GOODSCU") is None
    assert _rejected(port, "LOCALNAME") is None


def test_open_and_loopback_defaults(tmp_path: Path) -> None:
    """Unset open_mode on loopback lets unregistered callers in, but registered entries keep their rules."""
    folder = server_folder(tmp_path, ae_title=AET, open_mode=None, entries=[RemoteAE(title="HOSTBOUND", host="10.1.2.3", port=104, source_hosts=["10.1.2.0/24"])])
    with running_server(folder) as server:
        assert _rejected(server.port, "ANYONE") is None
        assert _rejected(server.port, "HOSTBOUND") == (1, 1, 3)


# ---------------------------------------------------------------------- what each may do


def test_forbidden_service_answers_not_authorized(acl_server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="pacskit.security")
    target = f"{AET}@127.0.0.1:{acl_server.port}"
    files = [make_instance(tmp_path / "a.dcm")]
    report = asyncio.run(StoreScu(target, calling_ae="ECHOONLY").store(files))
    assert [r.status for r in report.failed] == [NOT_AUTHORIZED], report.summary()
    assert logged(caplog, "C-STORE refused (0x0124 Not Authorized): ECHOONLY may not use store")
    assert logged(caplog, "security [Security Alert]", "ECHOONLY may not use store")
    assert _audited(acl_server, "110113", "C-STORE refused: ECHOONLY may not use store")  # Security Alert
    result = asyncio.run(QueryRetrieveScu(target, calling_ae="ECHOONLY").find(["PatientID="], level="STUDY"))
    assert result.status == NOT_AUTHORIZED
    # the same requests from an allowed caller go through
    ok = asyncio.run(StoreScu(target, calling_ae="GOODSCU").store(files))
    assert len(ok.succeeded) == 1, ok.summary()
    found = asyncio.run(QueryRetrieveScu(target, calling_ae="GOODSCU").find(["PatientID="], level="STUDY"))
    assert found.status == 0x0000 and len(found.records) >= 1


@pytest.mark.dcmtk
def test_dcmtk_storescu_refused_store(need_dcmtk: None, acl_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files = [make_instance(tmp_path / "b.dcm")]
    refused = run_storescu("127.0.0.1", acl_server.port, files, called=AET, calling="ECHOONLY", timeout=60)
    assert count_store_successes(refused) == 0 and "Status: 0x124" in refused.stdout, refused.stdout
    allowed = run_storescu("127.0.0.1", acl_server.port, files, called=AET, calling="GOODSCU", timeout=60)
    assert count_store_successes(allowed) == 1, allowed.stdout


def test_move_destination_rule(acl_server) -> None:  # type: ignore[no-untyped-def]
    target = f"{AET}@127.0.0.1:{acl_server.port}"
    keys = ["StudyInstanceUID=1.2.826.0.1.3680043.10.1.99999"]  # matches nothing: no sub-association needed

    def move(calling: str, destination: str) -> Any:
        return asyncio.run(QueryRetrieveScu(target, calling_ae=calling).move(keys, level="STUDY", destination=destination))

    assert move("MOVER", "DEST2").status == NOT_AUTHORIZED  # registered, not allowed for MOVER
    assert move("MOVER", "NOWHERE").status == NOT_AUTHORIZED  # restricted caller: not in its list
    assert move("MOVER", "DEST1").status == 0x0000  # allowed (nothing matched)
    assert move("GOODSCU", "DEST2").status == 0x0000  # unrestricted caller
    assert move("GOODSCU", "NOWHERE").status == 0xA801  # unregistered destination: Retrieve add-in's answer
    assert move("ECHOONLY", "DEST1").status == NOT_AUTHORIZED  # move itself not allowed


# ---------------------------------------------------------------------- user identity (pynetdicom)


def _pynd_associate(port: int, calling: str, identity: UserIdentityNegotiation | None) -> tuple[bool, tuple[int, int, int] | None, int | None]:
    """pynetdicom associates with User Identity; returns (established, A-ASSOCIATE-RJ codes, echo status)."""
    ae = PyndAE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(VERIFICATION_SOP_CLASS, [ImplicitVRLittleEndian])
    received: list[Any] = []
    handlers = [(evt.EVT_PDU_RECV, lambda event: received.append(event.pdu))]
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=AET, ext_neg=[identity] if identity else None, evt_handlers=handlers)
        status = None
        if assoc.is_established:
            status = int(assoc.send_c_echo().Status)
            assoc.release()
        rj = [p for p in received if type(p).__name__ == "A_ASSOCIATE_RJ"]
        codes = (rj[0].result, rj[0].source, rj[0].reason_diagnostic) if rj else None
        return status is not None, codes, status
    finally:
        ae.shutdown()


def _identity(kind: int, primary: bytes, secondary: bytes = b"") -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = kind
    item.primary_field = primary
    if kind == 2:
        item.secondary_field = secondary
    return item


def _token(key: Any, algorithm: str, **claims: Any) -> bytes:
    payload = {"exp": int(time.time()) + 300, **claims}
    return jwt.encode(payload, key, algorithm=algorithm).encode("ascii")


def _hs256_with_key_bytes(claims: dict[str, Any], key: bytes) -> bytes:
    """An HS256 token whose HMAC key is ``key`` (PyJWT refuses to make one with a PEM key, so by hand)."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(claims).encode())
    return signing_input + b"." + b64(hmac.new(key, signing_input, hashlib.sha256).digest())


REJECTED_NO_REASON = (1, 1, 1)


@pytest.mark.pynetdicom
def test_user_identity_username_and_password(acl_server, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="pacskit.security")
    port = acl_server.port
    assert _pynd_associate(port, "PWUSER", _identity(2, b"alice", b"s3cret")) == (True, None, 0)
    assert logged(caplog, "security [User Authentication] outcome=success", "PWUSER")
    assert _pynd_associate(port, "PWUSER", _identity(2, b"alice", b"wrong"))[:2] == (False, REJECTED_NO_REASON)
    assert logged(caplog, "PWUSER: user identity refused: wrong password")
    assert logged(caplog, "security [User Authentication] outcome=failure", "wrong password")
    assert _pynd_associate(port, "PWUSER", _identity(2, b"mallory", b"s3cret"))[:2] == (False, REJECTED_NO_REASON)
    assert _pynd_associate(port, "PWUSER", _identity(1, b"alice"))[:2] == (False, REJECTED_NO_REASON)  # no passcode
    assert _pynd_associate(port, "PWUSER", None)[:2] == (False, REJECTED_NO_REASON)
    # the password never reaches the log
    assert not any("s3cret" in r.getMessage() for r in caplog.records)


@pytest.mark.pynetdicom
def test_user_identity_jwt(acl_server, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO", logger="pacskit.security")
    port = acl_server.port
    good = _token(HS_SECRET, "HS256", sub="bob", aud="pacskit")
    assert _pynd_associate(port, "JWTHS", _identity(5, good)) == (True, None, 0)
    expired = jwt.encode({"exp": int(time.time()) - 10, "sub": "bob", "aud": "pacskit"}, HS_SECRET, algorithm="HS256").encode()
    assert _pynd_associate(port, "JWTHS", _identity(5, expired))[:2] == (False, REJECTED_NO_REASON)
    assert logged(caplog, "JWTHS: user identity refused: token expired")
    bad_signature = _token("another-secret-that-is-32-bytes-long!", "HS256", sub="bob", aud="pacskit")
    assert _pynd_associate(port, "JWTHS", _identity(5, bad_signature))[:2] == (False, REJECTED_NO_REASON)
    assert logged(caplog, "JWTHS: user identity refused: token signature invalid")
    wrong_audience = _token(HS_SECRET, "HS256", sub="bob", aud="elsewhere")
    assert _pynd_associate(port, "JWTHS", _identity(5, wrong_audience))[:2] == (False, REJECTED_NO_REASON)
    wrong_subject = _token(HS_SECRET, "HS256", sub="mallory", aud="pacskit")
    assert _pynd_associate(port, "JWTHS", _identity(5, wrong_subject))[:2] == (False, REJECTED_NO_REASON)
    # RS256 with the registered public key; a token signed by another key, or an HS256 token made with
    # the public key as the secret (algorithm confusion), is refused
    assert _pynd_associate(port, "JWTRS", _identity(5, _token(_RSA, "RS256", sub="carol"))) == (True, None, 0)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert _pynd_associate(port, "JWTRS", _identity(5, _token(other, "RS256", sub="carol")))[:2] == (False, REJECTED_NO_REASON)
    confused = _hs256_with_key_bytes({"sub": "carol", "exp": int(time.time()) + 300}, RSA_PUBLIC.encode())
    assert _pynd_associate(port, "JWTRS", _identity(5, confused))[:2] == (False, REJECTED_NO_REASON)


# ---------------------------------------------------------------------- registry


def test_passwords_are_stored_hashed_never_plain(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from pacskit.config.aetitles import FileAeRegistry

    encoded = hash_password("s3cret")
    assert encoded.startswith("scrypt$") and "s3cret" not in encoded
    assert verify_password("s3cret", encoded) and not verify_password("s3cret!", encoded)
    assert hash_password("s3cret") != encoded  # salted
    with pytest.raises(ValidationError):
        RemoteAE(title="X", host="h", port=1, user_identity="password", username="u", password_hash="s3cret")
    registry = FileAeRegistry(tmp_path / "ae-titles.toml")
    registry.add(RemoteAE(title="PW", host="h", port=1, user_identity="password", username="u", password_hash=encoded,
                          source_hosts=["192.168.0.0/16", "modality.example"], move_destinations={"A", "B"}))
    text = (tmp_path / "ae-titles.toml").read_text()
    assert "s3cret" not in text and encoded in text
    again = FileAeRegistry(tmp_path / "ae-titles.toml").get("PW")
    assert again is not None and again.move_destinations == {"A", "B"} and again.source_hosts == ["192.168.0.0/16", "modality.example"]
    with pytest.raises(ValidationError):
        RemoteAE(title="X", host="h", port=1, source_hosts=["not a host!"])


def test_ae_add_with_access_rules_from_the_command_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pacskit.cli import app
    from pacskit.config.aetitles import FileAeRegistry

    runner = CliRunner()
    folder = tmp_path / "srv"
    key = tmp_path / "idp.pem"
    key.write_text(RSA_PUBLIC)
    added = runner.invoke(app, ["ae", "add", "VIEWER", "--host", "10.0.1.5", "--port", "11112", "--data-dir", str(folder),
                                "--user-identity", "password", "--username", "alice", "--password-stdin",
                                "--source", "10.0.1.0/24", "--move-dest", "VIEWER", "--services", "echo,find,move"],
                          input="s3cret\n")
    assert added.exit_code == 0, added.output
    jwt_added = runner.invoke(app, ["ae", "add", "PORTAL", "--host", "h", "--port", "104", "--data-dir", str(folder),
                                    "--user-identity", "jwt", "--jwt-key-file", str(key), "--tls-subject", "PORTAL"])
    assert jwt_added.exit_code == 0, jwt_added.output
    registry = FileAeRegistry(folder / "ae-titles.toml")
    viewer, portal = registry.get("VIEWER"), registry.get("PORTAL")
    assert viewer is not None and portal is not None
    assert viewer.password_hash is not None and verify_password("s3cret", viewer.password_hash)
    assert "s3cret" not in (folder / "ae-titles.toml").read_text()
    assert viewer.source_hosts == ["10.0.1.0/24"] and viewer.move_destinations == {"VIEWER"}
    assert viewer.allowed_services == {"echo", "find", "move"}
    assert portal.jwt_key == RSA_PUBLIC.strip() and portal.requires_tls
    incomplete = runner.invoke(app, ["ae", "add", "BAD", "--host", "h", "--port", "104", "--data-dir", str(folder),
                                     "--user-identity", "password", "--username", "bob"])
    assert incomplete.exit_code == 2 and "password_hash" in incomplete.output, incomplete.output
    listed = runner.invoke(app, ["ae", "list", "--data-dir", str(folder)])
    assert listed.exit_code == 0 and "VIEWER" in listed.output and "password" in listed.output


def test_registry_service_names() -> None:
    from pacskit.addins.commitment import StorageCommitmentAddIn
    from pacskit.addins.mpps import MppsAddIn
    from pacskit.addins.worklist import WorklistAddIn
    from pacskit.server.access import ServiceNames

    # the core names the DIMSE services; the add-ins serving worklist, commitment and MPPS declare theirs
    declared = [p for cls in (WorklistAddIn, StorageCommitmentAddIn, MppsAddIn) for p in cls.permissions]
    registry_service = ServiceNames(declared).name_for

    assert registry_service("C-ECHO", "1.2.840.10008.1.1") == "echo"
    assert registry_service("C-STORE", "1.2.840.10008.5.1.4.1.1.2") == "store"
    assert registry_service("C-FIND", "1.2.840.10008.5.1.4.1.2.2.1") == "find"
    assert registry_service("C-FIND", "1.2.840.10008.5.1.4.31") == "worklist"
    assert registry_service("C-MOVE", "1.2.840.10008.5.1.4.1.2.2.2") == "move"
    assert registry_service("C-GET", "1.2.840.10008.5.1.4.1.2.2.3") == "get"
    assert registry_service("N-ACTION", "1.2.840.10008.1.20.1") == "commit"
    assert registry_service("N-CREATE", "1.2.840.10008.3.1.2.3.3") == "mpps"
    assert registry_service("N-SET", "1.2.840.10008.3.1.2.3.3") == "mpps"
    assert registry_service("N-GET", "1.2.3.4.5") is None  # left to the add-in serving it
