"""Modality Worklist add-in: the C-FIND SCP of the Modality Worklist Information Model (PS3.4 K.6),
and the management of the scheduled procedure steps it serves.

The steps live in the server's database (:mod:`pacskit.store.workflow.worklist`, where the matching rules are
documented); every identifier becomes one SQL statement, and the matches are streamed as Pending
responses from the database cursor: the handler is a plain generator the engine runs in the thread
pool a batch at a time; a C-CANCEL stops it (the cursor is closed and Cancel, 0xFE00, answered).

Statuses (PS3.4 K.4.1.1.4 / C.4.1.1.4):

========  ==================================================================================
0xFF00    pending: one scheduled step matched
0xFF01    pending, and some keys given a value are not supported for matching (returned only)
0x0000    all matches sent
0xFE00    cancelled by the peer (C-CANCEL)
0xA700    more matches than ``max_results``; nothing was sent
0xA900    the identifier does not fit the model (a Scheduled Procedure Step Sequence that is not a
          sequence, or has more than one item)
0xC000    a value the SCP cannot understand (a malformed date or time, a wildcard in a UID), or no
          data store configured
========  ==================================================================================

Management (no running association needed): :meth:`WorklistAddIn.admin_router` gives the admin API
``/addins/worklist/entries`` (list, add, get, update, remove) and ``/addins/worklist/import``;
``pacskit worklist add | list | update | remove | import`` works on a server folder's database directly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fastapi import Request as HttpRequest  # at module level: FastAPI resolves the route annotations here
from pydantic import Field
from pydicom.dataset import Dataset

from pacskit.services import AddIn, AddInOptions, Handler, Permission, Request, Response, SupportedContext
from pacskit.dicom.codec import encode_dataset
from pacskit.store.query import InvalidQuery, TooManyMatches
from pacskit.store.workflow.worklist import (
    MODALITY_WORKLIST_FIND,
    InvalidEntry,
    WorklistQuery,
    WorklistStore,
    compile_worklist_find,
    entries_from_json,
    entry_from_json,
)
from pacskit.dicom.status import Status



class WorklistOptions(AddInOptions):
    max_results: int | None = Field(
        10000, ge=1, description="refuse a query with more matches than this (0xA700); null: no limit"
    )
    page_size: int = Field(200, ge=1, le=100000, description="rows fetched from the database cursor at a time")
    hide_statuses: list[str] = Field(
        default_factory=list,
        description="scheduled steps with one of these Scheduled Procedure Step Status values are never "
                    "answered (e.g. [\"COMPLETED\", \"DISCONTINUED\"] to show modalities only what is left to do)",
    )


class WorklistAddIn(AddIn):
    name = "worklist"
    description = "Modality Worklist SCP (C-FIND) over scheduled procedure steps in the database"
    Options = WorklistOptions
    permissions = (Permission("worklist", MODALITY_WORKLIST_FIND, "C-FIND"),)
    options: WorklistOptions

    def __init__(self, options: AddInOptions, base: Any) -> None:
        super().__init__(options, base)
        self.worklist: WorklistStore | None = None

    def presentation_contexts(self) -> Sequence[SupportedContext]:
        return [SupportedContext(MODALITY_WORKLIST_FIND)]

    def handlers(self) -> Mapping[str, Handler]:
        return {"C-FIND": self.on_find}

    async def start(self) -> None:
        store = self.base.store
        if store is not None:
            self.worklist = WorklistStore(store.index)

    # ------------------------------------------------------------------ C-FIND

    def on_find(self, request: Request) -> Iterator[Response]:
        """A plain generator of the answers, run by the engine in the thread pool a batch at a time
        (:mod:`pacskit.net.dispatch`); a C-CANCEL stops it and closes the cursor."""
        prepared = self._prepare(request)
        if isinstance(prepared, Response):
            yield prepared
            return
        stream, query = prepared
        pending = Status.PENDING_WARNING if query.unsupported else Status.PENDING
        syntax = request.context.transfer_syntax
        peer = request.assoc.remote_ae_title
        sent = 0
        try:
            for answer in stream:
                yield Response(pending, encode_dataset(answer, syntax))
                sent += 1
        except TooManyMatches as exc:
            self.base.log.warning("worklist C-FIND from %s refused (0x%04X): %s", peer, Status.OUT_OF_RESOURCES, exc)
            yield Response(Status.OUT_OF_RESOURCES, elements={"ErrorComment": str(exc)[:64]})
            return
        finally:
            stream.close()  # ends the cursor, returns the connection
            if request.cancelled.is_set():
                self.base.log.info("worklist C-FIND from %s cancelled after %d matches", peer, sent)
        self.base.log.debug("worklist C-FIND from %s: %d matches", peer, sent)

    def _prepare(self, request: Request) -> Response | tuple[Iterator[Dataset], WorklistQuery]:
        peer = request.assoc.remote_ae_title
        if self.worklist is None:
            return Response(Status.UNABLE_TO_PROCESS, elements={"ErrorComment": "no data store configured"})
        if request.received is None:
            return Response(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, elements={"ErrorComment": "no identifier"})
        try:
            identifier = request.dataset
            assert identifier is not None
            query = compile_worklist_find(identifier, hide_statuses=self.options.hide_statuses)
        except InvalidQuery as exc:
            self.base.log.warning("worklist C-FIND from %s refused (0x%04X): %s", peer, exc.status, exc.comment)
            elements: dict[str, object] = {"ErrorComment": exc.comment[:64]}
            if exc.tag is not None:
                elements["OffendingElement"] = [exc.tag]
            return Response(exc.status, elements=elements)
        except Exception as exc:  # an identifier pydicom cannot decode
            self.base.log.warning("worklist C-FIND from %s: undecodable identifier: %s", peer, exc)
            return Response(Status.UNABLE_TO_PROCESS,
                            elements={"ErrorComment": f"cannot decode identifier: {exc}"[:64]})
        stream = self.worklist.find(query, page_size=self.options.page_size, max_results=self.options.max_results)
        return stream, query

    # ------------------------------------------------------------------ management

    def admin_router(self) -> Any | None:
        """``/entries`` (GET list, POST add), ``/entries/{id}`` (GET, PATCH update, DELETE) and
        ``/import`` (POST a JSON list of entries, or DICOM files as ``application/dicom``). Entries are
        JSON: the DICOM JSON model or keywords (see :func:`pacskit.store.workflow.worklist.entry_from_json`)."""
        if self.worklist is None:
            return None
        return worklist_router(self.worklist)


def worklist_router(worklist: WorklistStore) -> Any:
    """The management endpoints over ``worklist`` (a FastAPI ``APIRouter``)."""
    import io

    from fastapi import APIRouter, Body, HTTPException, Query
    from pydicom import dcmread

    router = APIRouter(tags=["worklist"])

    def bad(exc: Exception) -> HTTPException:
        return HTTPException(status_code=422, detail=str(exc))

    def found(entry_id: int) -> dict[str, Any]:
        entry = worklist.get(entry_id)
        if entry is None:
            raise HTTPException(status_code=404, detail=f"no worklist entry {entry_id}")
        return entry.to_json()

    @router.get("/entries")
    def list_entries(status: str | None = None, limit: int = Query(100, ge=1, le=10000),
                     offset: int = Query(0, ge=0)) -> list[dict[str, Any]]:
        """Scheduled steps in the order they were added."""
        return [e.to_json() for e in worklist.entries(status=status, limit=limit, offset=offset)]

    @router.post("/entries", status_code=201)
    def add_entry(body: dict[str, Any] = Body(...), replace: bool = False) -> dict[str, Any]:
        """Add one entry (one step per item of its Scheduled Procedure Step Sequence)."""
        try:
            ids = worklist.add(entry_from_json(body), replace=replace)
        except InvalidEntry as exc:
            raise bad(exc) from None
        return {"ids": ids}

    @router.get("/entries/{entry_id}")
    def get_entry(entry_id: int) -> dict[str, Any]:
        return found(entry_id)

    @router.patch("/entries/{entry_id}")
    def update_entry(entry_id: int, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        """Merge the given attributes into the step (inside its Scheduled Procedure Step Sequence item
        key by key)."""
        try:
            entry = worklist.update(entry_id, entry_from_json(body))
        except InvalidEntry as exc:
            raise bad(exc) from None
        if entry is None:
            raise HTTPException(status_code=404, detail=f"no worklist entry {entry_id}")
        return entry.to_json()

    @router.delete("/entries/{entry_id}", status_code=204)
    def remove_entry(entry_id: int) -> None:
        if not worklist.remove(entry_id):
            raise HTTPException(status_code=404, detail=f"no worklist entry {entry_id}")

    @router.post("/import", status_code=201)
    async def import_entries(request: HttpRequest, replace: bool = True) -> dict[str, Any]:
        """A JSON entry or list of entries (``application/json``), or one DICOM worklist file
        (``application/dicom``). Steps already stored (same AccessionNumber, RequestedProcedureID and
        SPS ID) are replaced unless ``replace=false``."""
        body = await request.body()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if kind == "application/dicom":
                try:
                    entries = [dcmread(io.BytesIO(body), force=True)]
                except Exception as exc:
                    raise InvalidEntry(f"not a DICOM file: {exc}") from None
            else:
                try:
                    data = json.loads(body)
                except ValueError as exc:
                    raise InvalidEntry(f"not JSON: {exc}") from None
                entries = entries_from_json(data)
            ids = await asyncio.to_thread(worklist.add_many, entries, replace=replace)
        except InvalidEntry as exc:
            raise bad(exc) from None
        return {"ids": ids}

    return router
