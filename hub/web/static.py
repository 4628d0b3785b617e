"""The web console's static files (``hub/web/console``): served without a token, because
the page holds no data; its data comes from /v1 with the token the user enters.
"""

from __future__ import annotations

import re
from pathlib import Path

import structlog
from aiohttp import web

from hub.web.wire import ApiError

log = structlog.get_logger("hub.web.static")


# -- the web console (hub/console: static files, no token; their data comes from /v1) -------
CONSOLE_DIR = Path(__file__).parent / "console"
CONSOLE_FILE_RE = re.compile(r"[a-z0-9_-]{1,64}\.(js|css)")
CONSOLE_TYPES = {"js": "text/javascript", "css": "text/css"}
CONSOLE_HEADERS = {
    # nothing but its own files and the hub's API; no inline script, no framing, and a form can
    # never navigate (the token field must not end up in a URL if the script did not load)
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag/Last-Modified): a new hub's console applies at once
}


async def console_index(request: web.Request) -> web.StreamResponse:
    return _console_file("index.html", "text/html")


async def console_file(request: web.Request) -> web.StreamResponse:
    """Only names like app.js / app.css directly in hub/console: no paths, nothing else there."""
    match = CONSOLE_FILE_RE.fullmatch(request.match_info["file"])
    if match is None or not (CONSOLE_DIR / match.group(0)).is_file():
        raise ApiError(404, "no such console file")
    return _console_file(match.group(0), CONSOLE_TYPES[match.group(1)])


def _console_file(name: str, content_type: str) -> web.StreamResponse:
    headers = {**CONSOLE_HEADERS, "Content-Type": f"{content_type}; charset=utf-8"}
    return web.FileResponse(CONSOLE_DIR / name, headers=headers)
