"""A minimal pynetdicom Storage SCP: writes every received dataset to a file.

Baseline peer for tests and benchmarks; deliberately does nothing else (no parsing,
no indexing). Run as ``python -m pacskit.testing.pynd_scp --port P --out DIR``.

Each C-STORE is written as a DICOM Part 10 file ``DIR/<SOPInstanceUID>.dcm``:
128-byte preamble, ``DICM``, the file meta built by pynetdicom, then the dataset
bytes exactly as received (``event.encoded_dataset()``, i.e. ``event.file_meta`` +
``event.request.DataSet.getvalue()``). pynetdicom's defaults are kept (maximum PDU
16382, in-memory reassembly); the called AE title is not checked.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any


def build_ae(ae_title: str) -> Any:
    from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=ae_title)
    ae.require_called_aet = False
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    return ae


def make_store_handler(out_dir: Path) -> Any:
    from pynetdicom.dsutils import encode_file_meta

    def handle_store(event: Any) -> int:
        # Same bytes as event.encoded_dataset(), without joining them into one
        # more in-memory copy of the (possibly huge) dataset.
        request = event.request
        path = out_dir / f"{request.AffectedSOPInstanceUID}.dcm"
        with open(path, "wb") as f:
            f.write(b"\x00" * 128 + b"DICM")
            f.write(encode_file_meta(event.file_meta))
            f.write(request.DataSet.getbuffer())
        return 0x0000

    return handle_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pacskit.testing.pynd_scp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="directory for received files")
    parser.add_argument("--aet", default="PYNETDICOM", help="our AE title")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--debug", action="store_true", help="pynetdicom debug logging")
    args = parser.parse_args(argv)

    from pynetdicom import debug_logger, evt

    if args.debug:
        debug_logger()
    else:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    args.out.mkdir(parents=True, exist_ok=True)
    ae = build_ae(args.aet)

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    handlers = [(evt.EVT_C_STORE, make_store_handler(args.out))]
    print(f"pynd_scp: {args.aet} listening on {args.host}:{args.port}, writing to {args.out}",
          file=sys.stderr, flush=True)
    try:
        ae.start_server((args.host, args.port), block=True, evt_handlers=handlers)
    except KeyboardInterrupt:
        pass
    finally:
        ae.shutdown()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
