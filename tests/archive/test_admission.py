"""C-STOREs refused before they are stored: the Storage add-in's free-space watermark (0xA700 with a
comment, a log line, nothing kept) and the routing add-in's drop rules (their own status), with DCMTK
storescu as the modality; the association goes on and the index and files stay as they were."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from pacskit.addins.routing import RoutingAddIn
from pacskit.addins.storage import StorageAddIn
from pacskit.addins.verification import VerificationAddIn
from pacskit.testing.peers import count_store_successes, have_dcmtk, run_storescu
from pacskit.testing.server import running_server
from pacskit.testing.synth import make_series

pytestmark = [pytest.mark.dcmtk]


@pytest.fixture(autouse=True)
def _dcmtk_needed() -> None:
    if not have_dcmtk():
        pytest.skip("DCMTK is needed")


def test_below_the_watermark_c_stores_are_refused_with_0xa700_and_nothing_is_kept(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "pacs"
    folder.mkdir()
    usage = shutil.disk_usage(tmp_path)
    # a watermark above what is free: every C-STORE would leave less than that
    (folder / "server.toml").write_text(
        f'ae_title = "WMARK"\nport = 0\nopen_mode = true\n[admin]\nenabled = false\n'
        f"[addins.storage]\nmin_free_bytes = {usage.free + 2**30}\n")
    files = make_series(tmp_path / "src", 3, 32, 32, patient_id="WM1")
    caplog.set_level(logging.WARNING, logger="pacskit.addin.storage")
    with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn]) as server:
        sent = run_storescu("127.0.0.1", server.port, files, called="WMARK", extra=["--no-halt"])
        assert count_store_successes(sent) == 0, sent.stdout
        assert sent.stdout.count("Requesting Association") == 1  # one association, three refusals
        assert sent.stdout.count("Out of Resources") + sent.stdout.count("OutOfResources") == 3, sent.stdout
        assert server.store is not None and server.store.count("instances") == 0
        refusals = [r.getMessage() for r in caplog.records if "refused (0xA700)" in r.getMessage()]
        assert len(refusals) == 3 and "MiB free, watermark" in refusals[0], refusals
    # no stored file; in files/tmp only the engine's pool of spare (empty, reusable) receive files
    leftovers = [p for p in folder.rglob("*") if p.is_file() and p.suffix not in (".toml", ".lock", ".part")
                 and not p.name.startswith("index.db")]
    assert leftovers == []
    assert all(p.stat().st_size == 0 for p in folder.rglob("*.part"))

    # a watermark the disk is above: stored
    (folder / "server.toml").write_text(
        'ae_title = "WMARK"\nport = 0\nopen_mode = true\n[admin]\nenabled = false\n'
        "[addins.storage]\nmin_free_bytes = 1\nmin_free_percent = 0.001\n")
    with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn]) as server:
        sent = run_storescu("127.0.0.1", server.port, files, called="WMARK")
        assert count_store_successes(sent) == 3, sent.stdout
        assert server.store is not None and server.store.count("instances") == 3


def test_routing_drop_rules_answer_with_their_status_and_store_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "pacs"
    folder.mkdir()
    (folder / "server.toml").write_text(
        'ae_title = "DROPPER"\nport = 0\nopen_mode = true\n[admin]\nenabled = false\n'
        "[addins.routing]\nenabled = true\nrules = [\n"
        '  {name = "not-from-test", calling_aes = ["TESTMOD"], drop_status = 0xC000, '
        'drop_comment = "TESTMOD may not store here"},\n'
        '  {name = "no-mr", modalities = ["MR"], drop_status = 0},\n'
        "]\n")
    ct = make_series(tmp_path / "ct", 2, 16, 16, patient_id="DROP1")
    mr = make_series(tmp_path / "mr", 2, 16, 16, patient_id="DROP2", modality="MR")
    with running_server(folder, addin_classes=[VerificationAddIn, StorageAddIn, RoutingAddIn]) as server:
        assert server.store is not None
        refused = run_storescu("127.0.0.1", server.port, ct, called="DROPPER", calling="TESTMOD", extra=["--no-halt"])
        assert count_store_successes(refused) == 0, refused.stdout
        assert "Error: Cannot understand" in refused.stdout or "CannotUnderstand" in refused.stdout or \
            "0xc000" in refused.stdout.lower(), refused.stdout
        assert server.store.count("instances") == 0
        silent = run_storescu("127.0.0.1", server.port, mr, called="DROPPER", calling="MRI")
        assert count_store_successes(silent) == 2, silent.stdout  # acknowledged, and dropped
        assert server.store.count("instances") == 0
        kept = run_storescu("127.0.0.1", server.port, ct, called="DROPPER", calling="CT1")
        assert count_store_successes(kept) == 2, kept.stdout
        assert server.store.count("instances") == 2


def test_a_drop_rule_without_status_or_with_destinations_is_refused_at_load() -> None:
    from pydantic import ValidationError

    from pacskit.addins.routing import Rule

    with pytest.raises(ValidationError, match="give destinations"):
        Rule(name="nothing")
    with pytest.raises(ValidationError, match="no destinations"):
        Rule(name="both", destinations=["X"], drop_status=0xA700)
    with pytest.raises(ValidationError, match="not a final C-STORE status"):
        Rule(name="pending", drop_status=0xFF00)
