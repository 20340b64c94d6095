"""The add-in catalogue: what a built-in needs, any add-in has through pacskit.services.

- permissions declared by the add-in owning a service (a third-party "print"-like service);
- a misspelled hook is reported when the add-in is registered, and the add-in is not loaded;
- the audit trail is a typed base service (base.audit) one add-in keeps.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pacskit.audit import AttachError, Audit
from pacskit.audit.messages import AuditSource
from pacskit.config.aetitles import FileAeRegistry, RemoteAE
from pacskit.config.settings import load_settings
from pacskit.net import Association, CommandField, RequestedContext, connect
from pacskit.server.addin_manager import AddInManager
from pacskit.server.server import Server
from pacskit.services import AddIn, Permission, SupportedContext

PRINTISH = "1.2.826.0.1.3680043.9.9999.1"  # a private SOP class standing in for a print or media service


class Printish(AddIn):
    """A service the core knows nothing about, with its own registry name."""

    name = "printish"
    permissions = (Permission("printish", PRINTISH),)

    def presentation_contexts(self) -> list[SupportedContext]:
        return [SupportedContext(PRINTISH)]

    def handlers(self) -> dict[str, Any]:
        return {"N-CREATE": self.on_create}

    def on_create(self, request: Any) -> int:
        return 0x0000


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text('ae_title = "CATALOG"\nport = 0\ndata_dir = "data"\nopen_mode = false\n[admin]\nenabled = false\n')
    registry = FileAeRegistry(folder / "ae-titles.toml")
    registry.add(RemoteAE(title="ALLOWED", host="127.0.0.1", port=104, allowed_services={"printish"}))
    registry.add(RemoteAE(title="NOTALLOWED", host="127.0.0.1", port=104, allowed_services={"echo"}))
    registry.add(RemoteAE(title="DEFAULT", host="127.0.0.1", port=104))  # allowed_services unset: all
    return folder


async def _n_create(port: int, calling: str) -> int:
    assoc: Association = await connect("127.0.0.1", port, called_ae="CATALOG", calling_ae=calling,
                                       contexts=[RequestedContext(PRINTISH)])
    async with assoc:
        rsp, _ = await assoc.n_request(CommandField.N_CREATE_RQ, PRINTISH, None, AffectedSOPInstanceUID="1.2.3.4")
    return int(rsp["Status"])


def test_an_addin_declares_the_registry_name_of_its_service(tmp_path: Path) -> None:
    folder = _folder(tmp_path)

    async def run() -> None:
        async with Server(load_settings(folder), addin_classes=[Printish]) as server:
            assert await _n_create(server.port, "ALLOWED") == 0x0000
            assert await _n_create(server.port, "NOTALLOWED") == 0x0124  # Refused: Not Authorized
            assert await _n_create(server.port, "DEFAULT") == 0x0000

    asyncio.run(run())


class Misspelled(AddIn):
    name = "misspelled"

    def presentation_context(self) -> list[SupportedContext]:  # the hook is presentation_contexts
        return [SupportedContext("1.2.840.10008.1.1")]

    def handle(self, request: Any) -> int:  # a helper, not a misspelling
        return 0


def test_a_misspelled_hook_is_reported_at_registration() -> None:
    manager = AddInManager()
    manager.add_class(Misspelled, "test")
    assert "misspelled" not in manager.found
    assert len(manager.broken) == 1
    assert "Misspelled.presentation_context is not an add-in hook (did you mean 'presentation_contexts'?)" in manager.broken[0].error
    assert "handle" not in manager.broken[0].error


class _Sink:
    def __init__(self) -> None:
        self.source = AuditSource("TEST")
        self.messages: list[Any] = []

    def emit(self, message: Any) -> bool:
        self.messages.append(message)
        return True


def test_the_audit_service_has_one_keeper() -> None:
    audit = Audit()
    assert audit.security_alert("node-authentication", "X") is False  # nobody keeps a trail: nothing happens
    first, second = _Sink(), _Sink()
    audit.attach(first, "audit")
    assert audit.security_alert("node-authentication", "X") is True
    assert len(first.messages) == 1
    with pytest.raises(AttachError, match="'other' cannot keep the audit trail: 'audit' keeps it"):
        audit.attach(second, "other")
    audit.attach(second, "audit")  # a reload: the new instance of the same add-in takes over
    audit.detach(first)  # the old instance stopping does not remove the new trail
    assert audit.user_authentication("bob") is True
    assert len(second.messages) == 1 and len(first.messages) == 1
