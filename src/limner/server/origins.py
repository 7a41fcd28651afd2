"""Browser origins, as Ollama allows them: local pages and apps by default, more by LIMNER_ORIGINS.

A request that carries an Origin not on the list gets 403 with an empty body (Ollama #2425);
requests without an Origin (every non-browser client) always pass, and so do the web page's
own requests (an Origin that is the request's own scheme and Host: no other site's page can
send that, and the Host itself is checked against LIMNER_ALLOWED_HOSTS first).
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

DEFAULT_ORIGINS = [
    *(f"{scheme}://{host}{port}" for scheme in ("http", "https")
      for host in ("localhost", "127.0.0.1", "0.0.0.0") for port in ("", ":*")),
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
]  # fmt: skip


def origin_pattern(extra: list[str]) -> re.Pattern[str]:
    """One regex for every allowed origin; `:*` matches any port (digits only, so that
    `http://localhost:80.evil.example` is not localhost), any other `*` anything."""
    alternatives = [
        re.escape(origin).replace(r":\*", r":\d{1,5}").replace(r"\*", ".*")
        for origin in DEFAULT_ORIGINS + extra
    ]
    return re.compile("^(?:" + "|".join(alternatives) + ")$")


class OriginCheck:
    def __init__(self, app: ASGIApp, allowed: re.Pattern[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            origin = headers.get(b"origin")
            if origin is not None and not self._allowed(origin, headers.get(b"host"), scope):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [(b"content-length", b"0")],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)

    def _allowed(self, origin: bytes, host: bytes | None, scope: Scope) -> bool:
        text = origin.decode("latin-1")
        own = (
            host is not None and text == f"{scope.get('scheme', 'http')}://{host.decode('latin-1')}"
        )
        return own or self.allowed.match(text) is not None
