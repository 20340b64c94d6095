"""server.toml rewritten by the manager or the admin API keeps the operator's comments (tomlkit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacskit.config.settings import SettingsError, update_settings_file

ORIGINAL = """\
# Our modality gateway: ask Jane before changing the port.
ae_title = "COMMENTS"
port = 11112  # the firewall opens this one only
data_dir = "data"

[addins.storage]
# the modalities resend after a timeout: keep what came first
duplicate_policy = "keep-first"
"""


def test_comments_survive_an_update(tmp_path: Path) -> None:
    (tmp_path / "server.toml").write_text(ORIGINAL)

    def mutate(data: dict) -> None:  # type: ignore[type-arg]
        data["addins"]["storage"]["timeout"] = 12
        data.setdefault("addins", {}).setdefault("query", {})["max_results"] = 50

    settings = update_settings_file(tmp_path, mutate)
    text = (tmp_path / "server.toml").read_text()
    assert "# Our modality gateway: ask Jane before changing the port." in text
    assert "port = 11112  # the firewall opens this one only" in text
    assert "# the modalities resend after a timeout: keep what came first" in text
    assert settings.addin_section("storage") == {"duplicate_policy": "keep-first", "timeout": 12}
    assert settings.addin_section("query") == {"max_results": 50}


def test_an_invalid_update_leaves_the_file_alone(tmp_path: Path) -> None:
    (tmp_path / "server.toml").write_text(ORIGINAL)
    with pytest.raises(SettingsError, match="port"):
        update_settings_file(tmp_path, lambda data: data.update(port="not a port"))
    assert (tmp_path / "server.toml").read_text() == ORIGINAL
