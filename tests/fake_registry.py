"""A Docker v2 registry (Ollama's protocol) in a thread on 127.0.0.1, that misbehaves on
demand: the one fake registry the pull, CLI and crash tests share."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from limner.store import Store
from limner.store.manifests import CONFIG_TYPE, FILE, MANIFEST_TYPE


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early (on purpose, in these tests) is no news


class FakeRegistry:
    """A Docker v2 registry (or, with no manifests, a CDN) in a thread on 127.0.0.1."""

    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}  # "ns/model/tag" -> manifest bytes
        self.blobs: dict[str, bytes] = {}  # digest -> content
        self.token: str | None = None  # when set, /v2/ needs `Authorization: Bearer <token>`
        self.realm: str | None = None  # the challenge's realm; default our own /token
        self.redirect_to: str | None = None  # blobs answer 307 to <redirect_to>/blobs/<digest>
        self.cut_after: int | None = None  # blob bytes sent in all before connections drop
        self.ignore_range = False  # answer 200 with the whole blob
        self.delay = 0.0  # seconds before each blob body
        self.barrier: threading.Barrier | None = None  # manifest requests wait for each other
        self.served: Counter[str] = Counter()  # blob bytes sent, per digest
        self.sent = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.httpd = QuietServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"http://{self.host}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def publish(self, source: Store, name: str, as_name: str = "library/fake/latest") -> bytes:
        """Serve a model of `source` store, manifest bytes verbatim; returns them."""
        found = source.resolve(name)
        raw = source.manifests.joinpath(*found.parts()).read_bytes()
        self.manifests[as_name] = raw
        for digest in source.entry(found).manifest.digests():
            self.blobs[digest] = source.blobs.open_path(digest).read_bytes()
        return raw

    def add_manifest(self, as_name: str, config: bytes, layers: list[tuple[bytes, str]]) -> bytes:
        """A manifest of a config blob and (content, file name) layers; returns its bytes."""
        for data in [config, *(content for content, _ in layers)]:
            self.blobs[sha(data)] = data
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": sha(config), "size": len(config)},
            "layers": [
                {"mediaType": FILE, "digest": sha(content), "size": len(content), "name": name}
                for content, name in layers
            ],
        }
        raw = json.dumps(manifest, indent=1).encode()  # not limner's own spelling: kept verbatim
        self.manifests[as_name] = raw
        return raw

    def with_auth(self, headers: dict[str, str]) -> bool:
        return self.token is None or headers.get("authorization") == f"Bearer {self.token}"


def _handler(reg: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            url = urlsplit(self.path)
            with reg.lock:
                reg.requests.append((self.command, self.path, headers))
            if url.path == "/token":
                query = parse_qs(url.query)
                if query.get("service") == ["test"] and query.get("scope"):
                    return self.reply(200, json.dumps({"token": reg.token}).encode())
                return self.reply(400, b"bad token request")
            if url.path.startswith("/blobs/"):  # the CDN side: no auth
                return self.blob(url.path.removeprefix("/blobs/"), headers)
            match = re.fullmatch(r"/v2/(\w+)/([\w.-]+)/(manifests|blobs)/(.+)", url.path)
            if match is None:
                return self.reply(404, b"404 page not found")
            ns, model, kind, ref = match.groups()
            if not reg.with_auth(headers):
                realm = reg.realm or f"{reg.url}/token"
                challenge = (
                    f'Bearer realm="{realm}",service="test",scope="repository:{ns}/{model}:pull"'
                )
                return self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                                  {"WWW-Authenticate": challenge})  # fmt: skip
            if kind == "manifests":
                if headers.get("accept") != MANIFEST_TYPE:
                    return self.reply(400, b"MANIFEST_INVALID")
                if reg.barrier is not None:
                    reg.barrier.wait(10)
                raw = reg.manifests.get(f"{ns}/{model}/{ref}")
                if raw is None:
                    return self.reply(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                return self.reply(200, raw, {"Content-Type": "text/plain"})
            if reg.redirect_to:
                return self.reply(307, b"", {"Location": f"{reg.redirect_to}/blobs/{ref}"})
            return self.blob(ref, headers)

        def blob(self, digest: str, headers: dict[str, str]) -> None:
            data = reg.blobs.get(digest)
            if data is None:
                return self.reply(404, b"BLOB_UNKNOWN")
            status, start, body = 200, 0, data
            wanted = re.fullmatch(r"bytes=(\d+)-(\d+)", headers.get("range", ""))
            if wanted and not reg.ignore_range:
                start, end = int(wanted.group(1)), int(wanted.group(2))
                status, body = 206, data[start : end + 1]
            extra = {"Content-Type": "application/octet-stream"}
            if status == 206:
                extra["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
            if self.command == "HEAD":
                return self.reply(status, b"", extra, length=len(body))
            time.sleep(reg.delay)
            with reg.lock:
                room = len(body) if reg.cut_after is None else max(0, reg.cut_after - reg.sent)
                count = min(len(body), room)
                reg.sent += count
                reg.served[digest] += count
            self.reply(status, body[:count], extra, length=len(body))

        def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                  length: int | None = None) -> None:  # fmt: skip
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)  # fewer bytes than announced: the client sees a cut

    return Handler
