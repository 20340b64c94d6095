"""The query tests' server settings and DCMTK ``findscu`` runs (the server itself runs through
:func:`pacskit.testing.server.running_server`)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy.engine import URL

from pacskit.testing.peers import dcmtk_env, dcmtk_tool
from pacskit.testing.server import toml_line

AE = "QRPACS"


def write_settings(folder: Path, db_url: URL | str | None = None, **query_options: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'ae_title = "{AE}"', "port = 0", 'data_dir = "data"']
    if db_url is not None:
        url = db_url.render_as_string(hide_password=False) if isinstance(db_url, URL) else db_url
        lines += ["[database]", f"url = {url!r}"]
    lines.append("[addins.query]")
    lines += [toml_line(key, value) for key, value in query_options.items()]
    (folder / "server.toml").write_text("\n".join(lines) + "\n")
    return folder


def findscu(port: int, model: str, keys: Sequence[str | bytes], out_dir: Path, *extra: str,
            timeout: float = 120, called: str = AE) -> tuple[list[Dataset], str]:
    """Run DCMTK ``findscu -v`` (``model``: ``-S`` or ``-P``) with ``-k`` keys, extracting the answers
    (``-X``); returns the answer identifiers (pydicom) and findscu's output."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rsp*.dcm"):
        old.unlink()
    argv: list[str | bytes] = [dcmtk_tool("findscu"), "-v", model, "-aec", called, "-aet", "FINDSCU", "-X",
                               "-od", str(out_dir), *extra]
    for key in keys:
        argv += ["-k", key]
    argv += ["127.0.0.1", str(port)]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          env=dcmtk_env(), timeout=timeout, check=False)
    output = proc.stdout.decode("utf-8", errors="replace")
    answers = [dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]
    return answers, output
