"""Query add-in: the C-FIND SCP of the PACS (PS3.4 Annex C), Patient Root and Study Root.

Every identifier becomes one SQL statement over the index (:mod:`pacskit.store.query`, where the matching
rules are documented); matches are streamed as Pending responses from the database cursor, so neither
memory nor the time to the first response depends on the number of matches. The handler is an async
generator: the database work (compiling, fetching, building and encoding answers) runs in the server's
thread pool a batch at a time, the answers are sent from the event loop, and a C-CANCEL from the peer
(``request.cancelled``) is seen before the next match is sent, which ends the cursor and answers Cancel
(0xFE00).

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
SOP Class Extended Negotiation and ``relational`` is on; StudyDate + StudyTime are always matched as one
date-time, and that byte of the negotiation is answered accordingly.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence

from pydantic import Field

from pacskit.services import AddIn, AddInOptions, Handler, Request, Response, SupportedContext
from pacskit.store.query import (
    PATIENT_ROOT_FIND,
    STATUS_IDENTIFIER_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_UNABLE_TO_PROCESS,
    STUDY_ROOT_FIND,
    FindQuery,
    InvalidQuery,
    TooManyMatches,
    compile_find,
    find_encoded,
)
from pacskit.dicom.status import PENDING_STATUSES, Status

_MODELS = {PATIENT_ROOT_FIND: "PATIENT", STUDY_ROOT_FIND: "STUDY"}

_RETRIEVE_AE_TITLE = 0x00080054
_INSTANCE_AVAILABILITY = 0x00080056
_OUR_KEYS = (_RETRIEVE_AE_TITLE, _INSTANCE_AVAILABILITY)
_FIRST_BATCH = 32
_MAX_BATCH = 1024
_YIELD_EVERY = 32  # answers yielded as one list (one write), and between two turns of the event loop


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

    async def on_find(self, request: Request) -> AsyncIterator[Response | list[Response]]:
        """Compile and fetch in the thread pool, 32 matches in the first hop and up to 1,024 in each
        after, and yield the encoded answers on the event loop in lists of 32 (the engine sends a list
        in one write); C-CANCEL is checked before every list. A query with fewer than 32 matches costs
        one hop to the thread pool; the event loop gets a turn after every list, so the answers leave
        and a C-CANCEL is seen. Each hop costs a thread hand-off and the GIL going back and forth
        (py-spy: ~0.3 ms on this VM), so few large hops beat a doubling series (8, 16, … 256 took six
        hops for 266 matches); the first hop stays small so the first answers leave early."""
        loop = asyncio.get_running_loop()
        executor = request.assoc.executor
        batch = _FIRST_BATCH
        started = await loop.run_in_executor(executor, self._start, request, batch)
        if isinstance(started, Response):
            yield started
            return
        stream, query, page = started
        peer = request.assoc.remote_ae_title
        sent = 0
        exhausted = False
        try:
            while True:
                if page and page[0].status not in PENDING_STATUSES:
                    exhausted = True  # the cap: the stream raised and is closed
                    yield page[0]
                    return
                for start in range(0, len(page), _YIELD_EVERY):
                    if request.cancelled.is_set():
                        break
                    chunk = page[start : start + _YIELD_EVERY]
                    yield chunk  # sent back to back in one write
                    sent += len(chunk)
                    # one turn of the event loop: the answers so far leave, and a C-CANCEL that has
                    # arrived is read (nothing else within a batch lets the loop read)
                    await asyncio.sleep(0)
                if len(page) < batch:
                    exhausted = True  # islice saw StopIteration: the stream closed its cursor itself
                    break
                if request.cancelled.is_set():
                    break
                batch = _MAX_BATCH
                page = await loop.run_in_executor(executor, self._next_batch, stream, query, request, batch)
        finally:
            if not exhausted:
                await loop.run_in_executor(executor, stream.close)  # ends the cursor, returns the connection
        if request.cancelled.is_set():
            self.base.log.info("C-FIND from %s cancelled after %d matches", peer, sent)
        else:
            self.base.log.debug("C-FIND %s level from %s: %d matches", query.level, peer, sent)

    def _start(self, request: Request, size: int) -> Response | tuple[Iterator[bytes], FindQuery, list[Response]]:
        prepared = self._prepare(request)
        if isinstance(prepared, Response):
            return prepared
        stream, query = prepared
        return stream, query, self._next_batch(stream, query, request, size)

    def _prepare(self, request: Request) -> Response | tuple[Iterator[bytes], FindQuery]:
        """Decode and compile the identifier (thread pool): a failure Response, or the match stream."""
        log = self.base.log
        peer = request.assoc.remote_ae_title
        store = self.base.store
        if store is None:
            return Response(STATUS_UNABLE_TO_PROCESS, elements={"ErrorComment": "no data store configured"})
        model = _MODELS.get(request.sop_class_uid)
        if model is None or request.received is None:
            return Response(STATUS_IDENTIFIER_MISMATCH,
                            elements={"ErrorComment": "no identifier" if model else "not a FIND SOP class"})
        try:
            identifier = request.dataset
            assert identifier is not None
            query = compile_find(identifier, model, relational=self._relational(request))
        except InvalidQuery as exc:
            log.warning("C-FIND from %s refused (0x%04X): %s", peer, exc.status, exc.comment)
            elements: dict[str, object] = {"ErrorComment": exc.comment[:64]}
            if exc.tag is not None:
                elements["OffendingElement"] = [exc.tag]
            return Response(exc.status, elements=elements)
        except Exception as exc:  # an identifier pydicom cannot decode
            log.warning("C-FIND from %s: undecodable identifier: %s", peer, exc)
            return Response(STATUS_UNABLE_TO_PROCESS, elements={"ErrorComment": f"cannot decode identifier: {exc}"[:64]})
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

    def _next_batch(self, stream: Iterator[bytes], query: FindQuery, request: Request, size: int) -> list[Response]:
        """Up to ``size`` Pending responses, encoded (thread pool); a failure response if over the cap."""
        pending = Status.PENDING_WARNING if query.unsupported else Status.PENDING
        out: list[Response] = []
        try:
            for data in itertools.islice(stream, size):
                out.append(Response(pending, data))
        except TooManyMatches as exc:
            self.base.log.warning("C-FIND from %s refused (0x%04X): %s", request.assoc.remote_ae_title,
                                  STATUS_OUT_OF_RESOURCES, exc)
            return [Response(STATUS_OUT_OF_RESOURCES, elements={"ErrorComment": str(exc)[:64]})]
        return out
