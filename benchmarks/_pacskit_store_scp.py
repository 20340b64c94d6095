"""The pacskit acceptor used by the benchmarks: a minimal Storage SCP that writes every dataset to a file.

Accepts Verification and every storage SOP class pynetdicom knows, in every transfer syntax
(``ALL_TRANSFER_SYNTAXES``). Received datasets stream into temporary Part 10 files in ``--out``
(``NetConfig(temp_dir=out)``), and the C-STORE handler renames each to ``<out>/<counter>.dcm``
(``os.replace``, same folder), then answers Success. Everything else is the engine's default.

    python benchmarks/_pacskit_store_scp.py --port P --out DIR [--aet PACSKIT] [--profile FILE]

``--profile FILE`` runs the server under cProfile and writes the stats to FILE on SIGTERM/SIGINT
(``--profile-clock cpu`` times functions by process CPU time instead of wall clock).
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
    from pacskit.net import Acceptor, NetConfig, Request, Services, SupportedContext

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    counter = itertools.count()

    async def on_store(req: Request) -> int:
        assert req.received is not None
        req.received.move_to(f"{out}/{next(counter)}.dcm")
        return 0

    async def on_echo(req: Request) -> int:
        return 0

    services = Services()
    services.register("C-STORE", on_store)
    services.register("C-ECHO", on_echo)
    abstract = [VERIFICATION_SOP_CLASS] + [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    contexts = [SupportedContext(a, ALL_TRANSFER_SYNTAXES) for a in dict.fromkeys(abstract)]
    config = NetConfig(temp_dir=out, max_associations=args.max_associations)
    acceptor = Acceptor(args.aet, contexts, services, config=config)
    await acceptor.start("127.0.0.1", args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await acceptor.close(grace=1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True, help="folder for received files (also the engine's temp_dir)")
    parser.add_argument("--aet", default="PACSKIT")
    parser.add_argument("--max-associations", type=int, default=100, help="NetConfig default: 100")
    parser.add_argument("--profile", metavar="FILE", help="run under cProfile; write stats to FILE at exit")
    parser.add_argument("--profile-clock", choices=("wall", "cpu"), default="wall",
                        help="cProfile timer: wall clock (default) or this process's CPU time")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.profile:
        import cProfile

        import time

        profiler = cProfile.Profile(time.process_time) if args.profile_clock == "cpu" else cProfile.Profile()
        profiler.enable()
        try:
            asyncio.run(serve(args))
        finally:
            profiler.disable()
            profiler.dump_stats(args.profile)
    else:
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
