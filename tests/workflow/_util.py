"""Helpers of the workflow tests: a server folder with the worklist and MPPS add-ins, DCMTK runs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from pacskit.testing.peers import dcmtk_env, dcmtk_tool
from pacskit.testing.server import toml_line

AE = "WLPACS"
DUMPS = Path("/usr/share/doc/dcmtk/examples")


def write_settings(folder: Path, db_url: Any = None, **sections: dict[str, Any]) -> Path:
    """``server.toml`` for a test server on a free port; ``sections``: add-in name -> options."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'ae_title = "{AE}"', "port = 0", 'data_dir = "data"']
    if db_url is not None:
        url = db_url.render_as_string(hide_password=False) if hasattr(db_url, "render_as_string") else str(db_url)
        lines += ["[database]", f"url = {url!r}"]
    for name, options in sections.items():
        lines.append(f"[addins.{name}]")
        lines += [toml_line(key, value) for key, value in options.items()]
    (folder / "server.toml").write_text("\n".join(lines) + "\n")
    return folder


def dump2dcm(dump: Path, out: Path) -> Path:
    subprocess.run([dcmtk_tool("dump2dcm"), "+te", str(dump), str(out)], check=True, capture_output=True,
                   env=dcmtk_env())
    return out


def findscu_worklist(port: int, called: str, query: Path | None, out_dir: Path, keys: tuple[str, ...] = (),
                     timeout: float = 60) -> tuple[list[Dataset], str, int]:
    """``findscu -W`` with a query file and/or ``-k`` keys; the answers (``-X``), output, exit code."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rsp*.dcm"):
        old.unlink()
    argv = [dcmtk_tool("findscu"), "-v", "-W", "-aec", called, "-aet", "MODALITY", "-X", "-od", str(out_dir)]
    for key in keys:
        argv += ["-k", key]
    argv += ["127.0.0.1", str(port)]
    if query is not None:
        argv.append(str(query))
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          env=dcmtk_env(), timeout=timeout, check=False)
    answers = [dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]
    return answers, proc.stdout.decode("utf-8", errors="replace"), proc.returncode
