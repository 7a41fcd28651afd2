"""Outbound requests (docs/reliability.md NET-*): a pull never reaches loopback, private,
link-local or metadata addresses unless LIMNER_PULL_PRIVATE=1 allows local registries."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest

from limner.errors import InvalidRequest
from limner.store.outbound import check_public


class Recorder(BaseHTTPRequestHandler):
    """A loopback 'registry' that records every request it gets (it must get none)."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Recorder.seen.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def local_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setenv("LIMNER_PULL_PRIVATE", "0")
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_pull_from_loopback_is_refused_before_any_request(
    server: Any, local_registry: int, host: str
) -> None:
    body = {"model": f"{host}:{local_registry}/library/tiny", "insecure": True, "stream": False}
    reply = httpx.post(f"{server.url}/api/pull", json=body, timeout=30)
    assert "private or local address" in reply.text and "LIMNER_PULL_PRIVATE" in reply.text
    assert Recorder.seen == []


def test_a_hugging_face_endpoint_on_the_lan_is_refused(
    server: Any, local_registry: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{local_registry}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    reply = httpx.post(f"{server.url}/api/pull", json={"model": "hf.co/org/repo", "stream": False})
    assert "private or local address" in reply.text
    assert Recorder.seen == []


def resolving_to(address: str) -> Any:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return lambda *args, **kwargs: [(family, socket.SOCK_STREAM, 6, "", (address, 443))]


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "100.64.0.1",
     "0.0.0.0", "::1", "fe80::1", "fd00::1", "224.0.0.1", "::ffff:127.0.0.1",
     # IPv6 forms that carry a private IPv4 address, and the old site-local space
     "::7f00:1", "2002:7f00:1::", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "fec0::1"],
)  # fmt: skip
def test_names_that_resolve_to_private_addresses_are_refused(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMNER_PULL_PRIVATE", "0")
    monkeypatch.setattr(socket, "getaddrinfo", resolving_to(address))
    with pytest.raises(InvalidRequest, match="private or local address"):
        check_public("https://registry.example.com/v2/", "pull")


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1"])
def test_public_addresses_pass(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMNER_PULL_PRIVATE", "0")
    monkeypatch.setattr(socket, "getaddrinfo", resolving_to(address))
    check_public("https://registry.example.com/v2/", "pull")


def test_limner_pull_private_allows_local_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMNER_PULL_PRIVATE", "1")
    check_public("http://127.0.0.1:5000/v2/", "pull")


def test_a_pull_name_with_an_octal_ipv4_literal_is_a_400(server: Any) -> None:
    body = {"model": "0177.0.0.1:18100/library/see", "insecure": True, "stream": False}
    reply = httpx.post(f"{server.url}/api/pull", json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    assert "0177.0.0.1" in reply.json()["error"]
