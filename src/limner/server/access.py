"""Who may talk to the server: API tokens and the Host header, checked before any handler.

Tokens: with LIMNER_API_KEY (and/or LIMNER_API_KEY_READONLY) set, every request needs
`Authorization: Bearer <token>` — what the ollama and openai clients send — except `HEAD /`,
`GET /` and `/api/version`, which clients probe before anything else. Tokens are compared in
constant time. The read-only token may read and run models but not change the store: pulls,
creates (training included), copies, deletes and blob uploads are a 403 for it.

Host: a browser page on evil.example whose name is made to resolve to 127.0.0.1 (DNS
rebinding, CVE-2024-28224) sends `Host: evil.example`; only IP literals, localhost names, this
machine's name and LIMNER_ALLOWED_HOSTS are accepted, on every bind.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import socket

from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = ("/", "/api/version")  # HEAD/GET: liveness and version probes, never secret
OPEN_PREFIXES = ("/web/",)  # the web page's own files: it asks for the token itself
WRITES = {
    ("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create"),
    ("POST", "/api/copy"), ("DELETE", "/api/delete"),
}  # fmt: skip
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


class Access:
    """ASGI middleware: the Host check, then the token check."""

    def __init__(self, app: ASGIApp, tokens: dict[str, str], allowed_hosts: list[str]) -> None:
        """`tokens`: token -> "full" or "read"; empty: no token needed (loopback use)."""
        self.app, self.tokens = app, {t.encode(): kind for t, kind in tokens.items() if t}
        self.hosts = {name.lower().strip() for name in allowed_hosts if name.strip()}
        self.hosts.add(socket.gethostname().lower())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if not self.host_allowed(headers.get(b"host", b"").decode("latin-1")):
            await _refuse(send, 403, "this Host is not allowed; add it to LIMNER_ALLOWED_HOSTS")
            return
        method, path = scope["method"], scope["path"]
        opened = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
        if self.tokens and not (method in ("GET", "HEAD") and opened):
            kind = self.token_kind(headers.get(b"authorization", b""))
            if kind is None:
                await _refuse(send, 401, "a valid API token is required: send "
                              "'Authorization: Bearer <LIMNER_API_KEY>'", bearer=True)  # fmt: skip
                return
            if kind == "read" and _changes_store(method, path):
                await _refuse(send, 403, "this API token is read-only: it cannot pull, create, "
                              "copy, delete or upload models")  # fmt: skip
                return
        await self.app(scope, receive, send)

    def host_allowed(self, host: str) -> bool:
        if not host.strip():
            return True  # HTTP/1.0 clients send no Host; rebinding needs one
        name = _hostname(host)
        if name is None:
            return False  # `localhost:1@evil.example`, `[::1]evil.example`: no Host at all
        if _is_ip(name) or name in LOOPBACK_NAMES or name.endswith(".localhost"):
            return True
        return name in self.hosts

    def token_kind(self, header: bytes) -> str | None:
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer":
            given = b""
        found = None
        for token, kind in self.tokens.items():  # every token compared, in constant time each
            if hmac.compare_digest(given.strip(), token):
                found = kind
        return found


def _changes_store(method: str, path: str) -> bool:
    return (
        (method, path) in WRITES
        or (method == "POST" and path.startswith("/api/blobs/"))
        or (method == "DELETE" and path.startswith("/api/gallery/"))
    )


# A Host header as RFC 9110 has it: a name or IPv4 literal, or an IPv6 literal in brackets,
# then an optional port. Anything else is refused rather than cut down to a name.
HOST = re.compile(r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::\d{1,5})?")


def _hostname(host: str) -> str | None:
    """The name or address a Host header names, or None when it is malformed."""
    found = HOST.fullmatch(host.strip().lower())
    if found is None:
        return None
    return found.group("ipv6") or found.group("name")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


async def _refuse(send: Send, status: int, message: str, bearer: bool = False) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if bearer:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def loopback(interface: str) -> bool:
    """Whether a bind address only listens on this machine."""
    if interface in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(interface.strip("[]")).is_loopback
    except ValueError:
        return False
