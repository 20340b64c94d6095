"""What listing commands print (issue 15, item 15): whole values, --json / --csv everywhere, no column
twice, ISO 8601 event times, progress totals for C-MOVE / C-GET, progress for check and reindex."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from datetime import datetime

import pytest
from typer.testing import CliRunner

from pacskit.cli import app
from pacskit.testing import make_series

from .test_first_run import Serving, in_tmp  # noqa: F401  (fixture)

runner = CliRunner()


def invoke(*args: object, columns: int = 80):
    # CliRunner's output is not a terminal: what a pipe gets. 80 columns: a narrow terminal's COLUMNS.
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})


@pytest.fixture
def served(in_tmp):  # noqa: F811
    server = Serving(in_tmp, "--port", "0")
    port = int(re.search(r":(\d+)", server.first_line.split(" listening on ")[1]).group(1))
    try:
        yield in_tmp, f"PACSKIT@127.0.0.1:{port}"
    finally:
        server.stop()


def test_tables_print_whole_uids_into_a_pipe_and_no_column_twice(served):
    folder, address = served
    paths = make_series(folder / "in", 2, rows=8, cols=8, patient_name="DOE^JANE")
    assert invoke("store", address, folder / "in").exit_code == 0
    import pydicom

    study_uid = pydicom.dcmread(paths[0]).StudyInstanceUID
    result = invoke("find", address, "-k", "PatientName=DOE*", "-k", "StudyInstanceUID", "-k", "StudyDate",
                    "-k", "PatientName")
    assert result.exit_code == 0, result.output
    assert study_uid in result.output  # whole, not "1.2.…"
    assert "…" not in result.output
    header = next(line for line in result.output.splitlines() if "study_instance_uid" in line)
    names = [c.strip() for c in re.split(r"[┃│|]", header) if c.strip()]
    assert len(names) == len(set(names)), names
    assert "PatientName" not in names and "StudyDate" not in names  # the typed columns patient_name, study_date


@pytest.mark.parametrize(
    "command",
    [["ae", "list"], ["status"], ["clients"], ["addins"], ["server", "list"], ["worklist", "list"], ["log"]],
)
def test_every_listing_command_has_json_and_csv(served, command):
    folder, _ = served
    assert invoke("ae", "add", "ORTHANC_WITH_A_LONG", "--host", "127.0.0.1", "--port", 4242,
                  "--description", "x" * 120).exit_code in (0, 2)
    as_json = invoke(*command, "--json")
    assert as_json.exit_code == 0, as_json.output
    json.loads(as_json.output.split("\n0 entries")[0])
    as_csv = invoke(*command, "--csv")
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.reader(io.StringIO(as_csv.output)))
    assert rows and all(len(r) == len(rows[0]) for r in rows), as_csv.output
    both = invoke(*command, "--json", "--csv")
    assert both.exit_code == 2 and "exclude each other" in both.output


def test_ae_list_prints_long_values_whole_when_piped(in_tmp):  # noqa: F811
    description = "a description much longer than an eighty column terminal would show in one table cell"
    assert invoke("ae", "add", "PEER", "--host", "peer.example.org", "--port", 104, "--description", description).exit_code == 0
    result = invoke("ae", "list")
    assert description in result.output, result.output
    assert json.loads(invoke("ae", "list", "--json").output)[0]["description"] == description


def test_events_carry_iso_8601_utc_times():
    from pacskit.server.stats import Notifications

    async def main() -> dict:
        notes = Notifications(asyncio.get_running_loop())
        queue = notes.subscribe()
        notes.publish("admin", action="reload")
        return await asyncio.wait_for(queue.get(), 5)

    event = asyncio.run(main())
    when = datetime.fromisoformat(event["time"])
    assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0


class _Bar:
    def __init__(self) -> None:
        self.updates: list[dict] = []

    def update(self, task, **kwargs) -> None:
        self.updates.append(kwargs)


def test_retrieve_progress_bar_gets_its_total_from_the_counts():
    from pacskit.cli.client import _progress_handler
    from pacskit.client.query import RetrieveProgress

    bar = _Bar()
    update = _progress_handler(bar, 1)
    update(RetrieveProgress(0xFF00, 3, 1, 0, 0))
    assert bar.updates[-1] == {"completed": 1, "total": 4}
    update(RetrieveProgress(0x0000, None, 4, 0, 0))
    assert bar.updates[-1] == {"completed": 4, "total": 4}
    # a retrieve too fast for any Pending response: the final response alone gives the total
    bar = _Bar()
    _progress_handler(bar, 1)(RetrieveProgress(0xB000, None, 2, 1, 0))
    assert bar.updates[-1] == {"completed": 3, "total": 3}


def test_check_and_reindex_report_progress(tmp_path):
    from pacskit.store import DataStore, FilesystemBlobStore

    store = DataStore.open(f"sqlite:///{tmp_path}/index.db", blobs=FilesystemBlobStore(tmp_path / "files"))
    try:
        for path in make_series(tmp_path / "in", 3, rows=8, cols=8):
            assert store.ingest(path, source_ae="TEST").stored  # the file is consumed
        seen: list[tuple[int, int]] = []
        assert store.check(progress=lambda done, total: seen.append((done, total))).ok
        assert seen[-1] == (3, 3) and [d for d, _ in seen] == [1, 2, 3]
        seen.clear()
        assert store.reindex(progress=lambda done, total: seen.append((done, total))).indexed == 3
        assert seen[-1] == (3, 3) and all(t == 3 for _, t in seen)
    finally:
        store.close()


def test_a_narrow_terminal_wraps_long_values_instead_of_cutting_them(in_tmp):  # noqa: F811
    uid = "1.2.826.0.1.3680043.8.498.84195926952968648250667104754228103334"
    assert invoke("ae", "add", "PEER", "--host", "127.0.0.1", "--port", 104, "--description", uid).exit_code == 0
    # FORCE_COLOR makes rich treat the output as a terminal of COLUMNS columns
    result = runner.invoke(app, ["ae", "list"], env={"COLUMNS": "80", "FORCE_COLOR": "1", "TERM": "xterm"})
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "…" not in text
    cells = [line.split("│")[-2].strip() for line in text.splitlines() if line.count("│") > 2]
    assert uid in "".join(cells), text
