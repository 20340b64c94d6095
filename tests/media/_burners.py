"""A third-party burner for the tests, loaded by the add-in as ``media._burners:GatedBurner``: it
signals that burning started (``<gate>.started``) and then waits until the file ``gate`` exists (or
the request is cancelled) before putting the volumes into ``path`` like the folder burner."""

from __future__ import annotations

import threading
from pathlib import Path

from pacskit.media.burners import BurnCancelled, BurnJob, FolderBurner


class GatedBurner:
    name = "gated"
    formats = ("iso",)

    def __init__(self, path: str, gate: str) -> None:
        self.folder = FolderBurner(path, "iso")
        self.gate = Path(gate)

    def burn(self, job: BurnJob) -> list[str]:
        Path(f"{self.gate}.started").write_text(job.request_uid)
        pause = threading.Event()
        while not self.gate.exists():
            if job.cancelled():
                raise BurnCancelled("cancelled")
            pause.wait(0.02)
        return self.folder.burn(job)
