"""A complete pacskit add-in: counts C-ECHOs per calling AE and answers them.

Drop this file into a server's ``addins/`` folder (or install it as a package with an entry point in the
``pacskit.addins`` group) and enable it in ``server.toml``:

    [addins.echo-counter]
    greeting = "hello"

It takes over C-ECHO from the built-in Verification add-in, so disable that one:

    [addins.verification]
    enabled = false
"""

from __future__ import annotations

from collections import Counter

from pacskit.services import AddIn, AddInOptions, Request, SupportedContext
from pacskit.dicom.uids import VERIFICATION_SOP_CLASS


class EchoCounterOptions(AddInOptions):
    greeting: str = "hello"


class EchoCounter(AddIn):
    name = "echo-counter"
    description = "Answers C-ECHO and counts them per calling AE"
    Options = EchoCounterOptions
    options: EchoCounterOptions

    def presentation_contexts(self):
        return [SupportedContext(VERIFICATION_SOP_CLASS)]

    def handlers(self):
        return {"C-ECHO": self.on_echo}

    async def start(self) -> None:
        self.counts: Counter[str] = Counter()

    async def on_echo(self, request: Request) -> int:
        caller = request.assoc.remote_ae_title
        self.counts[caller] += 1
        self.base.log.info("%s, %s (echo #%d)", self.options.greeting, caller, self.counts[caller])
        return 0x0000
