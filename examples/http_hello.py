"""An add-in that serves public HTTP next to DICOM (the hook DICOMweb builds on).

Copy it into ``<server folder>/addins/`` and start the server: ``GET http://<host>:8080/hello/studies``
answers how many studies the store holds (``[http] port`` in ``server.toml`` moves the listener).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pacskit.services import AddIn, AddInOptions, HttpService


class HelloOptions(AddInOptions):
    greeting: str = "hello"


class HelloHttp(AddIn):
    name = "hello"
    description = "GET /hello/studies: the number of stored studies, over plain HTTP"
    Options = HelloOptions
    options: HelloOptions

    def http_service(self) -> HttpService:
        from fastapi import APIRouter

        router = APIRouter()

        @router.get("/studies")
        async def studies() -> dict[str, Any]:
            store = self.base.store
            count = await asyncio.to_thread(store.count, "studies") if store is not None else 0
            return {"greeting": self.options.greeting, "ae_title": self.base.settings.ae_title, "studies": count}

        return HttpService(router)  # served under /hello, the add-in's name
