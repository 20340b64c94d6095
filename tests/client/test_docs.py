"""Every Python block of docs/client.md runs, as written, against real peers: DCMTK storescp
(11112), dcmqrscp (11113, which knows PKCLIENT at 11115 and STORESCP), wlmscpfs (11114) and a
pynetdicom SCP for the N-services (11116). Only the port numbers are substituted. Blocks fenced
``py`` instead of ``python`` are fragments that need a peer these fixtures do not run (the Media
Creation SCU: tests/media runs the same calls)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ._peers import pynetdicom_n_scp, wlmscpfs
from .conftest import ME

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_page_has_examples():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_example_runs(index, tmp_path, qrscp, receiver, my_port, studies):
    code = BLOCKS[index]
    study = tmp_path / "study"
    study.mkdir()
    for path in studies["ct"]:
        shutil.copy(path, study)
    with wlmscpfs(tmp_path / "wl") as wlm, pynetdicom_n_scp() as (n_target, _):
        ports = {
            "11112": receiver.port, "11113": qrscp.port, "11114": wlm.port, "11115": my_port,
            "11116": int(n_target.rsplit(":", 1)[1]),
        }
        # the doc's AE titles are the peers' (storescp's is STORESCP, the worklist's WLM ...)
        assert receiver.ae_title == "STORESCP" and qrscp.ae_title == "QRSCP" and ME == "PKCLIENT"
        for placeholder, port in ports.items():
            code = code.replace(f"127.0.0.1:{placeholder}", f"127.0.0.1:{port}").replace(f"port={placeholder}", f"port={port}")
            code = code.replace(f"receive_port={placeholder}", f"receive_port={port}")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, f"--- example ---\n{code}\n--- output ---\n{done.stdout}\n{done.stderr}"
