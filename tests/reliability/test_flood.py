"""LD-01 Flood (docs/reliability.md §6): more concurrent long requests than a model runs plus its
queue holds, several rounds. The excess is answered 503 with Retry-After at once, no
connection is reset, and every accepted request completes with its whole answer."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
import pytest

from helpers import add_fake
from limner.store import Store

WORDS = 12  # each accepted answer: w0 .. w11, one every 30 ms
BUSY = "server busy, please try again.  maximum pending requests exceeded"


async def flood(url: str, count: int, body: dict[str, Any]) -> list[tuple[float, Any]]:
    """`count` requests at once: (seconds to the answer, response or transport error)."""
    limits = httpx.Limits(max_connections=count + 1, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one() -> tuple[float, Any]:
            started = time.perf_counter()
            try:
                reply: Any = await client.post(url, json=body)
            except httpx.TransportError as exc:
                reply = exc
            return time.perf_counter() - started, reply

        return await asyncio.gather(*(one() for _ in range(count)))


def version_answers(url: str) -> bool:
    """P2: the server answers /api/version within a second right after the case."""
    return httpx.get(url + "/api/version", timeout=1).status_code == 200


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


@pytest.mark.parametrize("queue", [2])
def test_a_flood_gets_503_with_retry_after_quickly_and_the_accepted_complete(
    store: Store, serve_thread: Any, tally: Any, queue: int
) -> None:
    add_fake(store, "slow", token_delay=0.03)
    server = serve_thread(max_queue=queue)
    load = httpx.post(server.url + "/api/generate", json={"model": "slow"}, timeout=60)
    assert load.status_code == 200  # loaded first: the flood measures the queue, not a load
    parallel, excess = 1, 10  # a model's runner serves one request at a time
    body = {"model": "slow", "prompt": "SLOW", "stream": False, "options": {"num_predict": WORDS}}
    expected = " ".join(f"w{i}" for i in range(WORDS))
    busy_times: list[float] = []
    tried = held = 0
    for _ in range(3):
        answers = asyncio.run(flood(server.url + "/api/generate", parallel + queue + excess, body))
        tried += len(answers)
        resets = [r for _, r in answers if isinstance(r, Exception)]
        assert not resets, f"connections reset or failed: {resets}"
        busy = [(t, r) for t, r in answers if r.status_code == 503]
        done = [r for _, r in answers if r.status_code == 200]
        assert len(busy) == excess and len(done) == parallel + queue, [
            r.status_code for _, r in answers
        ]
        for _, reply in busy:
            assert reply.headers["retry-after"] == "1" and reply.json() == {"error": BUSY}
        for reply in done:
            assert reply.json()["response"] == expected and reply.json()["eval_count"] == WORDS
        busy_times += [t for t, _ in busy]
        held += len(answers)
        assert server.scheduler.in_flight == 0
        assert version_answers(server.url)
    tally(tried, held, f"503 after median {ms(statistics.median(busy_times))}, "
          f"max {ms(max(busy_times))} ({len(busy_times)} answers)")  # fmt: skip
    assert max(busy_times) < 0.5, f"503s took up to {ms(max(busy_times))}"
    assert statistics.median(busy_times) < 0.2


def test_requests_beyond_max_connections_get_a_json_503_at_once(
    store: Store, serve_thread: Any, tally: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMNER_MAX_CONNECTIONS", "4")
    add_fake(store, "slow", token_delay=0.05)
    server = serve_thread(max_queue=100)
    assert httpx.post(server.url + "/api/generate", json={"model": "slow"}, timeout=60).is_success
    body = {"model": "slow", "prompt": "SLOW", "stream": False, "options": {"num_predict": 5}}
    answers = asyncio.run(flood(server.url + "/api/generate", 10, body))
    assert not [r for _, r in answers if isinstance(r, Exception)]
    busy = [(t, r) for t, r in answers if r.status_code == 503]
    assert len(busy) == 6 and sum(r.status_code == 200 for _, r in answers) == 4
    for _, reply in busy:
        assert reply.headers["retry-after"] == "1"
        assert "LIMNER_MAX_CONNECTIONS" in reply.json()["error"]
    tally(len(answers), len(answers), f"503 after max {ms(max(t for t, _ in busy))}")
    assert version_answers(server.url)
