"""LD-04 Slowloris and LD-05 slow body and big headers (docs/reliability.md §6).

Connections that trickle their headers are answered 408 and closed once LIMNER_HEADER_TIMEOUT
has passed (also on a kept-alive connection, for its second request), while real clients
are served as fast as before; headers over LIMNER_MAX_HEADER_BYTES (one 1 MB header, or 10k
headers) get 431; a body sent a byte at a time gets 408 once LIMNER_BODY_TIMEOUT passes
without progress. After each, the server answers at once."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from typing import Any

import httpx
import pytest

from helpers import add_fake
from limner import config
from limner.store import Store

HEAD = b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.fixture
def quick_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMNER_HEADER_TIMEOUT", "1.5")
    monkeypatch.setenv("LIMNER_BODY_TIMEOUT", "1")


async def trickle(port: int, every: float, until: float) -> list[tuple[float, bytes]]:
    """Open connections one after another until `until`, each sending its headers one byte
    every `every` seconds: (seconds each stayed open, what the server said)."""
    seen: list[tuple[float, bytes]] = []
    while time.monotonic() < until:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened, answer = time.monotonic(), b""
        for byte in HEAD:
            writer.write(bytes([byte]))
            try:
                answer = await asyncio.wait_for(reader.read(4096), every)
            except TimeoutError:
                continue
            except ConnectionError:
                pass
            break  # the server answered or closed
        seen.append((time.monotonic() - opened, answer))
        writer.close()
    return seen


async def real_client(url: str, until: float) -> list[float]:
    """A client asking for a short answer again and again: seconds per answer."""
    times = []
    body = {"model": "fake", "prompt": "hello there", "stream": False}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while time.monotonic() < until:
            started = time.perf_counter()
            reply = await client.post("/api/generate", json=body)
            assert reply.json()["response"].endswith("hello there")
            times.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)
    return times


async def attack(url: str, port: int, connections: int, every: float, seconds: float) -> Any:
    until = time.monotonic() + seconds
    baseline = await real_client(url, time.monotonic() + 1.0)
    jobs = [trickle(port, every, until) for _ in range(connections)]
    *slow, during = await asyncio.gather(*jobs, real_client(url, until))
    return baseline, [s for connection in slow for s in connection], during


def p99(times: list[float]) -> float:
    return statistics.quantiles(times, n=100)[98] if len(times) > 1 else times[0]


def run_attack(
    store: Store, serve_thread: Any, tally: Any, connections: int, every: float, seconds: float
) -> None:
    add_fake(store, "fake")
    server = serve_thread()
    assert httpx.post(server.url + "/api/generate", json={"model": "fake"}, timeout=60).is_success
    timeout = config.header_timeout()
    baseline, slow, during = asyncio.run(
        attack(server.url, server.port, connections, every, seconds)
    )
    closed_in_time = [(s, a) for s, a in slow if s <= timeout + 1.5]
    told = [a for _, a in slow if a.startswith(b"HTTP/1.1 408")]
    tally(len(slow) + len(during), len(closed_in_time) + len(during),
          f"{len(slow)} trickling connections open for at most {max(s for s, _ in slow):.1f} s "
          f"({len(told)} told 408); real clients p99 {p99(baseline) * 1000:.0f} ms alone, "
          f"{p99(during) * 1000:.0f} ms during")  # fmt: skip
    assert len(closed_in_time) == len(slow), sorted(s for s, _ in slow)[-3:]
    assert len(told) == len(slow)  # each heard why: 408 with a JSON error
    assert p99(during) <= max(2 * p99(baseline), 0.25)
    assert httpx.get(server.url + "/api/version", timeout=1).status_code == 200


def test_trickling_headers_are_cut_off_while_real_clients_are_served(
    store: Store, serve_thread: Any, tally: Any, quick_limits: None
) -> None:
    run_attack(store, serve_thread, tally, connections=5, every=0.3, seconds=3.5)


@pytest.mark.slow
@pytest.mark.full
def test_five_hundred_slowloris_connections_for_five_minutes_are_each_cut_within_ten_seconds(
    store: Store, serve_thread: Any, tally: Any
) -> None:
    run_attack(store, serve_thread, tally, connections=500, every=10.0, seconds=300.0)


def exchange(port: int, data: bytes, then: bytes = b"", pause: float = 0.0) -> tuple[bytes, float]:
    """Send `data` (and `then` a byte at a time, `pause` apart); what the server answered
    before closing, and when. A reset while sending counts as closing."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(30)
    started, answer = time.monotonic(), b""
    try:
        sock.sendall(data)
        for byte in then:
            time.sleep(pause)
            sock.sendall(bytes([byte]))
    except OSError:
        pass
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except OSError:
        pass
    sock.close()
    return answer, time.monotonic() - started


def test_a_second_request_trickled_on_a_kept_alive_connection_is_cut_off(
    store: Store, serve_thread: Any, quick_limits: None, tally: Any
) -> None:
    add_fake(store, "fake")
    server = serve_thread()
    body = b'{"model": "fake", "prompt": "hi", "stream": false}'
    first = HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    answer, took = exchange(server.port, first, then=HEAD, pause=0.2)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"HTTP/1.1 408" in answer and took < 1.5 + 5  # keep-alive (5 s) never reset it
    tally(1, 1, f"closed after {took:.1f} s")


@pytest.mark.parametrize(
    "headers",
    [b"X-Big: " + b"a" * (1 << 20) + b"\r\n",
     b"".join(b"X-Flood-%05d: x\r\n" % i for i in range(10_000))],
    ids=["one-1MB-header", "10k-headers"],
)  # fmt: skip
def test_oversized_headers_get_431(
    store: Store, serve_thread: Any, tally: Any, headers: bytes
) -> None:
    server = serve_thread()
    answer, took = exchange(server.port, HEAD + headers + b"Content-Length: 2\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.1 431") and b"LIMNER_MAX_HEADER_BYTES" in answer
    assert httpx.get(server.url + "/api/version", timeout=1).status_code == 200
    tally(1, 1, f"431 after {took * 1000:.0f} ms")


def test_headers_under_the_limit_are_served(store: Store, serve_thread: Any) -> None:
    add_fake(store, "fake")
    server = serve_thread()
    extra = {f"x-ok-{i}": "v" * 100 for i in range(100)}  # 10 KB of headers: fine
    body = {"model": "fake", "prompt": "hi", "stream": False}
    reply = httpx.post(server.url + "/api/generate", json=body, headers=extra, timeout=30)
    assert reply.status_code == 200


def test_a_body_sent_a_byte_at_a_time_gets_408(
    store: Store, serve_thread: Any, tally: Any, quick_limits: None
) -> None:
    add_fake(store, "fake")
    server = serve_thread()
    body = b'{"model": "fake", "prompt": "' + b"x" * 100 + b'"}'
    answer, took = exchange(server.port, HEAD + b"Content-Length: %d\r\n\r\n" % len(body),
                            then=body, pause=0.2)  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 408") and b"body came too slowly" in answer
    assert took < 1 + 1.5
    assert server.scheduler.in_flight == 0 and server.scheduler.loads == 0
    assert httpx.get(server.url + "/api/version", timeout=1).status_code == 200
    tally(1, 1, f"408 after {took:.1f} s")
