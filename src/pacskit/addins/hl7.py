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
Messages are parsed by python-hl7 (the ``hl7`` extra: ``pip install pacskit[hl7]``), which splits on
the separators of MSH-1/MSH-2 and unescapes values (``\\F\\`` ``\\S\\`` ``\\T\\`` ``\\R\\`` ``\\E\\``, hex); the
MLLP server and block writer are python-hl7's asyncio ``hl7.mllp`` (blocks of at most 1 MiB; bytes before a block's ``0x0B`` are skipped, not the block). Text is read as
UTF-8 (HL7 v2.8's preferred character set; invalid bytes replaced).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import Field

try:  # the `hl7` extra; without it the add-in is listed but refuses to start
    import hl7
    import hl7.mllp
except ImportError:  # pragma: no cover - exercised only without the extra
    hl7 = None

from pacskit.services import AddIn, AddInOptions, WorkflowEvent

log = logging.getLogger("pacskit.addin.hl7")

MAX_MESSAGE = 1 << 20
START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"  # MLLP framing (HL7 v2.5 appendix C)
NEEDS_LIBRARY = "the hl7 add-in needs python-hl7: pip install 'pacskit[hl7]'"


class Hl7Options(AddInOptions):
    enabled: bool = False
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(2575, ge=0, le=65535, description="MLLP port (0: any free port)")


class Message:
    """One HL7 v2 message parsed by python-hl7 (``hl7.parse``), read with the standard's numbering.

    ``value("PID", 3)`` is PID-3.1 (MSH counts MSH-1, the field separator, as the standard does);
    ``components("PID", 5)`` the components of PID-5's first repetition; ``repetitions("PID", 3)`` every
    repetition (``~``). Values are unescaped (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` give ``| ^ & ~ \\``, and
    the hex and highlight sequences of HL7 v2.5 section 2.7); a component with sub-components (``&``)
    reads as its first sub-component. Absent segments, fields and components read as ``""``.
    """

    def __init__(self, text: str) -> None:
        text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
        if not text.startswith("MSH") or len(text) < 8:
            raise ValueError("not an HL7 message (no MSH segment)")
        if hl7 is None:
            raise RuntimeError(NEEDS_LIBRARY)
        try:
            self.parsed = hl7.parse(text)
        except (hl7.ParseException, ValueError, IndexError) as exc:
            raise ValueError(f"not an HL7 message: {exc}") from exc

    def _segment(self, name: str) -> Any:
        try:
            return self.parsed.segment(name)
        except KeyError:
            return None

    def has(self, name: str) -> bool:
        """Whether the message has a segment ``name``."""
        return self._segment(name) is not None

    def raw(self, name: str, number: int) -> str:
        """Field ``name-number`` as sent (escaped, separators kept): for log lines."""
        segment = self._segment(name)
        if segment is None or number >= len(segment):
            return ""
        return str(segment(number))

    def repetitions(self, name: str, number: int) -> list[list[str]]:
        """Every repetition of field ``name-number``, each as its unescaped components."""
        segment = self._segment(name)
        if segment is None or number >= len(segment):
            return []
        if name == "MSH" and number in (1, 2):
            return [[str(segment(number))]]
        field = segment(number)
        result = []
        for index, repetition in enumerate(field, start=1):
            count = len(repetition) if isinstance(repetition, hl7.Repetition) else 1
            result.append([self.parsed.extract_field(name, 1, number, index, c, 1) for c in range(1, count + 1)])
        return result

    def components(self, name: str, number: int) -> list[str]:
        """The unescaped components of the first repetition of ``name-number`` (``[""]`` when absent)."""
        return (self.repetitions(name, number) or [[""]])[0]

    def value(self, name: str, number: int, component: int = 1) -> str:
        """One unescaped component of the first repetition of ``name-number``."""
        parts = self.components(name, number)
        return parts[component - 1] if component <= len(parts) else ""

    @property
    def event(self) -> str:
        return self.value("MSH", 9, 2)

    def ack(self, code: str, text: str = "") -> bytes:
        """The ACK (``MSA-1`` = ``code``; ``MSA-3`` and, unless AA, ``ERR-8`` = ``text``) built by
        python-hl7's ``create_ack`` (sender and receiver swapped, MSH-10 echoed in MSA-2)."""
        ack = self.parsed.create_ack(code, message_id=f"ACK{self.value('MSH', 10)}"[:20])
        ack.segment("MSH").assign_field(self.raw("MSH", 11) or "P", 11)
        ack.segment("MSH").assign_field(self.raw("MSH", 12) or "2.5", 12)
        ack.segment("MSA").assign_field(self.parsed.escape(text[:80]), 3)
        if code != "AA":
            err = ack.create_segment([ack.create_field(["ERR"])])
            err.assign_field("E", 4)
            err.assign_field(self.parsed.escape(text[:200]), 8)
            ack.append(err)
        return (str(ack) + "\r").encode("utf-8")


PN_DELIMITERS = str.maketrans({"^": " ", "=": " ", "\\": " "})


def pn_from_xpn(parts: list[str]) -> str:
    """HL7 XPN (family^given^middle^suffix^prefix) as a DICOM PN (family^given^middle^prefix^suffix)."""
    family, given, middle, suffix, prefix = ((parts + [""] * 5)[:5])
    # an unescaped HL7 value may hold PN's own delimiters (^ components, = groups, \\ values): spaces
    clean = [part.translate(PN_DELIMITERS).strip() for part in (family, given, middle, prefix, suffix)]
    return "^".join(clean).rstrip("^")


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
        if hl7 is None:
            raise RuntimeError(NEEDS_LIBRARY)
        self.server = await hl7.mllp.start_hl7_server(self._client, self.options.host, self.options.port,
                                                     limit=MAX_MESSAGE)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("hl7: MLLP on %s:%d", self.options.host, self.port)

    async def stop(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _client(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while True:
                # python-hl7's readblock() drops a block that does not begin with <VT>, message and
                # all; bytes before the <VT> (a stray newline after the previous block) are skipped here
                try:
                    data = await reader.readuntil(END_BLOCK)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    log.warning("hl7: a message over %d bytes; connection closed", MAX_MESSAGE)
                    return
                start = data.find(START_BLOCK)
                if start < 0:
                    log.warning("hl7: %d bytes without the MLLP start byte <VT>; skipped", len(data))
                    continue
                block = data[start + 1: -len(END_BLOCK)]
                answer = await self.handle(block.decode("utf-8", "replace"))
                writer.writeblock(answer)
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
            log.warning("hl7: %s %s not applied: %s", message.raw("MSH", 9), message.raw("MSH", 10), exc)
            return message.ack("AE", str(exc))
        return message.ack("AA", note)

    def _apply(self, message: Message) -> str:
        event = message.event
        user = f"hl7:{message.value('MSH', 3)}"
        patient_id = message.value("PID", 3)

        def audit(part: Any) -> None:
            self.base.audit.instances_accessed(part.study_instance_uid, patient_id, user=user, action="U",
                                               sop_classes=part.sop_classes)

        note = self._apply_event(message, event, patient_id, audit)
        if patient_id and message.has("PID"):
            detail = {"event": event, "message_type": message.raw("MSH", 9), "control_id": message.value("MSH", 10)}
            modality = message.value("OBR", 24)
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
            name = pn_from_xpn(message.components("PID", 5)) if message.raw("PID", 5) else None
            birth = message.value("PID", 7)[:8] or None
            sex = dicom_sex(message.value("PID", 8)) if message.raw("PID", 8) else None
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
            prior = message.value("MRG", 1)
            if not patient_id or not prior:
                raise ValueError("A40 needs PID-3 and MRG-1")
            try:
                report = merge_patients(store, prior, patient_id, on_study=audit)
            except CorrectionError as exc:
                if f"no patient {prior!r}" in str(exc):
                    return "prior patient not in the archive"
                raise
            return f"merged {len(report.studies)} studies"
        log.info("hl7: %s ignored", message.raw("MSH", 9))
        return "ignored"
