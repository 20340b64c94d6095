"""Verification add-in: answers C-ECHO (PS3.4 Annex A)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pacskit.services import AddIn, Handler, Request, SupportedContext
from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.dicom.status import Status


class VerificationAddIn(AddIn):
    """C-ECHO SCP. Always Success: reaching the handler proves the association works."""

    name = "verification"
    description = "Verification SCP (C-ECHO)"

    def presentation_contexts(self) -> Sequence[SupportedContext]:
        return [SupportedContext(VERIFICATION_SOP_CLASS)]

    def handlers(self) -> Mapping[str, Handler]:
        return {"C-ECHO": self.on_echo}

    async def on_echo(self, request: Request) -> int:
        return Status.SUCCESS
