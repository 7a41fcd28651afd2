"""The web page at `/`: chat, draw, inpaint, restyle, train and manage models from a browser.

`GET /` answers the page to browsers (an `Accept` that includes text/html) and Ollama's
"Ollama is running" to everyone else, whose clients and scripts match that text. The page is
plain HTML, CSS and JavaScript modules from `web/`, served by `/web/<name>` from a fixed list
of that folder's files, and it talks to the same `/api/*` endpoints as every other client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from limner.errors import NotFound

FOLDER = Path(__file__).parent / "web"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# Built once from the folder listing: a name that is not here is never opened, so no path from
# a request (`..`, encoded slashes, absolute paths) reaches the file system.
ASSETS = {p.name: p for p in sorted(FOLDER.iterdir()) if p.is_file() and p.suffix in TYPES}
# No inline scripts or styles, nothing from other hosts: the page works offline and an injected
# string cannot run. Pictures are data: and blob: URLs made by the page itself.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# On every file, not only the page: index.html or an SVG opened directly gets the same policy.
HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-cache",  # a new limner's page is never stale
    "X-Content-Type-Options": "nosniff",
}


async def index(request: Request) -> Response:
    if "text/html" not in request.headers.get("accept", ""):
        return PlainTextResponse("Ollama is running")  # clients and scripts match this text
    return HTMLResponse(ASSETS["index.html"].read_bytes(), headers=HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    path = ASSETS.get(name)
    if path is None:
        raise NotFound(f"no file {name!r} in the web page's folder")
    return Response(path.read_bytes(), media_type=TYPES[path.suffix], headers=HEADERS)
