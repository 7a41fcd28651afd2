"""Network exposure (docs/reliability.md NET-*): API tokens on every endpoint, a read-only token
that cannot change the store, the Host check against DNS rebinding, and no open server off
loopback unless the user says so loudly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from helpers import add_fake, free_port
from limner.client import Client
from limner.errors import LimnerError
from limner.store import Store

FULL, READ = "full-secret-token", "read-only-token"


@pytest.fixture
def guarded(store: Store, make_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("LIMNER_API_KEY", FULL)
    monkeypatch.setenv("LIMNER_API_KEY_READONLY", READ)
    monkeypatch.setenv("LIMNER_ALLOWED_HOSTS", "models.example.lan")
    add_fake(store, "fake")
    return make_server()


ENDPOINTS = [
    ("GET", "/api/tags", None),
    ("GET", "/api/ps", None),
    ("POST", "/api/show", {"model": "fake"}),
    ("POST", "/api/generate", {"model": "fake", "prompt": "hi", "stream": False}),
    ("POST", "/api/chat", {"model": "fake", "messages": [], "stream": False}),
    ("POST", "/api/pull", {"model": "x"}),
    ("POST", "/api/create", {"model": "x", "from": "fake"}),
    ("POST", "/api/copy", {"source": "fake", "destination": "x"}),
    ("DELETE", "/api/delete", {"model": "fake"}),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
    ("POST", "/api/blobs/sha256:" + "0" * 64, None),
    ("POST", "/v1/images/generations", {"model": "fake", "prompt": "x"}),
]


def call(server: Any, method: str, path: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.request(method, server.url + path, json=body, headers=headers, timeout=30)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", f"Basic {FULL}", f"Bearer {FULL}x"]
)
def test_every_endpoint_needs_a_valid_token(
    guarded: Any, store: Store, method: str, path: str, body: Any, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    reply = call(guarded, method, path, body, **headers)
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    if method != "HEAD":
        assert "LIMNER_API_KEY" in reply.json()["error"]
    assert [entry.name.display() for entry in store.entries()] == ["fake:latest"]


@pytest.mark.parametrize(("method", "path"), [("HEAD", "/"), ("GET", "/"), ("GET", "/api/version")])
def test_liveness_and_version_probes_need_no_token(guarded: Any, method: str, path: str) -> None:
    assert call(guarded, method, path, None).status_code == 200


def test_the_full_token_opens_everything_for_the_official_clients(guarded: Any) -> None:
    client = ollama.Client(host=guarded.url, headers={"Authorization": f"Bearer {FULL}"})
    assert [m.model for m in client.list().models] == ["fake:latest"]
    assert client.generate("fake", "hello there").response.endswith("hello there")
    client.copy("fake", "copied")
    client.delete("copied")


def test_the_sdk_sends_limner_api_key(guarded: Any) -> None:
    assert [m.model for m in Client(guarded.url).list().models] == ["fake:latest"]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_the_read_only_token_reads_and_runs_but_never_changes_the_store(
    guarded: Any, store: Store, method: str, path: str, body: Any
) -> None:
    reply = call(guarded, method, path, body, Authorization=f"Bearer {READ}")
    changes = path in ("/api/pull", "/api/create", "/api/copy", "/api/delete") or (
        method == "POST" and path.startswith("/api/blobs/")
    )
    if changes:
        assert reply.status_code == 403 and "read-only" in reply.json()["error"]
    else:
        assert reply.status_code not in (401, 403)
    assert [entry.name.display() for entry in store.entries()] == ["fake:latest"]


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("evil.example", False),
        ("evil.example:11434", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("localhost:11434@evil.example", False),  # not a Host at all: never cut down to a name
        ("[::1]evil.example", False),
        ("localhost:11434/evil", False),
        ("localhost", True),
        ("localhost:11434", True),
        ("app.localhost", True),
        ("127.0.0.1:11434", True),
        ("[::1]:11434", True),
        ("192.168.1.20:11434", True),
        ("models.example.lan:11434", True),
    ],
)
def test_only_known_host_names_are_answered(guarded: Any, host: str, allowed: bool) -> None:
    reply = call(guarded, "GET", "/api/tags", None, Host=host, Authorization=f"Bearer {FULL}")
    assert (reply.status_code == 200) is allowed
    if not allowed:
        assert reply.status_code == 403 and "LIMNER_ALLOWED_HOSTS" in reply.json()["error"]


def serve(tmp_path: Path, *flags: str, **env: str) -> subprocess.Popen[str]:
    environment = {**os.environ, "LIMNER_MODELS": str(tmp_path / "models"), **env}
    if "LIMNER_API_KEY" not in env:
        environment.pop("LIMNER_API_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "limner", "serve", *flags], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def answers(port: int, token: str = "") -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            return (
                httpx.get(f"http://127.0.0.1:{port}/api/tags", headers=headers).status_code == 200
            )
        except httpx.TransportError:
            time.sleep(0.2)
    return False


@pytest.mark.slow
def test_the_server_refuses_the_network_without_a_token_unless_told_loudly(tmp_path: Path) -> None:
    port = free_port()
    refused = serve(tmp_path, LIMNER_HOST=f"0.0.0.0:{port}")
    out, _ = refused.communicate(timeout=30)
    assert refused.returncode == 1 and "without an API token" in out and "LIMNER_API_KEY" in out

    with_token = serve(tmp_path, LIMNER_HOST=f"0.0.0.0:{port}", LIMNER_API_KEY=FULL)
    try:
        assert answers(port, FULL)
    finally:
        with_token.terminate()
        with_token.wait(30)

    port = free_port()
    opened = serve(tmp_path, "--insecure-open-to-network", LIMNER_HOST=f"0.0.0.0:{port}")
    try:
        assert answers(port)
    finally:
        opened.terminate()
        out, _ = opened.communicate(timeout=30)
    assert "WITHOUT AN API TOKEN" in out


def test_a_refused_token_reaches_sdk_callers_as_an_error(guarded: Any) -> None:
    with pytest.raises(LimnerError, match="API token"):
        Client(guarded.url, headers={"Authorization": "Bearer nope"}).list()
