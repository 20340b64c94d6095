"""Query add-in: the C-FIND SCP of the PACS (PS3.4 Annex C), Patient Root and Study Root.

Every identifier becomes one SQL statement over the index (:mod:`pacskit.store.query`, where the matching
rules are documented); matches are streamed as Pending responses from the database cursor, so neither
memory nor the time to the first response depends on the number of matches. The handler is a plain
generator of encoded answers: the engine runs it in the server's thread pool a batch at a time and sends
the answers from the event loop; a C-CANCEL from the peer stops the pulling, closes the generator (and
with it the cursor) and answers Cancel (0xFE00).

Statuses (PS3.4 C.4.1.1.4):

========  ==================================================================================
0xFF00    pending: one match (every requested key present, filled or empty)
0xFF01    pending, and some requested keys are not supported for matching (returned as found/empty)
0x0000    all matches sent
0xFE00    cancelled by the peer (C-CANCEL)
0xA700    more matches than ``max_results``; nothing was sent; narrow the query
0xA900    the identifier does not fit the SOP class (no or a wrong Query/Retrieve Level; a missing
          unique key of a higher level in a hierarchical query)
0xC000    a value the SCP cannot understand (a malformed date, time, integer; wildcards in a UID)
========  ==================================================================================

Relational queries (no unique keys of higher levels needed) are used when the peer asks for them with
SOP Class Extended Negotiation and ``relational`` is on. StudyDate and StudyTime are matched each on its
own (the time range within each day, PS3.4 C.2.2.2.5.1) unless the peer negotiated combined date-time
matching (byte 2), which is agreed to: then they are one date-time range.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from pydantic import Field

from pacskit.services import AddIn, AddInOptions, Handler, Request, Response, SupportedContext
from pacskit.store.query import (
    PATIENT_ROOT_FIND,
    STUDY_ROOT_FIND,
    FindQuery,
    InvalidQuery,
    TooManyMatches,
    compile_find,
    find_encoded,
)
from pacskit.dicom.status import Status

_MODELS = {PATIENT_ROOT_FIND: "PATIENT", STUDY_ROOT_FIND: "STUDY"}

_RETRIEVE_AE_TITLE = 0x00080054
_INSTANCE_AVAILABILITY = 0x00080056
_OUR_KEYS = (_RETRIEVE_AE_TITLE, _INSTANCE_AVAILABILITY)


class QueryOptions(AddInOptions):
    max_results: int | None = Field(
        10000, ge=1, description="refuse a query with more matches than this (0xA700); null: no limit"
    )
    page_size: int = Field(500, ge=1, le=100000, description="rows fetched from the database cursor at a time")
    relational: bool = Field(True, description="accept relational queries when the peer negotiates them")
    read_headers: bool = Field(
        True, description="fill requested keys the index lacks from the stored file headers (else empty)"
    )


class QueryAddIn(AddIn):
    name = "query"
    description = "Query SCP (C-FIND), Patient Root and Study Root"
    Options = QueryOptions
    options: QueryOptions

    def presentation_contexts(self) -> Sequence[SupportedContext]:
        return [SupportedContext(uid) for uid in _MODELS]

    def handlers(self) -> Mapping[str, Handler]:
        return {"C-FIND": self.on_find}

    def extended_negotiation(self, sop_class_uid: str, info: bytes) -> bytes | None:
        """PS3.4 C.5.1.1.1: byte 1 relational queries, byte 2 combined date-time matching; the fuzzy
        semantic PN, time zone adjustment and enhanced multi-frame bytes are answered 0."""
        if not info:
            return None
        answer = bytearray(min(len(info), 5))
        answer[0] = 1 if info[0] == 1 and self.options.relational else 0
        if len(answer) > 1:
            answer[1] = 1 if info[1] == 1 else 0
        return bytes(answer)

    def _relational(self, request: Request) -> bool:
        agreed = request.assoc.extended_negotiation_response.get(request.sop_class_uid, b"")
        return self.options.relational and agreed[:1] == b"\x01"

    @staticmethod
    def _combined_datetime(request: Request) -> bool:
        """Combined date-time matching was agreed for this SOP class (extended negotiation byte 2)."""
        agreed = request.assoc.extended_negotiation_response.get(request.sop_class_uid, b"")
        return agreed[1:2] == b"\x01"

    def on_find(self, request: Request) -> Iterator[Response]:
        """A plain generator of the answers: the engine runs it in the thread pool, a batch of
        answers per hop, and sends each batch in few writes (:mod:`pacskit.net.dispatch`); once a
        C-CANCEL arrives it pulls no more and closes the generator, which closes the cursor."""
        prepared = self._prepare(request)
        if isinstance(prepared, Response):
            yield prepared
            return
        stream, query = prepared
        pending = Status.PENDING_WARNING if query.unsupported else Status.PENDING
        peer = request.assoc.remote_ae_title
        sent = 0
        try:
            for data in stream:
                yield Response(pending, data)
                sent += 1
        except TooManyMatches as exc:
            self.base.log.warning("C-FIND from %s refused (0x%04X): %s", peer, Status.OUT_OF_RESOURCES, exc)
            yield Response(Status.OUT_OF_RESOURCES, elements={"ErrorComment": str(exc)[:64]})
            return
        finally:
            stream.close()  # a no-op when exhausted; ends the cursor when the engine stopped early
            if request.cancelled.is_set():
                self.base.log.info("C-FIND from %s cancelled after %d matches", peer, sent)
        self.base.log.debug("C-FIND %s level from %s: %d matches", query.level, peer, sent)

    def _prepare(self, request: Request) -> Response | tuple[Iterator[bytes], FindQuery]:
        """Decode and compile the identifier (thread pool): a failure Response, or the match stream."""
        log = self.base.log
        peer = request.assoc.remote_ae_title
        store = self.base.store
        if store is None:
            return Response(Status.UNABLE_TO_PROCESS, elements={"ErrorComment": "no data store configured"})
        model = _MODELS.get(request.sop_class_uid)
        if model is None or request.received is None:
            return Response(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                            elements={"ErrorComment": "no identifier" if model else "not a FIND SOP class"})
        try:
            identifier = request.dataset
            assert identifier is not None
            query = compile_find(identifier, model, relational=self._relational(request),
                                 combined_datetime=self._combined_datetime(request))
        except InvalidQuery as exc:
            log.warning("C-FIND from %s refused (0x%04X): %s", peer, exc.status, exc.comment)
            elements: dict[str, object] = {"ErrorComment": exc.comment[:64]}
            if exc.tag is not None:
                elements["OffendingElement"] = [exc.tag]
            return Response(exc.status, elements=elements)
        except Exception as exc:  # an identifier pydicom cannot decode
            log.warning("C-FIND from %s: undecodable identifier: %s", peer, exc)
            return Response(Status.UNABLE_TO_PROCESS, elements={"ErrorComment": f"cannot decode identifier: {exc}"[:64]})
        # keys we answer ourselves rather than from the files
        for rk in query.returns:
            if rk.tag in _OUR_KEYS:
                rk.source = "empty"  # filled in by find_encoded(fixed=...)
            elif rk.source == "header" and not self.options.read_headers:
                rk.source = "empty"
                query.unsupported = True  # returned empty whatever the files hold: Pending 0xFF01
        query.header_tags = [t for t in query.header_tags if t not in _OUR_KEYS] if self.options.read_headers else []
        fixed = {_RETRIEVE_AE_TITLE: self.base.settings.ae_title, _INSTANCE_AVAILABILITY: "ONLINE"}
        stream = find_encoded(store, query, request.context.transfer_syntax, page_size=self.options.page_size,
                              max_results=self.options.max_results, fixed=fixed)
        return stream, query
