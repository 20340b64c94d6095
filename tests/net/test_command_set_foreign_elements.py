"""Command sets carrying elements outside group 0000 (issue 15 item 5).

PS3.7 6.3.1 allows only group 0000 in a command set, but real peers add more: Orthanc 1.10 puts the
Failed SOP Instance UID List (0008,0058) into a failed C-GET response (see
tests/client/test_interop_orthanc.py). DCMTK and Orthanc answer such requests; so must we, as SCP and as
SCU: the element is kept on the decoded command (``Command.foreign_elements``), reported in a warning,
and never sent on.
"""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt

from pacskit.dicom.uids import VERIFICATION_SOP_CLASS
from pacskit.net import Request, Services
from pacskit.net.dimse import Command, CommandField

from ._util import AE as PACSKIT_AE
from ._util import LOCALHOST, serving

FAILED_LIST = 0x00080058
FAILED_UIDS = ["1.2.3.4", "1.2.3.55"]


def test_foreign_elements_are_kept_on_decode_and_never_encoded():
    ours = Command({"CommandField": 0x8010, "MessageIDBeingRespondedTo": 7, "CommandDataSetType": 0x0101, "Status": 0xA702})
    value = "\\".join(FAILED_UIDS).encode() + b"\x00"
    wire = ours.encode() + struct.pack("<HHL", 0x0008, 0x0058, len(value)) + value
    decoded = Command.decode(wire)
    assert decoded.command_field == CommandField.C_GET_RSP and decoded.status == 0xA702
    assert decoded.foreign_elements == {FAILED_LIST: value}
    assert decoded.foreign_uids(FAILED_LIST) == FAILED_UIDS
    assert decoded.foreign_uids(0x00080018) == []
    assert decoded.encode() == ours.encode()  # not sent on in anything built from it


@pytest.mark.pynetdicom
def test_pynetdicom_c_echo_with_an_element_outside_group_0000_is_answered(caplog):
    """pynetdicom sends a C-ECHO-RQ whose command set also holds (0008,0058): the acceptor answers
    Success (as DCMTK and Orthanc do), the handler sees the element, a warning names it, and the
    association stays up for a second C-ECHO."""
    seen: list[dict[int, bytes]] = []

    async def on_echo(request: Request) -> int:
        seen.append(request.command.foreign_elements)
        return 0

    services = Services()
    services.register("C-ECHO", on_echo)

    def add_foreign_element(event) -> None:
        event.message.command_set.add_new(FAILED_LIST, "UI", FAILED_UIDS)

    def scu(port: int) -> tuple[list[int], bool]:
        ae = AE(ae_title="PYND_SCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(VERIFICATION_SOP_CLASS, [ImplicitVRLittleEndian])
        assoc = ae.associate(LOCALHOST, port, ae_title=PACSKIT_AE, evt_handlers=[(evt.EVT_DIMSE_SENT, add_foreign_element)])
        try:
            assert assoc.is_established
            statuses = [int(rsp.Status) if rsp else -1 for rsp in (assoc.send_c_echo(), assoc.send_c_echo())]
            aborted = assoc.is_aborted
            assoc.release()
            return statuses, aborted
        finally:
            if assoc.is_alive():
                assoc.abort()
            ae.shutdown()

    async def main() -> tuple[list[int], bool]:
        async with serving(services) as acceptor:
            return await asyncio.to_thread(scu, acceptor.port)

    with caplog.at_level(logging.WARNING, logger="pacskit.net"):
        statuses, aborted = asyncio.run(main())
    assert statuses == [0x0000, 0x0000] and not aborted
    assert len(seen) == 2 and all(FAILED_LIST in elements for elements in seen)
    warnings = [r.getMessage() for r in caplog.records if "outside group 0000" in r.getMessage()]
    assert len(warnings) == 1 and "(0008,0058)" in warnings[0] and "C-ECHO-RQ" in warnings[0]
