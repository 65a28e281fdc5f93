"""The page at ``/``: a live option chain in the browser, served from files inside the package.

``static/`` holds the page (``index.html``, ``app.js``, ``app.css``) and a vendored chart library
(uPlot, MIT, with its licence in ``static/vendor/uplot/``): no CDN, no build step, works offline.
Files are read once with ``importlib.resources`` when the app is built and served from memory.
The page reads ``/options/underlyings``, follows ``/options/stream`` and falls back to polling
``/options/live`` with ``If-None-Match`` when the stream is unavailable. With history on it also
charts the day from ``/options/history`` (once per sample interval, with ``If-None-Match``) and
shows the chain at any sampled time from ``/options/live?at=``.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files
from importlib.resources.abc import Traversable

from aiohttp import web

from service.http import Routes, not_modified

STATIC: Traversable = files("service.web").joinpath("static")
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    "LICENSE": "text/plain",
}


def _walk(folder: Traversable, prefix: str = "") -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for entry in folder.iterdir():
        name = prefix + entry.name
        if entry.is_dir():
            out.update(_walk(entry, name + "/"))
        else:
            out[name] = entry.read_bytes()
    return out


def _content_type(name: str) -> str | None:
    for suffix, kind in _TYPES.items():
        if name.endswith(suffix):
            return kind
    return None


class StaticFiles:
    """The packaged files by path, with their ETags; anything else is a 404."""

    def __init__(self) -> None:
        self.files = {
            name: (body, kind, '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"')
            for name, body in _walk(STATIC).items()
            if (kind := _content_type(name)) is not None
        }

    def response(self, request: web.Request, name: str) -> web.Response:
        hit = self.files.get(name)
        if hit is None:
            # Never the name in the reason: a CR/LF in it made aiohttp answer 500 (found by schemathesis).
            raise web.HTTPNotFound(reason="no such file")
        body, kind, etag = hit
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if not_modified(request, etag):  # every If-None-Match header, weak or strong, like /options/live
            return web.Response(status=304, headers=headers)
        charset = "utf-8" if kind.startswith("text/") else None
        return web.Response(body=body, headers=headers, content_type=kind, charset=charset)


STATIC_FILES = web.AppKey("static_files", StaticFiles)


async def index(request: web.Request) -> web.StreamResponse:
    return request.app[STATIC_FILES].response(request, "index.html")


async def static(request: web.Request) -> web.StreamResponse:
    return request.app[STATIC_FILES].response(request, request.match_info["name"])


def add_routes(routes: Routes) -> None:
    routes.app[STATIC_FILES] = StaticFiles()
    routes.get("/", index)
    routes.get("/static/{name:.+}", static)
