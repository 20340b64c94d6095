"""A pacskit Storage SCP in its own process, for memory measurements (tests/net/test_large_dataset.py).

    python tests/net/_store_server.py --out DIR [--aet PACSKIT] [--max-pdu N]

Binds 127.0.0.1 on a free port and prints ``PORT <n>`` on stdout once listening. Received datasets stream
into ``DIR`` (the engine's temp_dir); the C-STORE handler renames each to ``DIR/<n>.dcm`` and prints
``STORED <path>``. Stops on SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import signal
import sys


async def serve(args: argparse.Namespace) -> None:
    from pynetdicom import AllStoragePresentationContexts

    from pacskit.dicom.uids import ALL_TRANSFER_SYNTAXES, VERIFICATION_SOP_CLASS
    from pacskit.net import Acceptor, NetConfig, Services, SupportedContext

    out = os.path.abspath(args.out)
    counter = itertools.count()

    async def on_store(req):
        path = req.received.move_to(f"{out}/{next(counter)}.dcm")
        print(f"STORED {path}", flush=True)
        return 0

    services = Services()
    services.register("C-STORE", on_store)
    services.register("C-ECHO", lambda req: 0)
    abstract = [VERIFICATION_SOP_CLASS] + [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    contexts = [SupportedContext(a, ALL_TRANSFER_SYNTAXES) for a in dict.fromkeys(abstract)]
    config = NetConfig(temp_dir=out, max_pdu_length=args.max_pdu)
    acceptor = Acceptor(args.aet, contexts, services, config=config)
    await acceptor.start("127.0.0.1", 0)
    print(f"PORT {acceptor.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await acceptor.close(grace=1.0)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--aet", default="PACSKIT")
    parser.add_argument("--max-pdu", type=int, default=262_144)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
