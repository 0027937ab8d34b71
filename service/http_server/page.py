"""The web page the HTTP transport serves at `/` and at each view's path: static files from static/,
read once at start-up. The page is a client of the HTTP API like any other; it holds no data, so it
needs no token, and a strict Content-Security-Policy keeps it from loading anything from elsewhere."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/static/"
# The page's views; each path serves index.html, whose script shows the view named by the path.
VIEW_PATHS = frozenset({"/", "/analogy", "/relate", "/similar", "/map", "/tokenize", "/search"})
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # Revalidated on each load, so a page served by a newer server never runs with older scripts.
    (b"cache-control", b"no-cache"),
]


class Page:
    """Answers GET and HEAD for the view paths (index.html) and /static/<file>."""

    def __init__(self, directory: Path = STATIC_DIR) -> None:
        self._files = {
            f"{STATIC_PREFIX}{path.name}": (path.read_bytes(), _CONTENT_TYPES[path.suffix])
            for path in sorted(directory.iterdir())
            if path.suffix in _CONTENT_TYPES
        }
        self._index = self._files[f"{STATIC_PREFIX}index.html"]

    def serves(self, path: str) -> bool:
        return path in VIEW_PATHS or path in self._files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b"", [(b"allow", b"GET, HEAD")])
            return
        body, content_type = self._index if path in VIEW_PATHS else self._files[path]
        headers = [(b"content-type", content_type.encode()), *_HEADERS]
        await _respond(send, 200, b"" if scope["method"] == "HEAD" else body, headers, len(body))


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]], length: int | None = None
) -> None:
    content_length = str(len(body) if length is None else length).encode()
    headers = [*headers, (b"content-length", content_length)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
