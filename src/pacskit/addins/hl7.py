"""HL7 v2 ADT add-in: patient updates (A08) and merges (A40) received over MLLP drive the archive's corrections.

Off by default. ``[addins.hl7]``: ``enabled = true``, ``port = 2575`` (0: any free port),
``host = "127.0.0.1"``. Each message is framed by MLLP (``0x0B`` … ``0x1C 0x0D``) and answered with an
ACK (``MSA|AA`` when applied, ``MSA|AE`` with the reason in ``MSA-3``/``ERR`` when not):

==========  ====================================================================================
ADT^A08     update patient information: PID-3 (first identifier) names the patient; PID-5 (name,
            XPN family^given^middle^suffix^prefix, written as the DICOM PN family^given^middle^
            prefix^suffix), PID-7 (birth date), PID-8 (sex: M, F, O; anything else: O) are written to
            the index and every file of the patient (:func:`pacskit.store.correction.update_patient`)
ADT^A40     merge patient: MRG-1 (prior identifier) is merged into PID-3
            (:func:`pacskit.store.correction.merge_patients`)
others      acknowledged AA and ignored (logged at INFO)
==========  ====================================================================================

Identifiers are matched on the ID component only (the assigning authority is not compared: pacskit's
Issuer of Patient ID rarely equals an HL7 assigning authority). A patient the archive does not hold is
acknowledged AA (nothing to change). Every change is audited (*DICOM Instances Accessed*, action U,
active participant ``hl7:<sending application>``). An A08 also rewrites the patient's name, birth date
and sex in the patient's worklist steps not yet started (status SCHEDULED, ARRIVED, READY or none), so
the modality reads the corrected demographics (:meth:`WorklistStore.update_patient`).

Every message with a PID segment is then published to the other add-ins as a
:class:`~pacskit.services.WorkflowEvent` (``kind = "hl7"``, the PID-3 identifier, ``event`` such as
``A04`` or ``O01``, and OBR-24 as ``modality`` when given), before the ACK is sent: the prefetch
add-in fetches the patient's prior studies on admissions and orders.
The parser is the HL7 v2 encoding rules (segments on CR, the separators of MSH-1/MSH-2); no library
is needed for these fields.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from pydantic import Field

from pacskit.services import AddIn, AddInOptions, WorkflowEvent

log = logging.getLogger("pacskit.addin.hl7")

START, END = b"\x0b", b"\x1c\x0d"
MAX_MESSAGE = 1 << 20


class Hl7Options(AddInOptions):
    enabled: bool = False
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(2575, ge=0, le=65535, description="MLLP port (0: any free port)")


class Message:
    """One HL7 v2 message: ``field("PID", 3)`` is PID-3 (1-based as in the standard; MSH counts MSH-1)."""

    def __init__(self, text: str) -> None:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
        if not text.startswith("MSH") or len(text) < 8:
            raise ValueError("not an HL7 message (no MSH segment)")
        self.field_sep = text[3]
        self.component_sep = text[4]
        self.repetition_sep = text[5]
        self.segments = [seg.split(self.field_sep) for seg in text.split("\r") if seg.strip()]

    def segment(self, name: str) -> list[str] | None:
        return next((seg for seg in self.segments if seg[0] == name), None)

    def field(self, name: str, number: int) -> str:
        seg = self.segment(name)
        if seg is None:
            return ""
        index = number - 1 if name == "MSH" else number  # MSH-1 is the separator itself
        return seg[index] if index < len(seg) else ""

    def components(self, name: str, number: int) -> list[str]:
        return self.field(name, number).split(self.repetition_sep)[0].split(self.component_sep)

    @property
    def event(self) -> str:
        parts = self.components("MSH", 9)
        return parts[1] if len(parts) > 1 else ""

    def ack(self, code: str, text: str = "") -> bytes:
        f, c = self.field_sep, self.component_sep
        now = dt.datetime.now().strftime("%Y%m%d%H%M%S")
        msh = [ "MSH", self.segment("MSH")[1] if self.segment("MSH") else "^~\\&",  # type: ignore[index]
                self.field("MSH", 5), self.field("MSH", 6), self.field("MSH", 3), self.field("MSH", 4), now, "",
                f"ACK{c}{self.event}", f"ACK{self.field('MSH', 10)}"[:20], self.field("MSH", 11) or "P",
                self.field("MSH", 12) or "2.5"]
        segments = [f.join(msh), f.join(["MSA", code, self.field("MSH", 10), text.replace(f, " ")[:80]])]
        if code != "AA":
            segments.append(f.join(["ERR", "", "", "", "E", "", "", "", text.replace(f, " ")[:200]]))
        return ("\r".join(segments) + "\r").encode("utf-8")


def pn_from_xpn(parts: list[str]) -> str:
    """HL7 XPN (family^given^middle^suffix^prefix) as a DICOM PN (family^given^middle^prefix^suffix)."""
    family, given, middle, suffix, prefix = (parts + [""] * 5)[:5]
    return "^".join([family, given, middle, prefix, suffix]).rstrip("^")


def dicom_sex(value: str) -> str:
    return value if value in ("M", "F", "O") else ("O" if value else "")


class Hl7AddIn(AddIn):
    name = "hl7"
    description = "HL7 v2 ADT over MLLP: A08 patient update, A40 merge, applied to the archive"
    Options = Hl7Options
    options: Hl7Options

    async def start(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        if self.base.store is None:
            log.error("hl7: the server has no store; not listening")
            return
        self.server = await asyncio.start_server(self._client, self.options.host, self.options.port)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("hl7: MLLP on %s:%d", self.options.host, self.port)

    async def stop(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    await reader.readuntil(START)
                    frame = await reader.readuntil(END)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    log.warning("hl7: a message over the stream limit; connection closed")
                    return
                text = frame[: -len(END)].decode("utf-8", "replace")
                answer = await self.handle(text)
                writer.write(START + answer + END)
                await writer.drain()
        finally:
            writer.close()

    async def handle(self, text: str) -> bytes:
        """Apply one message; return its ACK (without MLLP framing)."""
        try:
            message = Message(text)
        except ValueError as exc:
            log.warning("hl7: %s", exc)
            return f"MSH|^~\\&|||||||ACK|0|P|2.5\rMSA|AR||{exc}\r".encode()
        try:
            note = await asyncio.to_thread(self._apply, message)
        except Exception as exc:
            log.warning("hl7: %s %s not applied: %s", message.field("MSH", 9), message.field("MSH", 10), exc)
            return message.ack("AE", str(exc))
        return message.ack("AA", note)

    def _apply(self, message: Message) -> str:
        event = message.event
        user = f"hl7:{message.field('MSH', 3)}"
        patient_id = message.components("PID", 3)[0]

        def audit(part: Any) -> None:
            self.base.audit.instances_accessed(part.study_instance_uid, patient_id, user=user, action="U",
                                               sop_classes=part.sop_classes)

        note = self._apply_event(message, event, patient_id, audit)
        if patient_id and message.segment("PID") is not None:
            detail = {"event": event, "message_type": message.field("MSH", 9), "control_id": message.field("MSH", 10)}
            modality = message.components("OBR", 24)[0] if message.segment("OBR") is not None else ""
            if modality:
                detail["modality"] = modality
            self.base.workflow.publish(WorkflowEvent("hl7", patient_id, detail))
        return note

    def _apply_event(self, message: Message, event: str, patient_id: str, audit: Any) -> str:
        from pacskit.store.correction import CorrectionError, merge_patients, update_patient
        from pacskit.store.workflow.worklist import WorklistStore

        store = self.base.store
        assert store is not None
        if event == "A08":
            if not patient_id:
                raise ValueError("A08 without PID-3")
            name = pn_from_xpn(message.components("PID", 5)) if message.field("PID", 5) else None
            birth = message.field("PID", 7)[:8] or None
            sex = dicom_sex(message.field("PID", 8)) if message.field("PID", 8) else None
            steps = WorklistStore(store.index).update_patient(patient_id, name=name, birth_date=birth, sex=sex)
            if steps:
                log.info("hl7: A08 %s: %d scheduled worklist steps updated", patient_id, len(steps))
            try:
                report = update_patient(store, patient_id, name=name, birth_date=birth, sex=sex, on_study=audit)
            except CorrectionError as exc:
                if "no patient" in str(exc):
                    return f"patient not in the archive; {len(steps)} worklist steps updated"
                raise
            return f"updated {len(report.studies)} studies, {len(steps)} worklist steps"
        if event == "A40":
            prior = message.components("MRG", 1)[0]
            if not patient_id or not prior:
                raise ValueError("A40 needs PID-3 and MRG-1")
            try:
                report = merge_patients(store, prior, patient_id, on_study=audit)
            except CorrectionError as exc:
                if f"no patient {prior!r}" in str(exc):
                    return "prior patient not in the archive"
                raise
            return f"merged {len(report.studies)} studies"
        log.info("hl7: %s ignored", message.field("MSH", 9))
        return "ignored"
