"""`pip install pacskit` without extras: the engine, the server and the SQLite store work.

The optional packages (the drivers, the codecs, cryptography, PyJWT; pynetdicom and tomli-w, which
are test tools) are made unimportable in a child process, which then runs a server with the core
add-ins, stores an instance, queries it and loads the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OPTIONAL = ["numpy", "pylibjpeg", "openjpeg", "libjpeg", "rle", "psycopg", "pymysql", "cryptography", "jwt",
            "pynetdicom", "tomli_w", "obstore", "boto3", "botocore", "s3transfer"]

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, importlib.abc

    BLOCKED = set(sys.argv[2].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Block())

    from pathlib import Path
    from pacskit.addins.query import QueryAddIn
    from pacskit.addins.retrieve import RetrieveAddIn
    from pacskit.addins.storage import StorageAddIn
    from pacskit.addins.verification import VerificationAddIn
    from pacskit.client import EchoScu, QueryRetrieveScu, StoreScu
    from pacskit.config.settings import load_settings
    from pacskit.server.server import Server
    from pacskit.testing.synth import make_instance

    folder = Path(sys.argv[1])
    (folder / "server.toml").write_text('ae_title = "CORE"\\nport = 0\\ndata_dir = "data"\\n')
    path = make_instance(folder / "in" / "one.dcm", rows=8, cols=8, patient_id="CORE-1")

    async def main():
        classes = [VerificationAddIn, StorageAddIn, QueryAddIn, RetrieveAddIn]
        async with Server(load_settings(folder), addin_classes=classes) as server:
            remote = f"CORE@127.0.0.1:{server.port}"
            assert await EchoScu(remote).echo() == 0
            report = await StoreScu(remote).store([path])
            assert report.ok, report
            studies = await QueryRetrieveScu(remote).find({"PatientID": "CORE-1"}, level="STUDY")
            assert len(studies.records) == 1, studies

    asyncio.run(main())
    from pacskit.cli import app  # noqa: F401  the whole CLI loads (pacskit certs says what to install when it is used)
    from pacskit.store import open_blob_store
    try:  # the s3 blob store says what to install
        open_blob_store("s3", folder / "node", {"bucket": "pacs"})
    except ValueError as exc:
        assert "pip install 'pacskit[s3]'" in str(exc), exc
    else:
        raise AssertionError("the s3 store opened without obstore")
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("core ok")
    """
)


def test_the_core_needs_no_extra(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), ",".join(OPTIONAL)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "core ok" in proc.stdout
