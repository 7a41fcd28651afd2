"""LD-09 Graceful shutdown (docs/reliability.md §6): SIGTERM a real `limner serve` with ten
requests in flight. The listener closes at once, so a new request is refused at connect
(uvicorn stops accepting before it drains; nothing can answer it 503); the requests in
flight finish whole; every runner process is gone; the server exits within
LIMNER_SHUTDOWN_TIMEOUT + 2 s. A request longer than the timeout is cut at the timeout."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import httpx

from helpers import add_fake
from limner.store import Store
from reliability.conftest import alive

WORDS = 14  # 0.7 s each, five in a row per model: longer than uvicorn's old 3 s drain


def stream(url: str, model: str, words: int, into: dict[str, Any]) -> None:
    """Stream one answer; `into` gets the text, whether it ended with done, and any error."""
    body = {"model": model, "prompt": "SLOW", "options": {"num_predict": words}}
    into.update(text="", done=False)
    try:
        with httpx.stream("POST", url + "/api/generate", json=body, timeout=60) as reply:
            into["status"] = reply.status_code
            for line in reply.iter_lines():
                chunk = json.loads(line)
                into["text"] += chunk.get("response", "")
                into["done"] = chunk.get("done", False)
                into["error"] = chunk.get("error")
    except httpx.HTTPError as exc:
        into["error"] = repr(exc)
    into["ended"] = time.monotonic()


def refused(url: str) -> bool:
    try:
        httpx.get(url + "/api/version", timeout=1)
    except httpx.ConnectError:
        return True
    except (httpx.ReadError, httpx.RemoteProtocolError):
        return True  # accepted into the backlog as the listener closed: reset or closed, unserved
    return False


def start_streams(server: Any, models: list[str], count: int, words: int) -> list[dict[str, Any]]:
    for model in models:  # loaded first, so every request is in flight when SIGTERM comes
        assert httpx.post(server.url + "/api/generate", json={"model": model}, timeout=60)
    results: list[dict[str, Any]] = [{} for _ in range(count)]
    for i, into in enumerate(results):
        args = (server.url, models[i % len(models)], words, into)
        threading.Thread(target=stream, args=args, daemon=True).start()
    deadline = time.monotonic() + 10
    while sum(r.get("status") == 200 for r in results) < len(models):  # the first words came
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return results


def test_sigterm_refuses_new_requests_finishes_those_in_flight_and_reaps_runners(
    store: Store, serve_process: Any, tally: Any
) -> None:
    for model in ("a", "b"):
        add_fake(store, model, token_delay=0.05, variant=model)  # two runners, not one
    server = serve_process(LIMNER_SHUTDOWN_TIMEOUT="10")
    results = start_streams(server, ["a", "b"], 10, WORDS)
    runners = server.children()
    assert len(runners) == 2
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    while not refused(server.url):
        assert time.monotonic() - signalled < 1.0, "the listener stayed open after SIGTERM"
    refused_after = time.monotonic() - signalled
    assert sum("ended" not in r for r in results) > 0  # refusing while requests still ran
    code = server.process.wait(10 + 2)
    exited = time.monotonic() - signalled
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
    expected = " ".join(f"w{i}" for i in range(WORDS))
    whole = [r for r in results if r["done"] and r["text"] == expected and not r.get("error")]
    assert len(whole) == len(results), results
    assert all(r["ended"] <= signalled + exited for r in results)
    deadline = time.monotonic() + 2
    while any(alive(pid) for pid in runners) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(alive(pid) for pid in runners), "a runner outlived its server"
    tally(len(results) + 1, len(whole) + 1, f"refused new connections {refused_after * 1000:.0f} ms "
          f"after SIGTERM; 10 in flight finished; exited after {exited:.1f} s")  # fmt: skip


def test_a_request_longer_than_the_shutdown_timeout_is_cut_and_the_server_exits_in_time(
    store: Store, serve_process: Any, tally: Any
) -> None:
    add_fake(store, "slow", token_delay=0.1)
    server = serve_process(LIMNER_SHUTDOWN_TIMEOUT="2")
    (result,) = start_streams(server, ["slow"], 1, 100)  # 10 s of words
    runners = server.children()
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = server.process.wait(2 + 2)
    exited = time.monotonic() - signalled
    deadline = time.monotonic() + 2
    while "ended" not in result and time.monotonic() < deadline:
        time.sleep(0.02)
    assert code in (0, -signal.SIGTERM) and exited <= 2 + 2
    assert not result["done"]  # cut, and the client reads why in the stream's last line
    assert "shutting down" in result.get("error", ""), result
    while any(alive(pid) for pid in runners) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(alive(pid) for pid in runners)
    tally(1, 1, f"exited {exited:.1f} s after SIGTERM; the client read: {result['error'][:80]}")


def test_an_upload_in_progress_is_cut_at_sigterm_and_leaves_no_temporary_file(
    store: Store, serve_process: Any, tally: Any
) -> None:
    server = serve_process(LIMNER_SHUTDOWN_TIMEOUT="10")
    sent: list[int] = []
    reply: dict[str, Any] = {}

    def body() -> Any:
        for _ in range(2000):  # 2 GB at 1 MB every 10 ms: far longer than the test
            sent.append(1)
            yield b"\0" * (1 << 20)
            time.sleep(0.01)

    def upload() -> None:
        try:
            reply["status"] = httpx.post(f"{server.url}/api/blobs/sha256:{'0' * 64}",
                                         content=body(), timeout=30).status_code  # fmt: skip
        except httpx.HTTPError as exc:
            reply["error"] = repr(exc)

    threading.Thread(target=upload, daemon=True).start()
    while len(sent) < 20 or not list((store.root / "blobs").glob(".incoming-*")):
        time.sleep(0.01)
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = server.process.wait(10)
    exited = time.monotonic() - signalled
    assert code in (0, -signal.SIGTERM) and exited < 3, f"exited after {exited:.1f} s"
    assert list((store.root / "blobs").glob(".incoming-*")) == []
    tally(1, 1, f"an upload at {len(sent)} MB: exited {exited:.1f} s after SIGTERM, {reply}")
