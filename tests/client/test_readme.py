"""The README's "Try it" sequence, run as written on a fresh copy of the repository (issue 15, item 13).

The copy holds what a clone of the current tree holds (``git ls-files`` plus new files not ignored:
no ``.venv``, no ``pacs-data``), so the test also sees changes not committed yet. It does not build a
second ``.venv`` (minutes): ``./run`` is pointed at the environment running this test with
``PACSKIT_VENV``, which makes ``./run`` use the copy's own ``src/`` (see the header of ``run``).
Everything else is the README's block itself, taken from README.md at run time: only the port
(a free one instead of 11112, also given to ``serve``) and the example paths (``some-folder/``, ``some.dcm``) are replaced.
The server is started in the background and ``echo --wait`` is the very next command, as a user
types them; ``server stop`` ends it, and the script waits for the background job to exit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pacskit.testing import free_port, make_series
from pacskit.testing.peers import dcmtk_env, have_dcmtk

REPO = Path(__file__).resolve().parents[2]


def try_it_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Try it") :]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "README.md: no ```sh block under '## Try it'"
    return match.group(1)


def fresh_copy(dest: Path) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: cannot tell the repository's files from local ones")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        rel = name.decode()
        src = REPO / rel
        if not src.is_file():  # deleted in the work tree
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    assert not (dest / ".venv").exists() and not (dest / "pacs-data").exists()
    return dest


@pytest.mark.slow
def test_readme_try_it_on_a_fresh_copy(tmp_path):
    if sys.prefix == sys.base_prefix:
        pytest.skip("the suite does not run in a virtual environment that ./run could reuse")
    if not have_dcmtk():
        pytest.skip("DCMTK is not installed (the README's block uses storescu and findscu)")
    clone = fresh_copy(tmp_path / "pacskit")
    series = tmp_path / "some-folder"
    make_series(series, 3, rows=8, cols=8, patient_name="DOE^JANE")
    single = make_series(tmp_path / "one", 1, rows=8, cols=8, patient_name="DOE^JOHN")[0]
    port = free_port()
    block = (
        try_it_block()
        .replace("./run serve &", "./run serve --port 11112 &")  # the README's default port, made explicit
        .replace("11112", str(port))
        .replace("some-folder/", f"{series}/")
        .replace("some.dcm", str(single))
    )
    script = (
        "set -euo pipefail\n"
        "trap 'kill %1 2>/dev/null || true' EXIT\n"  # a failed step must not leave the server running
        + block
        + "wait\n"  # the background server has exited after `server stop`
        + "trap - EXIT\n"
    )
    env = dcmtk_env(os.environ)
    env["PACSKIT_VENV"] = sys.prefix
    env["COLUMNS"] = "200"
    for name in ("PYTHONPATH", "PACSKIT_SERVER", "PACSKIT_SERVERS"):
        env.pop(name, None)
    proc = subprocess.run(
        ["bash", "-c", script], check=False, cwd=clone, env=env, capture_output=True, text=True, timeout=240,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"README block failed ({proc.returncode}):\n{script}\n---\n{out}"
    assert f"C-ECHO to PACSKIT@127.0.0.1:{port}: Success" in out
    assert "C-STORE to PACSKIT: 3 " in out, out
    assert "2 match(es)" in out, out  # two studies: the folder's and the one file's
    assert re.search(r"PACSKIT on 127\.0\.0\.1:\d+ \(pid \d+\)", out), out
    assert "stopped pacs-data" in out, out
    # The default server is a full server folder, in the folder the commands ran in.
    assert (clone / "pacs-data" / "server.toml").is_file()
    assert (clone / "pacs-data" / "index.db").is_file()


def test_run_keeps_the_callers_folder_for_relative_paths(tmp_path):
    """``./run`` used to change into the repository: ``./run certs init tls`` wrote the lab CA's key
    into the repository (issue 15, item 16). Relative paths now mean the folder the user is in."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("the suite does not run in a virtual environment that ./run could reuse")
    clone = fresh_copy(tmp_path / "pacskit")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PACSKIT_VENV": sys.prefix}
    for name in ("PYTHONPATH", "PACSKIT_SERVER", "PACSKIT_SERVERS"):
        env.pop(name, None)
    for args in (["certs", "init", "tls"], ["ae", "add", "PEER", "--host", "127.0.0.1", "--port", "104"]):
        proc = subprocess.run([str(clone / "run"), *args], check=False, cwd=work, env=env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (work / "tls" / "ca.key").is_file() and (work / "pacs-data" / "ae-titles.toml").is_file()
    assert not (clone / "tls").exists() and not (clone / "pacs-data").exists()
