"""LD-08 Worker crash (docs/reliability.md §6): SIGKILL a model's runner process in the middle of
a request. A stream ends with an `{"error"}` line; an answer not yet begun is a JSON error
with a real status; the server stays up and the next request starts a new runner."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from helpers import add_fake, add_fake_draw
from limner.store import Store

CRASHED = "the model's runner stopped unexpectedly"


def runner_pid(server: Any) -> int:
    (model,) = server.scheduler.loaded.values()
    pid: int = model.runner.pid
    return pid


def slot_held(server: Any) -> bool:
    """The request holds its model: it went to the runner (within the wait that follows)."""
    return any(m.slot.locked() for m in list(server.scheduler.loaded.values()))


def no_leak(message: str) -> bool:
    """P4: no traceback, address or absolute path in what the client reads."""
    return "Traceback" not in message and " 0x" not in message and "/tmp" not in message


def kill_when(server: Any, condition: Any) -> int:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the request never reached the runner"
        time.sleep(0.01)
    pid = runner_pid(server)
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.parametrize(
    ("model", "body"),
    [("chat", {"prompt": "SLOW"}),
     ("draw", {"prompt": "SLOW", "steps": 50})],
    ids=["chat", "drawing"],
)  # fmt: skip
def test_a_runner_killed_mid_stream_ends_the_stream_with_an_error_line(
    store: Store, serve_thread: Any, tally: Any, model: str, body: dict[str, Any]
) -> None:
    add_fake(store, "chat", token_delay=0.05)
    add_fake_draw(store, "draw", token_delay=0.05)
    server = serve_thread()
    request = {"model": model, **body}
    with httpx.stream("POST", server.url + "/api/generate", json=request, timeout=30) as reply:
        assert reply.status_code == 200
        lines = reply.iter_lines()
        first = json.loads(next(lines))
        assert first["done"] is False
        killed = kill_when(server, lambda: True)
        rest = [json.loads(line) for line in lines]
    assert rest and "error" in rest[-1] and CRASHED in rest[-1]["error"]
    assert no_leak(rest[-1]["error"]) and not any(c.get("done") for c in rest)
    assert_served_again(server, model, killed)
    tally(1, 1)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "one-answer"])
def test_a_runner_killed_before_the_answer_begins_is_a_json_500(
    store: Store, serve_thread: Any, tally: Any, stream: bool
) -> None:
    add_fake(store, "chat", token_delay=1.0)  # a second before the first word
    server = serve_thread()
    answers: list[httpx.Response] = []
    body = {"model": "chat", "prompt": "SLOW", "stream": stream}
    asking = threading.Thread(target=lambda: answers.append(
        httpx.post(server.url + "/api/generate", json=body, timeout=30)))  # fmt: skip
    asking.start()
    killed = kill_when(server, lambda: slot_held(server) and time.sleep(0.3) is None)
    asking.join(30)
    (reply,) = answers
    assert reply.status_code == 500 and reply.headers["content-type"] == "application/json"
    assert CRASHED in reply.json()["error"] and no_leak(reply.json()["error"])
    assert_served_again(server, "chat", killed)
    tally(1, 1)


def assert_served_again(server: Any, model: str, killed: int) -> None:
    assert httpx.get(server.url + "/api/version", timeout=1).status_code == 200
    body = {"model": model, "prompt": "again", "stream": False, "steps": 2}
    if model == "chat":
        body.pop("steps")
    reply = httpx.post(server.url + "/api/generate", json=body, timeout=30)
    assert reply.status_code == 200 and reply.json()["done"] is True
    assert runner_pid(server) != killed and server.scheduler.loads == 2
    assert server.scheduler.in_flight == 0
