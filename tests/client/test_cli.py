"""``pacskit echo | store | find | move | get`` against real peers, and their exit codes."""

from __future__ import annotations

import csv
import io
import json

import pydicom
import pytest
from typer.testing import CliRunner

from pacskit.cli import app
from pacskit.testing import free_port, make_series, storescp

from ._peers import tool, wlmscpfs
from .conftest import ME, address

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


def test_echo_registered_name_and_errors(tmp_path, receiver):
    data = tmp_path / "pacs"
    assert invoke("ae", "add", "RX", "--host", "127.0.0.1", "--port", receiver.port, "--data-dir", data).exit_code == 0
    ok = invoke("echo", "RX", "--data-dir", data)
    assert ok.exit_code == 0 and "Success" in ok.output
    assert invoke("echo", address(receiver)).exit_code == 0
    unknown = invoke("echo", "NOBODY", "--data-dir", data)
    assert unknown.exit_code == 2 and "not registered" in unknown.output
    assert invoke("echo", "bad@address").exit_code == 2
    refused = invoke("echo", f"X@127.0.0.1:{free_port()}")
    assert refused.exit_code == 3 and "refused" in refused.output


def test_store_exit_codes(tmp_path):
    tool("storescp")
    files = make_series(tmp_path / "in", 3)
    with storescp(tmp_path / "out") as peer:
        result = invoke("store", address(peer), tmp_path / "in", "-q")
        assert result.exit_code == 0, result.output
        assert "3 succeeded" in result.output
    with storescp(tmp_path / "out2", extra_args=["--refuse"]) as peer:
        rejected = invoke("store", address(peer), files[0])
    assert rejected.exit_code == 4 and "rejected" in rejected.output
    with storescp(tmp_path / "out3", extra_args=["--abort-after"]) as peer:
        aborted = invoke("store", address(peer), *files)
    assert aborted.exit_code == 6 and "aborted" in aborted.output
    assert invoke("store", "X@127.0.0.1:104", tmp_path / "missing").exit_code == 2


def test_store_timeout_exit_code(tmp_path):
    """storescp sleeps 3 s while receiving; with --timeout 1 no C-STORE-RSP comes in time: exit 5."""
    tool("storescp")
    files = make_series(tmp_path / "in", 2)
    with storescp(tmp_path / "out", extra_args=["--sleep-during", "3"]) as peer:
        result = invoke("store", address(peer), *files, "--timeout", "1", "-q")
    assert result.exit_code == 5, result.output
    assert "no DIMSE response within 1.0 s" in result.output and "2 failed" in result.output


def test_find_table_json_csv(qrscp):
    table = invoke("find", address(qrscp), "-k", "PatientName=DOE*", "-k", "InstitutionName")
    assert table.exit_code == 0, table.output
    assert "DOE^JOHN" in table.output and "ROE^JANE" not in table.output
    as_json = invoke("find", address(qrscp), "-k", "0010,0020=PK2", "--json")
    rows = json.loads(as_json.stdout)
    assert [r["patient_name"] for r in rows] == ["ROE^JANE"]
    as_csv = invoke("find", address(qrscp), "--level", "PATIENT", "--model", "patient", "--csv")
    got = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert sorted(r["patient_id"] for r in got) == ["PK1", "PK2"]
    failed = invoke("find", address(qrscp), "--level", "SERIES")
    assert failed.exit_code == 1 and "status 0x" in failed.output
    assert invoke("find", address(qrscp), "-k", "NoSuchKeyword=1").exit_code == 2
    assert invoke("find", address(qrscp), "--level", "WARD").exit_code == 2


def test_find_worklist(tmp_path):
    with wlmscpfs(tmp_path / "wl") as peer:
        result = invoke("find", address(peer), "--model", "worklist", "-k", "ScheduledProcedureStepSequence[0].Modality=MR", "--json")
    assert result.exit_code == 0
    assert {r["modality"] for r in json.loads(result.stdout)} == {"MR"}


def test_move_and_get(qrscp, receiver, studies, my_port, tmp_path):
    study = str(pydicom.dcmread(studies["mr"][0]).StudyInstanceUID)
    moved = invoke("move", address(qrscp), "-k", f"StudyInstanceUID={study}", "--dest", receiver.ae_title)
    assert moved.exit_code == 0 and "2 completed" in moved.output
    to_us = invoke("move", address(qrscp), "-k", f"StudyInstanceUID={study}", "--into", tmp_path / "m", "--port", my_port, "--listen-host", "127.0.0.1", "-aet", ME)
    assert to_us.exit_code == 0, to_us.output
    assert len(list((tmp_path / "m").glob("*.dcm"))) == 2
    unknown = invoke("move", address(qrscp), "-k", f"StudyInstanceUID={study}", "--dest", "NOBODY")
    assert unknown.exit_code == 1 and "0xA801" in unknown.output
    assert invoke("move", address(qrscp), "--into", tmp_path / "x").exit_code == 2  # no --port
    got = invoke("get", address(qrscp), "-k", f"StudyInstanceUID={study}", "--into", tmp_path / "g")
    assert got.exit_code == 0 and "2 received" in got.output
    assert len(list((tmp_path / "g").glob("*.dcm"))) == 2


@pytest.mark.parametrize("command", ["store", "find", "move", "get", "echo"])
def test_help(command):
    assert invoke(command, "--help").exit_code == 0


def test_progress_bars_on_a_terminal(qrscp, studies, tmp_path, receiver):
    """With a terminal (forced with FORCE_COLOR) store and get draw a rich progress bar on stderr
    that ends at n/n; stdout keeps the summary only."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, FORCE_COLOR="1", COLUMNS="120")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "pacskit", *map(str, args)], capture_output=True, text=True, env=env, timeout=120)

    stored = run("store", address(receiver), *studies["mr"])
    assert stored.returncode == 0, stored.stderr
    assert "2/2" in stored.stderr and "━" in stored.stderr and "2 succeeded" in stored.stdout
    study = str(pydicom.dcmread(studies["ct"][0]).StudyInstanceUID)
    got = run("get", address(qrscp), "-k", f"StudyInstanceUID={study}", "--into", tmp_path / "g")
    assert got.returncode == 0, got.stderr
    assert "5/5" in got.stderr and "5 received" in got.stdout


def test_tls_options(tmp_path):
    """echo and store over TLS to DCMTK storescp (+tls, pynetdicom's test certificate)."""
    from pathlib import Path

    import pynetdicom

    tool("storescp")
    certs = Path(pynetdicom.__file__).parent / "tests" / "cert_files"
    files = make_series(tmp_path / "in", 2)
    tls = ["--tls-ca", certs / "server.crt", "--tls-name", "pynetdicom.test"]
    with storescp(tmp_path / "out", extra_args=["+tls", str(certs / "server.key"), str(certs / "server.crt"), "-ic"]) as peer:
        assert invoke("echo", address(peer), *tls).exit_code == 0
        stored = invoke("store", address(peer), *files, *tls, "-q")
        assert stored.exit_code == 0 and "2 succeeded" in stored.output
        wrong_name = invoke("echo", address(peer), "--tls-ca", certs / "server.crt")
        assert wrong_name.exit_code == 3 and "certificate" in wrong_name.output.lower()
        assert invoke("echo", address(peer), "--tls-ca", tmp_path / "missing.pem").exit_code == 2


def test_storing_files_does_not_import_pydicom(tmp_path):
    """`pacskit store` only moves bytes: importing pydicom (~0.4 s) would be most of a short run's time."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import pacskit.cli.client, pacskit.client, pacskit.net\n"
        "from pacskit.client import StoreScu, EchoScu\n"
        "from pacskit.client.store import _is_dataset\n"
        "assert not _is_dataset('x')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydicom', 'numpy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
