"""Forward throughput of the routing add-in vs DCMTK storescu sending the same files directly.

    python benchmarks/forward.py [--count 1000] [--size 256]

Both send to one DCMTK storescp (writing to a temp folder). storescu: one association, every file.
Routing: the same files are in the archive, the server starts with ``route_existing = true``; the
time is from the server's start until the queue is empty (every job answered by storescp). Prints
instances/s of each and the ratio (routing / storescu).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from pacskit.addins.routing import RoutingAddIn
from pacskit.addins.storage import StorageAddIn
from pacskit.config.aetitles import FileAeRegistry, RemoteAE
from pacskit.config.settings import load_settings
from pacskit.server.server import Server, open_store
from pacskit.testing.peers import count_store_successes, run_storescu, storescp
from pacskit.testing.synth import make_series


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pacskit-fwd-bench-") as tmp:
        root = Path(tmp)
        files = make_series(root / "src", args.count, args.size, args.size)
        with storescp(root / "direct") as scp:
            start = time.perf_counter()
            out = run_storescu("127.0.0.1", scp.port, files, called=scp.ae_title)
            direct = time.perf_counter() - start
            assert count_store_successes(out) == args.count, out.stdout[-2000:]
        folder = root / "pacs"
        folder.mkdir()
        with storescp(root / "routed") as scp:
            FileAeRegistry(folder / "ae-titles.toml").add(RemoteAE(title="DEST", host="127.0.0.1", port=scp.port))
            (folder / "server.toml").write_text(
                'ae_title = "ROUTER"\nport = 0\n[admin]\nenabled = false\n'
                f'[addins.routing]\nenabled = true\nroute_existing = true\nbatch = {args.batch}\n'
                'rules = [{name = "all", destinations = ["DEST"]}]\n')
            settings = load_settings(folder)
            store = open_store(settings)
            for f in files:
                store.ingest(f, source_ae="MOD")
            store.close()

            async def run() -> float:
                server = Server(settings, addin_classes=[StorageAddIn, RoutingAddIn])
                began = time.perf_counter()
                await server.start()
                routing = next(a for a in server.addins if a.name == "routing")
                while routing.sent < args.count:
                    await asyncio.sleep(0.01)
                took = time.perf_counter() - began
                await server.stop()
                return took

            routed = asyncio.run(run())
        print(f"{args.count} CT instances {args.size}x{args.size}")
        print(f"storescu  {args.count / direct:8.1f} instances/s  ({direct:.2f} s)")
        print(f"routing   {args.count / routed:8.1f} instances/s  ({routed:.2f} s)")
        print(f"ratio     {direct / routed:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
