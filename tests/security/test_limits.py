"""Request limits (docs/reliability.md IN-*, LD-*): pictures per request, a full queue answered
with 503 and Retry-After, counted before any work."""

from __future__ import annotations

import base64
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from helpers import add_fake, add_fake_draw, picture
from limner.store import Store

PNG = base64.b64encode(picture()).decode()


@pytest.fixture
def limited(store: Store, make_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("LIMNER_MAX_PICTURES", "3")
    add_fake(store, "chat")
    add_fake_draw(store, "draw")
    return make_server()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/generate", {"model": "chat", "prompt": "x", "images": [PNG] * 4}),
        ("/api/chat", {"model": "chat", "messages": [
            {"role": "user", "content": "a", "images": [PNG] * 2},
            {"role": "user", "content": "b", "images": [PNG] * 2}]}),
        ("/api/generate", {"model": "draw", "prompt": "x", "images": [PNG],
                           "style_images": [PNG] * 3}),
    ],
)  # fmt: skip
def test_more_pictures_than_allowed_get_413_before_any_work(
    limited: Any, path: str, body: dict[str, Any]
) -> None:
    reply = httpx.post(limited.url + path, json=body, timeout=30)
    assert reply.status_code == 413 and "LIMNER_MAX_PICTURES" in reply.json()["error"]
    assert limited.scheduler.loads == 0


def test_pictures_up_to_the_limit_are_accepted(limited: Any) -> None:
    body = {"model": "chat", "prompt": "x", "images": [PNG] * 3, "stream": False}
    assert httpx.post(limited.url + "/api/generate", json=body, timeout=60).status_code == 200


def test_a_full_queue_says_when_to_come_back(store: Store, make_server: Any) -> None:
    add_fake(store, "chat", token_delay=0.05)
    server = make_server(max_queue=1)
    slow = {"model": "chat", "prompt": "SLOW", "stream": False}
    post = functools.partial(httpx.post, server.url + "/api/generate", json=slow, timeout=60)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post)  # holds the model's one slot
        deadline = time.monotonic() + 30
        while not server.scheduler.loaded and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting = pool.submit(post)  # waits in the queue of one
        while server.scheduler.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        busy = httpx.post(server.url + "/api/generate", json=slow, timeout=60)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert running.result().status_code == waiting.result().status_code == 200
