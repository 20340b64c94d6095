"""Cost of the admin API's statistics: C-ECHO round trips on one association, ``[admin] statistics``
on vs off (in-process server and requestor on one event loop, so the per-message overhead of the event
observers is as large a share of the total as it gets). Runs alternate; medians of 7 are reported.

    .venv/bin/python benchmarks/admin_statistics.py [N]
"""

import asyncio
import shutil
import statistics as st
import sys
import tempfile
import time
from pathlib import Path
from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import RequestedContext, connect
from pacskit.server.server import Server
from pacskit.config.settings import load_settings
from pacskit.addins.verification import VerificationAddIn
import logging

logging.disable(logging.WARNING)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
async def one(stats: bool) -> float:
    d = Path(tempfile.gettempdir()) / f"pacskit-bench-stats-{stats}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    (d / "server.toml").write_text(f'ae_title = "B"\nport = 0\n[admin]\nstatistics = {str(stats).lower()}\n')
    s = Server(load_settings(d), addin_classes=[VerificationAddIn], store=object())
    await s.start()
    try:
        a = await connect("127.0.0.1", s.port, called_ae="B", contexts=[RequestedContext(VERIFICATION_SOP_CLASS)])
        for _ in range(200):
            await a.echo()
        t = time.perf_counter()
        for _ in range(N):
            await a.echo()
        dt = time.perf_counter() - t
        await a.release()
        return dt
    finally:
        await s.stop()
async def main():
    r = {True: [], False: []}
    for _ in range(7):
        for s in (False, True):
            r[s].append(await one(s))
    for s in (False, True):
        m = st.median(r[s])
        print(f"statistics {'on ' if s else 'off'}: {N/m:.0f} C-ECHO/s (median of 7; {m/N*1e6:.1f} us each)")
    print(f"throughput on/off: {st.median(r[False])/st.median(r[True]):.3f}")
asyncio.run(main())
