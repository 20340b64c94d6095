"""Add-ins serving public HTTP (AddIn.http_service): the listener, prefixes, ASGI apps, reload."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import httpx
import pytest

from pacskit.config.settings import load_settings
from pacskit.server.server import Server, ServerError
from pacskit.services import AddIn, AddInOptions, HttpService
from pacskit.testing.synth import make_series

ROOT = Path(__file__).resolve().parents[2]


def _example() -> type[AddIn]:
    spec = importlib.util.spec_from_file_location("http_hello_example", ROOT / "examples" / "http_hello.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.HelloHttp  # type: ignore[no-any-return]


class RawAsgi(AddIn):
    """A plain ASGI application (no FastAPI), mounted under its own prefix."""

    name = "raw"

    def http_service(self) -> HttpService:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            assert scope["type"] == "http"
            # ASGI: "path" is the full path, "root_path" the prefix the app is mounted under
            body = f"raw {scope['path'][len(scope['root_path']):]}".encode()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": body})

        return HttpService(app, prefix="/raw-asgi")


class SamePrefixOptions(AddInOptions):
    prefix: str = "/hello"


class SamePrefix(AddIn):
    name = "same-prefix"
    Options = SamePrefixOptions

    def http_service(self) -> HttpService:
        from fastapi import APIRouter

        return HttpService(APIRouter(), prefix=self.options.prefix)  # type: ignore[attr-defined]


def _folder(tmp_path: Path, extra: str = "") -> Path:
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "server.toml").write_text(
        f'ae_title = "HTTPTEST"\nport = 0\ndata_dir = "data"\n[admin]\nenabled = false\n[http]\nhost = "127.0.0.1"\nport = 0\n{extra}'
    )
    return folder


def test_an_addin_route_answers_over_http(tmp_path: Path) -> None:
    hello = _example()
    folder = _folder(tmp_path, '[addins.hello]\ngreeting = "hi"\n')
    files = make_series(tmp_path / "study", 2, 8, 8)

    async def run() -> None:
        async with Server(load_settings(folder), addin_classes=[hello, RawAsgi]) as server:
            for path in files:
                server.store.ingest(path, source_ae="TEST")
            assert server.http is not None
            base = f"http://127.0.0.1:{server.http.port}"
            async with httpx.AsyncClient(base_url=base) as client:
                answer = await client.get("/hello/studies")
                assert answer.status_code == 200
                assert answer.json() == {"greeting": "hi", "ae_title": "HTTPTEST", "studies": 1}
                raw = await client.get("/raw-asgi/anything")
                assert (raw.status_code, raw.text) == (200, "raw /anything")
                assert (await client.get("/nothing-here")).status_code == 404
                schema = (await client.get("/openapi.json")).json()
                assert "/hello/studies" in schema["paths"]
        assert server.http is None

    asyncio.run(run())


def test_no_listener_without_an_http_addin(tmp_path: Path) -> None:
    folder = _folder(tmp_path)

    async def run() -> None:
        async with Server(load_settings(folder), addin_classes=[]) as server:
            assert server.http is None

    asyncio.run(run())


def test_two_addins_on_one_prefix_stop_the_start(tmp_path: Path) -> None:
    folder = _folder(tmp_path)

    async def run() -> None:
        server = Server(load_settings(folder), addin_classes=[_example(), SamePrefix])
        with pytest.raises(ServerError, match="'hello' and 'same-prefix' both serve HTTP under '/hello'"):
            await server.start()

    asyncio.run(run())


def test_reload_swaps_the_services(tmp_path: Path) -> None:
    folder = _folder(tmp_path, '[addins.hello]\ngreeting = "before"\n')

    async def run() -> None:
        async with Server(load_settings(folder), addin_classes=[_example()]) as server:
            assert server.http is not None
            url = f"http://127.0.0.1:{server.http.port}/hello/studies"
            async with httpx.AsyncClient() as client:
                assert (await client.get(url)).json()["greeting"] == "before"
                text = (folder / "server.toml").read_text().replace('"before"', '"after"')
                (folder / "server.toml").write_text(text)
                await server.reload()
                assert (await client.get(url)).json()["greeting"] == "after"

    asyncio.run(run())
