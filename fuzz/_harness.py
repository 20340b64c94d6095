"""What the three harnesses in this folder share: the seed corpus on disk and the atheris entry point.

A harness module defines ``one_input(data: bytes) -> None`` (raises only on a finding: an exception
the code under test does not document) and ``seeds() -> list[bytes]`` (small valid inputs it builds
itself, so the corpus needs no files in the repository). ``main()`` writes the seeds to a corpus
folder, instruments pacskit's functions for coverage, and hands over to libFuzzer: any exception that
escapes ``one_input`` is reported as a crash with the input saved under ``-artifact_prefix``.

Run one directly (``python fuzz/fuzz_pdu.py -max_total_time=60``) or all of them with ``fuzz/run.sh``.
The same ``one_input`` functions run under hypothesis in tests/security/test_properties.py, so a
harness that rots fails the test suite, not only the fuzz run.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_corpus(name: str, seeds: list[bytes], folder: str | None = None) -> Path:
    """Write ``seeds`` into ``folder`` (default: a temp folder per harness); returns the folder."""
    root = Path(folder) if folder else Path(tempfile.gettempdir()) / f"pacskit-fuzz-corpus-{name}"
    root.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (root / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    return root


def main(name: str, one_input: Callable[[bytes], None], seeds: Callable[[], list[bytes]]) -> None:
    """libFuzzer entry point: ``argv`` holds libFuzzer flags (``-max_total_time=60``, ``-runs=N``...).

    ``PACSKIT_FUZZ_CORPUS`` names the corpus folder to grow (default: a temp folder); the generated
    seeds are always added to it first.
    """
    import logging
    import warnings

    import atheris  # the `fuzz` extra: pip install -e .[fuzz]

    warnings.simplefilter("ignore")  # pydicom warns about every odd value the mutator makes
    logging.getLogger("pydicom").setLevel(logging.ERROR)

    corpus = write_corpus(name, seeds(), os.environ.get("PACSKIT_FUZZ_CORPUS"))
    # Coverage feedback from pacskit's own code only: instrumenting every loaded module (pydicom,
    # SQLAlchemy, pydantic, FastAPI...) took minutes before the first input on a 2-core machine.
    import gc
    import types

    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and (obj.__module__ or "").startswith("pacskit"):
            atheris.instrument_func(obj)
    args = [a for a in sys.argv if not a.startswith("--")]
    if not any(not a.startswith("-") for a in args[1:]):
        args.append(str(corpus))
    atheris.Setup(args, one_input)
    atheris.Fuzz()
