"""EchoScu: C-ECHO (Verification, PS3.4 Annex A)."""

from __future__ import annotations

from pacskit.client._scu import Scu, run_sync
from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import RequestedContext

__all__ = ["EchoScu"]


class EchoScu(Scu):
    """Verification SCU. ``await EchoScu("ORTHANC@127.0.0.1:4242").echo()`` returns the worst status
    of ``repeat`` C-ECHOs on one association (0x0000 when all succeeded)."""

    async def echo(self, repeat: int = 1) -> int:
        async with await self.associate([RequestedContext(VERIFICATION_SOP_CLASS)]) as assoc:
            worst = 0
            for _ in range(repeat):
                status = await assoc.echo()
                worst = status if status else worst
            return worst

    def echo_sync(self, repeat: int = 1) -> int:
        """:meth:`echo` for plain scripts."""
        return run_sync(self.echo(repeat))
