"""The workstation's auth: sessions, CSRF, roles (the 401/403 matrix), idle expiry, bearer tokens,
the audit of logins, users over the API, and DICOMweb accepting the same sessions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pacskit.testing.workstation import Workstation, workstation

# (method, path, body, least role allowed)
MATRIX = [
    ("GET", "/api/session", None, "viewer"),
    ("GET", "/api/nodes", None, "viewer"),
    ("GET", "/api/studies", None, "viewer"),
    ("GET", "/api/jobs", None, "viewer"),
    ("POST", "/api/jobs", {"kind": "send", "destination": "NOSUCHAE", "study_uid": "1.2.3"}, "operator"),
    ("DELETE", "/api/jobs/999999", None, "operator"),
    ("POST", "/api/jobs/999999/retry", None, "operator"),
    ("GET", "/api/logs/transactions", None, "operator"),
    ("GET", "/api/logs/audit", None, "operator"),
    ("GET", "/api/admin/status", None, "operator"),
    ("POST", "/api/admin/reload", None, "admin"),
    ("GET", "/api/users", None, "admin"),
    ("POST", "/api/users", {"username": "x", "password": "short", "role": "viewer"}, "admin"),
    ("GET", "/api/servers", None, "operator"),
    ("POST", "/api/servers/NOSUCH/start", None, "admin"),
]
RANK = {"viewer": 0, "operator": 1, "admin": 2}


def _is_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["detail"] and body["type"].startswith("https://")


@pytest.fixture(scope="module")
def sessions(ws: Workstation) -> Iterator[dict[str, httpx.Client]]:
    """A logged-in client per role (one login each: scrypt takes its time on purpose)."""
    clients = {role: ws.login(role) for role in RANK}
    yield clients
    for client in clients.values():
        client.close()


@pytest.mark.parametrize(("method", "path", "body", "least"), MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
def test_role_matrix(ws: Workstation, sessions: dict[str, httpx.Client], method: str, path: str, body: object,
                     least: str) -> None:
    anonymous = httpx.Client(base_url=ws.url)
    _is_problem(anonymous.request(method, path, json=body), 401)
    for role, client in sessions.items():
        response = client.request(method, path, json=body)
        if RANK[role] < RANK[least]:
            _is_problem(response, 403)
        else:  # allowed: whatever the route answers, it is not an auth refusal
            assert response.status_code not in (401, 403), (role, response.text)


def test_login_sets_a_strict_http_only_cookie_and_logout_ends_it(ws: Workstation) -> None:
    client = httpx.Client(base_url=ws.url)
    response = client.post("/api/session", json={"username": "viewer", "password": "viewer-pass"})
    assert response.status_code == 200
    body = response.json()
    assert body["user"] == "viewer" and body["role"] == "viewer" and len(body["csrf_token"]) >= 20
    cookie = response.headers["set-cookie"].lower()
    assert "pacskit_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert client.get("/api/session").json()["csrf_token"] == body["csrf_token"]
    # logout is a state change: the CSRF header is needed
    _is_problem(client.delete("/api/session"), 403)
    assert client.delete("/api/session", headers={"X-CSRF-Token": body["csrf_token"]}).status_code == 204
    _is_problem(client.get("/api/session"), 401)


def test_csrf_header_required_for_cookie_requests(ws: Workstation) -> None:
    with ws.login("operator") as client:
        token = client.headers.pop("X-CSRF-Token")
        job = {"kind": "send", "destination": "NOSUCHAE", "study_uid": "1.2.3"}
        _is_problem(client.post("/api/jobs", json=job), 403)
        _is_problem(client.post("/api/jobs", json=job, headers={"X-CSRF-Token": token + "x"}), 403)
        # with the header the request reaches the route (which refuses the unknown AE)
        _is_problem(client.post("/api/jobs", json=job, headers={"X-CSRF-Token": token}), 400)
        assert client.get("/api/jobs").status_code == 200  # GET needs none


def test_bad_login_is_401_and_audited(ws: Workstation) -> None:
    client = httpx.Client(base_url=ws.url)
    _is_problem(client.post("/api/session", json={"username": "admin", "password": "wrong-password"}), 401)
    _is_problem(client.post("/api/session", json={"username": "nobody", "password": "whatever-pass"}), 401)
    assert "set-cookie" not in client.post("/api/session", json={"username": "admin", "password": "x"}).headers
    with ws.login("admin") as admin:
        ws.server.audit._sink.flush()  # type: ignore[union-attr]  # the trail writes in batches
        failures = admin.get("/api/logs/audit", params={"event": "User Authentication", "outcome": "failure"}).json()
        users = {item["user"] for item in failures["items"]}
        assert {"admin", "nobody"} <= users


def test_idle_expiry(tmp_path: Path) -> None:
    with workstation(tmp_path, studies=0) as ws:
        now = [1_000_000.0]
        ws.addin.sessions.clock = lambda: now[0]
        with ws.login("viewer") as client:
            lifetime = ws.addin.sessions.lifetime
            now[0] += lifetime - 1
            assert client.get("/api/session").status_code == 200  # renews the idle expiry
            now[0] += lifetime - 1
            assert client.get("/api/session").status_code == 200
            now[0] += lifetime + 1
            _is_problem(client.get("/api/session"), 401)
            _is_problem(client.get("/api/studies"), 401)


def test_admin_bearer_token(tmp_path: Path) -> None:
    token = "t0ken-" + "x" * 40
    (tmp_path / "token").write_text(token + "\n")
    with workstation(tmp_path, studies=1, admin_toml=f'token_file = "{tmp_path / "token"}"\n') as ws:
        bearer = httpx.Client(base_url=ws.url, headers={"Authorization": f"Bearer {token}"})
        assert bearer.get("/api/session").json()["role"] == "admin"
        assert bearer.get("/api/users").status_code == 200
        # no CSRF header needed with a bearer token
        assert bearer.post("/api/users", json={"username": "carol", "password": "carol-pass", "role": "viewer"}).status_code == 201
        _is_problem(httpx.get(ws.url + "/api/users", headers={"Authorization": "Bearer wrong"}), 401)
        assert bearer.get("/dicom-web/studies").status_code == 200


def test_users_api_and_role_change_ends_sessions(ws: Workstation) -> None:
    with ws.login("admin") as admin:
        assert {u["username"] for u in admin.get("/api/users").json()} >= {"viewer", "operator", "admin"}
        _is_problem(admin.post("/api/users", json={"username": "dave", "password": "short", "role": "viewer"}), 400)
        assert admin.post("/api/users", json={"username": "dave", "password": "dave-password", "role": "viewer"}).status_code == 201
        _is_problem(admin.post("/api/users", json={"username": "dave", "password": "dave-password", "role": "viewer"}), 409)
        dave = httpx.Client(base_url=ws.url)
        assert dave.post("/api/session", json={"username": "dave", "password": "dave-password"}).status_code == 200
        assert admin.put("/api/users/dave", json={"role": "operator"}).json() == {"username": "dave", "role": "operator"}
        _is_problem(dave.get("/api/session"), 401)  # a changed role ends the old sessions
        assert admin.delete("/api/users/dave").status_code == 204
        _is_problem(admin.delete("/api/users/dave"), 404)
        _is_problem(httpx.post(ws.url + "/api/session", json={"username": "dave", "password": "dave-password"}), 401)


def test_dicomweb_accepts_the_session_and_refuses_anonymous(ws: Workstation) -> None:
    assert httpx.get(ws.url + "/dicom-web/studies").status_code == 401
    with ws.login("viewer") as viewer:
        studies = viewer.get("/dicom-web/studies")
        assert studies.status_code == 200
        assert {s["0020000D"]["Value"][0] for s in studies.json()} == set(ws.study_uids)
        # STOW needs operator: a viewer's session is refused
        stow = viewer.post("/dicom-web/studies", content=b"--x--\r\n",
                           headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'})
        assert stow.status_code == 403


def test_ui_is_served_or_says_how_to_build_it(ws: Workstation) -> None:
    root = httpx.get(ws.url + "/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/ui/"
    ui = httpx.get(ws.url + "/ui/")
    if ui.status_code == 503:
        assert "npm --prefix web" in ui.json()["detail"]
    else:
        assert ui.status_code == 200 and "text/html" in ui.headers["content-type"]
    assert httpx.get(ws.url + "/ui/../../etc/passwd").status_code in (404, 503)


def test_sessions_and_jobs_outlive_a_reload(ws: Workstation, sessions: dict[str, httpx.Client]) -> None:
    admin = sessions["admin"]
    before = admin.get("/api/jobs").json()
    runner = ws.addin.jobs
    reloaded = admin.post("/api/admin/reload")
    assert reloaded.status_code == 200, reloaded.text
    for client in sessions.values():
        assert client.get("/api/session").status_code == 200
    assert admin.get("/api/jobs").json() == before
    assert ws.addin.jobs is runner  # one queue, whatever the generation of add-ins


def test_password_guessing_is_throttled(tmp_path: Path) -> None:
    with workstation(tmp_path, studies=0) as ws:
        now = [1_000_000.0]
        ws.addin.sessions.clock = lambda: now[0]
        client = httpx.Client(base_url=ws.url)
        for _ in range(5):
            _is_problem(client.post("/api/session", json={"username": "viewer", "password": "guess-guess"}), 401)
        refused = client.post("/api/session", json={"username": "viewer", "password": "viewer-pass"})
        _is_problem(refused, 429)
        assert int(refused.headers["retry-after"]) > 0
        # another user is not affected
        assert client.post("/api/session", json={"username": "admin", "password": "admin-pass"}).status_code == 200
        now[0] += 61
        assert client.post("/api/session", json={"username": "viewer", "password": "viewer-pass"}).status_code == 200


def test_dicomweb_registry_jwt_still_works_beside_the_workstation(tmp_path: Path) -> None:
    import time

    import jwt

    from pacskit.config.aetitles import RemoteAE

    secret = "a-shared-secret-of-at-least-32-bytes!!"
    with workstation(tmp_path, studies=1) as ws:
        dicomweb = next(a for a in ws.server.addins if a.name == "dicomweb")
        dicomweb.options.auth = "registry"  # as [addins.dicomweb] auth = "registry" would
        ws.server.ae_titles.add(RemoteAE(title="VIEWER", host="127.0.0.1", port=104, user_identity="jwt",
                                         jwt_algorithm="HS256", jwt_key=secret, username="viewer",
                                         allowed_services={"find"}))
        token = jwt.encode({"sub": "viewer", "exp": int(time.time() + 300)}, secret, algorithm="HS256")
        assert httpx.get(ws.url + "/dicom-web/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert httpx.get(ws.url + "/dicom-web/studies", headers={"Authorization": "Bearer nonsense"}).status_code == 401
        assert httpx.get(ws.url + "/dicom-web/studies").status_code == 401
        with ws.login("viewer") as viewer:
            assert viewer.get("/dicom-web/studies").status_code == 200
