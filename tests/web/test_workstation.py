"""The workstation in a real browser: Debian's Chromium driven by Playwright against a pacskit server
(webback's ``pacskit.testing.workstation``) on loopback, with an Orthanc loaded with other studies as the
remote PACS and a DCMTK storescp as a send destination. Each test writes a screenshot of its screen to
docs/screenshots/ (the pictures of docs/workstation.md)."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from pacskit.testing.peers import have_dcmtk, have_orthanc, orthanc, run_echoscu, run_storescu, storescp
from pacskit.testing.synth import make_series
from pacskit.testing.viewer import expected_grey, grey_matrix
from pacskit.testing.workstation import AE_TITLE, Workstation, workstation

from ._frontend import ROOT, SCREENSHOTS, ensure_built, need_chromium

pw_api = pytest.importorskip("playwright.sync_api")
expect = pw_api.expect
expect.set_options(timeout=20_000)  # a loaded machine (2 cores shared) is slow, not wrong

REMOTE_PATIENTS = ("REMOTE^ALICE", "REMOTE^BOB")
SLICES = 4


def screenshot(page: Any, name: str) -> None:
    """A PNG of the page in SCREENSHOTS (docs/screenshots when refreshing the guide), reduced to 64
    colours so the committed files stay small."""
    from PIL import Image

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(page.screenshot()))
    image.convert("RGB").quantize(colors=64).save(SCREENSHOTS / f"{name}.png", optimize=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The workstation (2 local studies), Orthanc as ORTHANC (2 other studies; it knows PACSKIT as a
    C-MOVE destination) and storescp as STORESCP, all registered in the workstation's AE titles."""
    if not have_orthanc():
        pytest.skip("Orthanc is not installed")
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed")
    ensure_built()
    tmp = tmp_path_factory.mktemp("workstation-ui")
    with contextlib.ExitStack() as stack:
        ws: Workstation = stack.enter_context(workstation(tmp, studies=2, slices=SLICES))
        peer = stack.enter_context(orthanc(tmp / "orthanc", modalities={"pacskit": [AE_TITLE, "127.0.0.1", ws.dicom_port]}))
        remote_files: list[Path] = []
        for n, name in enumerate(REMOTE_PATIENTS, 1):
            remote_files += make_series(tmp / f"remote{n}", SLICES, patient_id=f"RPID{n}", patient_name=name,
                                        attrs={"AccessionNumber": f"RACC{n}", "StudyDescription": f"Remote CT {n}",
                                               "StudyDate": f"2023010{n}"})
        run_storescu("127.0.0.1", peer.dicom_port, remote_files, called="ORTHANC")
        ws.register("ORTHANC", "127.0.0.1", peer.dicom_port, "Orthanc test PACS")
        scp = stack.enter_context(storescp(tmp / "received", ae_title="STORESCP"))
        ws.register("STORESCP", "127.0.0.1", scp.port, "DCMTK storescp")
        yield {"ws": ws, "orthanc": peer, "storescp": scp, "remote_files": remote_files}


@pytest.fixture(scope="module")
def browser(env: dict[str, Any]) -> Iterator[Any]:
    chromium = need_chromium()
    with pw_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def open_page(browser: Any, env: dict[str, Any]) -> Iterator[Any]:
    """``open_page(role)``: a new browser context logged in through the login form."""
    contexts: list[Any] = []
    ws: Workstation = env["ws"]

    def login(role: str, hash_route: str = "") -> Any:
        context = browser.new_context(viewport={"width": 1200, "height": 720})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.goto(f"{ws.url}/ui/{hash_route}")
        user, password = ws.users[role]
        page.get_by_label("User name").fill(user)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator(".app-header .who")).to_have_text(f"{user} · {role}")
        return page

    yield login
    for context in contexts:
        context.close()


def search_rows(page: Any) -> Any:
    return page.locator(".study-list tbody tr")


def test_login_rejects_a_bad_password_then_searches_the_local_archive(browser: Any, env: dict[str, Any], open_page: Any) -> None:
    ws: Workstation = env["ws"]
    context = browser.new_context(viewport={"width": 1200, "height": 720})
    try:
        page = context.new_page()
        page.goto(f"{ws.url}/ui/")
        page.get_by_label("User name").fill("operator")
        page.get_by_label("Password").fill("wrong")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
        page.get_by_label("Password").fill("")
        screenshot(page, "login")
    finally:
        context.close()

    page = open_page("operator")
    expect(page.locator(".source-note")).to_have_text(re.compile(r"^\d+ stud(y|ies) from the local archive$"))
    assert search_rows(page).count() >= 2
    for uid in ws.study_uids:
        expect(page.locator(f".study-list tr[data-study-uid='{uid}']")).to_have_count(1)
    # a filter: the patient name (the UI appends the wildcard)
    page.get_by_label("Patient name").fill("test^patient2")
    page.locator("form[role=search] button[type=submit]").click()
    expect(search_rows(page)).to_have_count(1)
    expect(search_rows(page).first).to_contain_text("TEST, PATIENT2")
    assert "name=test%5Epatient2" in page.url  # the search is in the URL (shareable)
    # sorting by patient ID, both ways
    page.get_by_label("Patient name").fill("")
    page.locator("form[role=search] button[type=submit]").click()
    expect(search_rows(page)).not_to_have_count(1)  # the unfiltered list is back
    page.get_by_role("button", name=re.compile("^Patient ID")).click()
    expect(page.locator("th[aria-sort=ascending]")).to_contain_text("Patient ID")
    ids = page.locator(".study-list td.col-PatientID").all_inner_texts()
    assert ids == sorted(ids)
    page.get_by_role("button", name=re.compile("^Patient ID")).click()
    expect(page.locator("th[aria-sort=descending]")).to_contain_text("Patient ID")
    ids = page.locator(".study-list td.col-PatientID").all_inner_texts()
    assert ids == sorted(ids, reverse=True)
    screenshot(page, "search-local")


def test_remote_search_retrieve_with_progress_then_open_the_images(env: dict[str, Any], open_page: Any) -> None:
    page = open_page("operator")
    page.get_by_label("Remote PACS").check()
    page.get_by_label("Remote AE").select_option("ORTHANC")
    page.get_by_label("Patient name").fill("remote")
    page.locator("form[role=search] button[type=submit]").click()
    expect(page.locator(".source-note")).to_have_text("2 studies from remote AE ORTHANC")
    expect(search_rows(page)).to_have_count(2)
    expect(page.locator(".study-list img")).to_have_count(0)  # no thumbnails of remote studies
    screenshot(page, "search-remote")

    row = page.locator(".study-list tbody tr", has_text="REMOTE, ALICE")
    study_uid = row.get_attribute("data-study-uid")
    row.locator("input[type=checkbox]").check()
    page.get_by_role("button", name="Retrieve selected (1)").click()
    expect(page.locator(".form-status")).to_contain_text("1 retrieve queued")
    page.get_by_role("link", name="see the loader queue").click()

    job = page.locator(f".loader-queue tr[data-study-uid='{study_uid}']").first
    expect(job.locator(".percent")).to_have_text("100%", timeout=60_000)
    expect(job).to_have_attribute("data-state", "done")
    expect(job.locator(".progress .sub")).to_have_text(f"{SLICES} / {SLICES}")
    screenshot(page, "loader-queue")

    job.get_by_role("button", name="Open").click()
    expect(page).to_have_url(re.compile(r"#/viewer/"))
    page.wait_for_function("() => window.pacskitViewer !== undefined")
    page.evaluate("() => window.pacskitViewer.ready")
    assert page.evaluate("() => window.pacskitViewer.series().length") == 1
    # the image on the canvas is the retrieved instance as pydicom renders it with the same window
    page.evaluate("() => window.pacskitViewer.setSmooth(false)")  # image pixels as squares: exact read-back
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    state = page.evaluate("() => window.pacskitViewer.state()")
    displayed = grey_matrix(page.evaluate("() => window.pacskitViewer.readDisplayedImage()"))
    by_uid = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in env["remote_files"]}
    shown = dcmread(by_uid[state["sopInstanceUid"]])
    expected = expected_grey(shown, state["window"]["center"], state["window"]["width"])
    assert displayed.shape == expected.shape == (64, 64)
    assert np.abs(displayed - expected).max() <= 2
    screenshot(page, "workstation-viewer")


def test_send_a_local_study_to_storescp(env: dict[str, Any], open_page: Any) -> None:
    ws: Workstation = env["ws"]
    scp = env["storescp"]
    study_uid = ws.study_uids[0]
    before = len(list(Path(scp.out_dir).rglob("*.dcm")))
    page = open_page("operator")
    page.locator(f".study-list tr[data-study-uid='{study_uid}'] input[type=checkbox]").check()
    page.get_by_label("Send to").select_option("STORESCP")
    page.get_by_role("button", name="Send selected (1)").click()
    expect(page.locator(".form-status")).to_contain_text("1 send queued")
    page.get_by_role("link", name="see the loader queue").click()
    job = page.locator(f".loader-queue tr[data-study-uid='{study_uid}'][data-state]", has_text="to STORESCP").first
    expect(job).to_have_attribute("data-state", "done", timeout=60_000)
    expect(job.locator(".percent")).to_have_text("100%")
    expect(job.locator(".progress .sub")).to_have_text(f"{SLICES} / {SLICES}")
    received = list(Path(scp.out_dir).rglob("*.dcm"))
    assert len(received) - before == SLICES

    # a series: expand the other study, tick its series, send it (a job with series_uids)
    other = ws.study_uids[1]
    series_uid = str(dcmread(ws.files[SLICES], stop_before_pixels=True).SeriesInstanceUID)
    assert str(dcmread(ws.files[SLICES], stop_before_pixels=True).StudyInstanceUID) == other
    page.goto(f"{ws.url}/ui/#/search")
    page.locator(f".study-list tr[data-study-uid='{other}'] button.expand").click()
    page.locator(f"tr[data-series-of='{other}'] tr[data-series-uid='{series_uid}'] input[type=checkbox]").check()
    page.get_by_label("Send to").select_option("STORESCP")
    page.get_by_role("button", name="Send selected (1)").click()
    expect(page.locator(".form-status")).to_contain_text("1 send queued")
    with ws.login("operator") as api:
        sent = next(j for j in api.get("/api/jobs").json() if j["study_uid"] == other and j["kind"] == "send")
    assert sent["series_uids"] == [series_uid]
    page.goto(f"{ws.url}/ui/#/jobs")
    expect(page.locator(f".loader-queue tr[data-job-id='{sent['id']}']")).to_have_attribute("data-state", "done")
    assert len(list(Path(scp.out_dir).rglob("*.dcm"))) - before == 2 * SLICES


def test_manager_edits_an_ae_title_and_an_addin_option(env: dict[str, Any], open_page: Any) -> None:
    ws: Workstation = env["ws"]
    page = open_page("admin", "#/manager")
    expect(page.locator(".server-manager h3").first).to_contain_text(f"{AE_TITLE} on port {ws.dicom_port}")
    screenshot(page, "manager-status")

    page.get_by_role("tab", name="AE titles").click()
    row = page.locator(".ae-titles tr[data-ae='STORESCP']")
    row.get_by_role("button", name="Edit").click()
    form = page.get_by_role("form", name="Edit STORESCP")
    form.get_by_label("Description").fill("the send destination of the UI test")
    form.get_by_role("button", name="Save").click()
    expect(row.locator("td").nth(4)).to_have_text("the send destination of the UI test")
    assert ws.server.ae_titles.get("STORESCP").description == "the send destination of the UI test"
    screenshot(page, "manager-ae-titles")

    page.get_by_role("tab", name="Add-ins").click()
    addin = page.locator("details[data-addin='txlog']")
    addin.locator("summary").click()
    field = addin.locator("[data-option='retention_days'] input")
    field.fill("45")
    addin.get_by_role("button", name="Save and reload").click()
    expect(page.locator(".form-status")).to_contain_text("txlog: retention_days saved and reloaded")
    txlog = next(a for a in ws.server.addins if a.name == "txlog")
    assert txlog.options.retention_days == 45
    assert "retention_days = 45" in (ws.folder / "server.toml").read_text()
    # a bad value is refused with the reason, nothing is written
    field.fill("-1")
    addin.get_by_role("button", name="Save and reload").click()
    expect(page.get_by_role("alert")).to_contain_text("retention_days")
    assert "retention_days = 45" in (ws.folder / "server.toml").read_text()
    screenshot(page, "manager-addins")

    page.get_by_role("tab", name="Events").click()
    expect(page.locator(".server-manager .live")).to_have_text("live")
    run_echoscu("127.0.0.1", ws.dicom_port, calling="EVENTS", called=AE_TITLE)
    expect(page.locator("ol.events li").filter(has_text="EVENTS").first).to_be_visible()
    screenshot(page, "manager-events")

    page.goto(f"{ws.url}/ui/#/settings")
    expect(page.locator(".settings tr[data-user='viewer']")).to_have_count(1)
    screenshot(page, "settings")


def test_log_viewer_tails_and_filters_the_transaction_log_and_the_audit_trail(env: dict[str, Any], open_page: Any) -> None:
    ws: Workstation = env["ws"]
    page = open_page("operator", "#/logs")
    # the live tail shows new operations as the transaction log writes them
    page.get_by_label("Live tail").check()
    expect(page.locator(".log-table[data-live=open]")).to_have_count(1)
    run_echoscu("127.0.0.1", ws.dicom_port, calling="UIECHO", called=AE_TITLE)
    run_storescu("127.0.0.1", ws.dicom_port, ws.files[:1], calling="UISTORE", called=AE_TITLE)
    rows = page.locator(".log-table tbody tr")
    expect(rows.filter(has_text="UIECHO")).to_have_count(1)
    expect(rows.filter(has_text="UISTORE")).to_have_count(1)
    page.get_by_label("Live tail").uncheck()

    page.get_by_label("AE title").fill("UIECHO")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".col-operation")).to_have_text("C-ECHO")
    expect(rows.first.locator(".col-calling_ae")).to_have_text("UIECHO")
    assert "ae=UIECHO" in page.url
    page.get_by_label("AE title").fill("")
    page.get_by_label("Operation").fill("C-STORE")
    page.get_by_role("button", name="Filter").click()
    expect(rows.first.locator(".col-operation")).to_have_text("C-STORE")
    assert set(page.locator(".log-table td.col-operation").all_inner_texts()) == {"C-STORE"}
    csv = page.get_by_role("link", name="Export CSV").get_attribute("href")
    assert csv is not None and "format=csv" in csv and "operation=C-STORE" in csv
    screenshot(page, "logs-transactions")

    page.get_by_label("Log", exact=True).select_option("audit")
    page.get_by_label("User", exact=True).fill("operator")
    page.get_by_role("button", name="Filter").click()
    # the unfiltered audit trail is shown first: wait until only the operator's events are left
    users = page.locator(".log-table td.col-user")
    expect(users.filter(has_not_text=re.compile("^operator$"))).to_have_count(0)
    expect(users.first).to_have_text("operator")
    expect(page.locator(".log-table .source-note")).to_have_text(re.compile(r"^[1-9]\d* audit events$"))
    screenshot(page, "logs-audit")


def test_the_viewer_role_sees_no_manager_logs_or_retrieve(env: dict[str, Any], open_page: Any) -> None:
    ws: Workstation = env["ws"]
    page = open_page("viewer")
    nav = page.locator("nav.main-nav a")
    expect(nav).to_have_text(["Search", "Loader queue", "Settings"])
    page.get_by_label("Remote PACS").check()
    page.locator("form[role=search] button[type=submit]").click()
    expect(page.locator(".source-note")).to_contain_text("from remote AE ORTHANC")
    expect(page.get_by_role("button", name=re.compile("^Retrieve"))).to_have_count(0)
    page.goto(f"{ws.url}/ui/#/manager")
    expect(page.get_by_role("alert")).to_have_text("Your role (viewer) may not open this page.")
    page.goto(f"{ws.url}/ui/#/search")
    expect(page.get_by_role("button", name=re.compile("^Send selected"))).to_have_count(0)
    # and the API refuses what the UI hides
    status = page.evaluate("() => fetch('/api/admin/status').then(r => r.status)")
    assert status == 403


def test_an_unreachable_remote_is_named_and_a_failed_retrieve_can_be_retried(env: dict[str, Any], open_page: Any) -> None:
    from pacskit.testing.peers import free_port

    ws: Workstation = env["ws"]
    ws.register("DEADAE", "127.0.0.1", free_port(), "nobody listens here")
    page = open_page("operator")
    page.get_by_label("Remote PACS").check()
    page.get_by_label("Remote AE").select_option("DEADAE")
    page.locator("form[role=search] button[type=submit]").click()
    expect(page.get_by_role("alert")).to_contain_text("DEADAE")  # the 502 problem's detail names the AE

    # a retrieve from it fails; Retry queues it again (and it fails again, as nobody listens)
    with ws.login("operator") as api:
        job = api.post("/api/jobs", json={"kind": "retrieve", "source": "DEADAE", "study_uid": "1.2.826.0.1.3680043.9.7778.99"}).json()
    page.goto(f"{ws.url}/ui/#/jobs")
    row = page.locator(f".loader-queue tr[data-job-id='{job['id']}']")
    expect(row).to_have_attribute("data-state", "failed")
    expect(row.locator(".state .error")).not_to_be_empty()
    expect(row.get_by_role("button", name="Cancel")).to_have_count(0)
    failed_at = row.get_attribute("data-updated")
    row.get_by_role("button", name="Retry").click()
    expect(row).not_to_have_attribute("data-updated", failed_at or "")  # queued again, ran, ...
    expect(row).to_have_attribute("data-state", "failed")
    with ws.login("operator") as api:
        assert api.get(f"/api/jobs/{job['id']}").json()["state"] == "failed"


def test_servers_of_a_servers_root_are_created_started_and_stopped(tmp_path: Path, browser: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from pacskit.admin.manager import ServiceManager
    from pacskit.testing.peers import free_port

    # the servers the manager starts run `python -m pacskit` from this checkout
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p))
    root = ServiceManager(tmp_path / "servers")
    with workstation(tmp_path / "ws", studies=0, servers=root) as ws:
        context = browser.new_context(viewport={"width": 1200, "height": 720})
        try:
            page = context.new_page()
            page.goto(f"{ws.url}/ui/#/manager/servers")
            user, password = ws.users["admin"]
            page.get_by_label("User name").fill(user)
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Log in").click()
            form = page.get_by_role("form", name="New server")
            form.get_by_label("Name").fill("SECOND")
            form.get_by_label("AE title").fill("SECOND")
            form.get_by_label("Port").fill(str(free_port()))
            form.get_by_role("button", name="Create").click()
            row = page.locator(".servers tr[data-server='SECOND']")
            expect(row.locator(".state")).to_have_text("stopped")
            row.get_by_role("button", name="Start", exact=True).click()
            expect(row.locator(".state")).to_have_text("running", timeout=90_000)
            screenshot(page, "manager-servers")
            row.get_by_role("button", name="Stop", exact=True).click()
            expect(row.locator(".state")).to_have_text("stopped", timeout=60_000)
        finally:
            context.close()
            with contextlib.suppress(Exception):
                root.stop("SECOND")


def test_a_running_retrieve_is_cancelled_then_retried(env: dict[str, Any], open_page: Any) -> None:
    import socket

    ws: Workstation = env["ws"]
    # a peer that takes the TCP connection and never answers the association request: the job stays running
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        ws.register("SILENT", "127.0.0.1", silent.getsockname()[1], "accepts TCP, never answers")
        with ws.login("operator") as api:
            job = api.post("/api/jobs", json={"kind": "retrieve", "source": "SILENT", "study_uid": "1.2.826.0.1.3680043.9.7778.98"}).json()
        page = open_page("operator", "#/jobs")
        row = page.locator(f".loader-queue tr[data-job-id='{job['id']}']")
        expect(row).to_have_attribute("data-state", "running")
        row.get_by_role("button", name="Cancel").click()
        expect(row).to_have_attribute("data-state", "cancelled")
        expect(row.get_by_role("button", name="Cancel")).to_have_count(0)
        row.get_by_role("button", name="Retry").click()
        expect(row).to_have_attribute("data-state", "running")
        row.get_by_role("button", name="Cancel").click()
        expect(row).to_have_attribute("data-state", "cancelled")
    with ws.login("operator") as api:
        assert api.get(f"/api/jobs/{job['id']}").json()["state"] == "cancelled"
