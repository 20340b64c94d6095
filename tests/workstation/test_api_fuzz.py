"""Bad input to the workstation API: arbitrary query parameters and bodies get a 4xx problem+json
(or a 2xx), never a 5xx, and the server keeps serving (property-based, hypothesis)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacskit.testing.workstation import Workstation

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
PARAMS = st.dictionaries(
    st.sampled_from(["PatientName", "PatientID", "AccessionNumber", "StudyDate", "ModalitiesInStudy",
                     "StudyDescription", "sort", "order", "limit", "offset", "source", "bogus"]),
    TEXT, max_size=5)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)
JOB = st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(["retrieve", "send", "other"]) | TEXT, "source": TEXT | st.integers(),
    "destination": TEXT, "study_uid": TEXT | st.just("1.2.3"), "series_uids": st.lists(TEXT, max_size=3),
    "level": st.sampled_from(["STUDY", "SERIES", "PATIENT"]), "method": TEXT})


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.request.url, response.text)
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json"), response.text


@pytest.fixture(scope="module")
def admin(ws: Workstation) -> Any:
    with ws.login("admin") as client:
        yield client


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=PARAMS)
def test_study_search_parameters(admin: httpx.Client, params: dict[str, str]) -> None:
    params.pop("source", None)  # remote sources are tested with real peers
    _check(admin.get("/api/studies", params=params))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=JOB | JSON)
def test_job_bodies(admin: httpx.Client, body: Any) -> None:
    response = admin.post("/api/jobs", json=body)
    _check(response)
    if response.status_code == 201:  # a valid job to a registered AE: do not leave it running
        admin.delete(f"/api/jobs/{response.json()['id']}")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/api/logs/transactions", "/api/logs/audit"]),
       params=st.dictionaries(st.sampled_from(["since", "until", "ae", "operation", "status", "patient", "study",
                                               "user", "event", "outcome", "limit", "offset", "format"]),
                              TEXT, max_size=4))
def test_log_filters(admin: httpx.Client, path: str, params: dict[str, str]) -> None:
    _check(admin.get(path, params=params))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=JSON, name=TEXT)
def test_user_bodies(admin: httpx.Client, body: Any, name: str) -> None:
    _check(admin.post("/api/users", json=body))
    if name.strip("."):
        _check(admin.put(f"/api/users/{quote(name, safe='')}", json=body))
