"""CPU cost of idle associations: 100 open, silent associations to (a) the pacskit acceptor and, for
comparison, (b) a minimal pynetdicom SCP.

Each server runs as its own process on 127.0.0.1 (the same scripts as ``engine_store.py``; association
limits raised to 128 on both). This process opens 100 associations to it with ``pacskit.net.connect``
(Verification context) and keeps them open without traffic: the same client for both servers, and one
that costs nothing while idle (an asyncio loop), so it never competes with the server for the CPU.
After 2 s to settle, the server process's CPU time (user + system, all threads, ``/proc/<pid>/stat``)
is sampled over 10 s and reported as % of one core. Afterwards every association must still answer a
C-ECHO, proving the 100 were alive for the whole window.

    .venv/bin/python benchmarks/idle.py [--associations N] [--settle S] [--window S]

Target: pacskit < 1% of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_seconds, receiver, thread_cpu_ns  # noqa: E402

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS  # noqa: E402
from pacskit.net import Association, NetConfig, RequestedContext, connect

TARGET_PERCENT = 1.0


async def measure(kind: str, count: int, settle: float, window: float) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix=f"pacskit-idle-{kind}-"))
    assocs: list[Association] = []
    try:
        with receiver(kind, out, extra=["--max-associations", "128"]) as rx:
            config = NetConfig(acse_timeout=30, network_timeout=None)
            for i in range(count):
                try:
                    assoc = await connect(
                        "127.0.0.1",
                        rx.port,
                        called_ae=rx.ae_title,
                        calling_ae=f"IDLE{i:03d}",
                        contexts=[RequestedContext(VERIFICATION_SOP_CLASS)],
                        config=config,
                    )
                except Exception as exc:
                    raise RuntimeError(f"{kind}: association {i + 1} failed: {exc}\n{rx.log_tail()}") from exc
                assocs.append(assoc)
            threads = len(os.listdir(f"/proc/{rx.proc.pid}/task"))
            await asyncio.sleep(settle)
            self0 = resource.getrusage(resource.RUSAGE_SELF)
            t0, c0, n0 = time.monotonic(), cpu_seconds(rx.proc.pid), thread_cpu_ns(rx.proc.pid)
            await asyncio.sleep(window)
            t1, c1, n1 = time.monotonic(), cpu_seconds(rx.proc.pid), thread_cpu_ns(rx.proc.pid)
            self1 = resource.getrusage(resource.RUSAGE_SELF)
            alive = sum(1 for a in assocs if a.is_established and not (a.is_aborted or a.is_released))
            statuses = await asyncio.gather(*(a.echo() for a in assocs), return_exceptions=True)
            echoed = sum(1 for s in statuses if s == 0)
            await asyncio.gather(*(a.release() for a in assocs), return_exceptions=True)
            assocs.clear()
            elapsed = t1 - t0
            client_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
            return {
                "percent": 100.0 * (c1 - c0) / elapsed,
                "percent_ns": 100.0 * (n1 - n0) / 1e9 / elapsed,
                "cpu": c1 - c0,
                "elapsed": elapsed,
                "threads": threads,
                "alive": alive,
                "echoed": echoed,
                "client_percent": 100.0 * client_cpu / elapsed,
            }
    finally:
        for a in assocs:
            a.abort()
        shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--associations", type=int, default=100)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between opening and measuring")
    parser.add_argument("--window", type=float, default=10.0, help="measurement window in seconds")
    args = parser.parse_args()
    n = args.associations
    results = {}
    for kind, label in (("pacskit", "(a) pacskit acceptor"), ("pynetdicom", "(b) pynetdicom SCP")):
        print(f"{label}: opening {n} associations ...", flush=True)
        r = asyncio.run(measure(kind, n, args.settle, args.window))
        results[kind] = r
        print(
            f"{label}: {n} idle associations: server CPU {r['cpu']:.2f} s in {r['elapsed']:.1f} s = "
            f"{r['percent']:.2f}% of one core (schedstat: {r['percent_ns']:.4f}%); {r['threads']} server threads; "
            f"{r['alive']}/{n} still established, {r['echoed']}/{n} answered C-ECHO afterwards; "
            f"client process {r['client_percent']:.2f}%",
            flush=True,
        )
    print()
    print(f"{'server':<22} {'associations':>12} {'CPU % of one core':>18}")
    for kind, label in (("pacskit", "(a) pacskit acceptor"), ("pynetdicom", "(b) pynetdicom SCP")):
        print(f"{label:<22} {n:>12} {results[kind]['percent']:>18.3f}")
    a = results["pacskit"]
    ok = a["percent"] < TARGET_PERCENT and a["alive"] == n and a["echoed"] == n
    print()
    print(f"Target: pacskit < {TARGET_PERCENT}% of a core with {n} idle associations: "
          f"{a['percent']:.3f}%  {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
