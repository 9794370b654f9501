"""The web console's pages: ``/console/`` and its static files; ``/`` leads there.

Only the files shipped in the package's ``static`` directory are served, by name (no
subdirectories, no path to resolve). The headers every page gets (CSP, no caching, no framing)
are set in vault/api/middleware.py ``security_headers``.
"""

from __future__ import annotations

from aiohttp import web

from vault.console import INDEX_PAGE, STATIC_DIR
from vault.errors import NotFound

_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
ASSETS = {path.name: path for path in STATIC_DIR.iterdir() if path.is_file() and path.suffix in _TYPES}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(INDEX_PAGE, headers={"Content-Type": _TYPES[".html"]})


async def asset(request: web.Request) -> web.FileResponse:
    path = ASSETS.get(request.match_info["name"])
    if path is None:
        raise NotFound()
    return web.FileResponse(path, headers={"Content-Type": _TYPES[path.suffix]})


async def to_console(request: web.Request) -> web.Response:
    raise web.HTTPFound("/console/")
