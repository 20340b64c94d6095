"""First run and everyday use of the CLI (issue 15, items 12-14): the default server folder, one-line
errors, validated worklist values, start-up output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pacskit.cli import app

runner = CliRunner()
SRC = Path(__file__).resolve().parents[2] / "src"


def invoke(*args: object, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "300"}, input=input)


class Serving:
    """``pacskit serve`` run as a user runs it: a process in a folder, with its default data folder."""

    def __init__(self, cwd: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "PYTHONUNBUFFERED": "1"}
        for name in ("PACSKIT_SERVER", "PACSKIT_SERVERS"):
            env.pop(name, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pacskit", "serve", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        self.first_line = self.proc.stdout.readline()  # blocks until the server says it listens (or exits)
        assert " listening on " in self.first_line, self.stop()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        out, err = self.proc.communicate(timeout=60)
        return self.first_line + out + err


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PACSKIT_SERVER", raising=False)
    monkeypatch.delenv("PACSKIT_SERVERS", raising=False)
    return tmp_path


# ---------------------------------------------------------------------- item 12: the default server folder


def test_default_server_is_a_server_folder_every_admin_command_reaches(in_tmp):
    server = Serving(in_tmp, "--port", "0")
    try:
        settings = tomllib.loads((in_tmp / "pacs-data" / "server.toml").read_text())
        assert settings["ae_title"] == "PACSKIT" and settings["port"] == 0
        assert settings["database"]["url"] == "sqlite:///{data_dir}/index.db"  # the defaults, written out
        status = invoke("status", "--json")
        assert status.exit_code == 0, status.output
        assert json.loads(status.output)["status"]["ae_title"] == "PACSKIT"
        clients = invoke("clients", "--json")
        assert clients.exit_code == 0 and json.loads(clients.output) == [], clients.output
        addins = invoke("addins", "--json")
        assert addins.exit_code == 0 and "storage" in {a["name"] for a in json.loads(addins.output)}
        reload = invoke("reload")
        assert reload.exit_code == 0 and "reloaded" in reload.output, reload.output
        stop = invoke("server", "stop")
        assert stop.exit_code == 0 and "stopped pacs-data" in stop.output, stop.output
        assert server.proc.wait(60) == 0
    finally:
        server.stop()
    # item 14: stopping a stopped server is an error with one line
    again = invoke("server", "stop")
    assert again.exit_code == 1 and again.output.strip() == "error: pacs-data is not running"


def test_server_toml_is_written_once_with_the_first_flags_and_then_kept(in_tmp):
    server = Serving(in_tmp, "--port", "0", "--ae", "FIRST")
    server.stop()
    path = in_tmp / "pacs-data" / "server.toml"
    assert tomllib.loads(path.read_text())["ae_title"] == "FIRST"
    path.write_text(path.read_text().replace('"FIRST"', '"EDITED"'))
    server = Serving(in_tmp)
    try:
        assert "pacskit EDITED listening" in server.first_line  # the README's advice: edit server.toml
    finally:
        server.stop()
    assert tomllib.loads(path.read_text())["ae_title"] == "EDITED"


def test_a_flag_for_one_run_does_not_hide_the_server_from_admin_commands(in_tmp):
    Serving(in_tmp, "--port", "0").stop()  # the first start writes server.toml (AE PACSKIT)
    server = Serving(in_tmp, "--ae", "ONCE")
    try:
        status = invoke("status", "--json")
        assert status.exit_code == 0, status.output
        assert json.loads(status.output)["status"]["ae_title"] == "ONCE"
    finally:
        server.stop()


def test_no_server_anywhere_says_how_to_start_one(in_tmp):
    result = invoke("status")
    assert result.exit_code == 2
    assert "pacskit serve" in result.output and "server create --ae pacs-data" not in result.output


# ---------------------------------------------------------------------- item 14: one-line errors


def test_startup_says_what_matters_in_a_few_lines(in_tmp):
    out = Serving(in_tmp, "--port", "0").stop()
    info = [line for line in out.splitlines() if " INFO " in line]
    assert len(info) <= 4, out
    assert not any("alembic" in line for line in info), out
    assert any("add-ins: " in line and "storage" in line and "verification" in line for line in info), out
    assert any("admin API on" in line for line in info), out
    assert "data in " in out


def test_ae_add_errors_are_one_line(in_tmp):
    result = invoke("ae", "add", "A VERY LONG AE TITLE X", "--host", "h", "--port", 104, "--user-identity", "bad")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: title: "), result.output
    assert "user_identity" in lines[0] and "pydantic" not in lines[0]


@pytest.mark.parametrize("args", [["serve", "--port", "99999"], ["ae", "add", "X", "--host", "h", "--port", "70000"],
                                  ["server", "create", "--ae", "X", "--port", "-1"]])
def test_an_invalid_port_is_named_as_such(in_tmp, args):
    result = invoke(*args)
    assert result.exit_code == 2
    assert "--port" in result.output and "server.toml" not in result.output
    assert not (in_tmp / "pacs-data").exists()


def test_verbose_is_a_repeated_flag_in_help_and_code():
    help_text = invoke("echo", "--help").output
    line = next(line for line in help_text.splitlines() if "--verbose" in line)
    assert "<int>" not in line and "INTEGER" not in line
    assert invoke("echo", "-vv", "--help").exit_code == 0


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=baddate", "is not a date"),
        ("ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20250230", "is not a date"),
        ("ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=2561", "is not a time"),
        ("StudyInstanceUID=1.2.abc", "is not a UID"),
        ("ScheduledProcedureStepSequence[0].Modality=ABCDEFGHIJKLMNOPQ", "is not a code string"),
        ("PatientName=A^B^C^D^E^F", "is not a person name"),
        ("PatientBirthDate=1990-01-01", "is not a date"),
    ],
)
def test_worklist_add_refuses_malformed_values(in_tmp, key, problem):
    result = invoke("worklist", "add", "-k", "PatientID=P1", "-k", key)
    assert result.exit_code == 2, result.output
    assert problem in result.output and len(result.output.strip().splitlines()) == 1
    listed = invoke("worklist", "list", "--json")
    assert listed.exit_code == 0 and json.loads(listed.output) == []  # nothing stored


def test_worklist_add_accepts_good_and_legacy_values(in_tmp):
    result = invoke(
        "worklist", "add", "-k", "PatientID=P1", "-k", "PatientName=DOE^JOHN", "-k", "PatientBirthDate=1990.01.31",
        "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20250101",
        "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=10:30",
        "-k", "ScheduledProcedureStepSequence[0].Modality=MR",
    )
    assert result.exit_code == 0, result.output


def test_worklist_import_names_the_bad_file(in_tmp):
    (in_tmp / "pacs-data").mkdir()  # an existing data folder: `worklist list` refuses a missing one
    folder = in_tmp / "wl"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps({"PatientID": "P1", "ScheduledProcedureStepSequence": [{"Modality": "MR"}]}))
    (folder / "b.json").write_text(json.dumps(
        {"PatientID": "P2", "ScheduledProcedureStepSequence": [{"ScheduledProcedureStepStartDate": "baddate"}]}))
    (folder / "c.json").write_text(json.dumps({"NotAKeyword": "x"}))
    result = invoke("worklist", "import", folder)
    assert result.exit_code == 2
    assert str(folder / "b.json") in result.output and "is not a date" in result.output, result.output
    (folder / "b.json").unlink()
    result = invoke("worklist", "import", folder)
    assert result.exit_code == 2 and str(folder / "c.json") in result.output, result.output
    assert json.loads(invoke("worklist", "list", "--json").output) == []  # all or none
