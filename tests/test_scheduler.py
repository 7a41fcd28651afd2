"""The scheduler with real runner processes hosting the scripted fake engine."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from helpers import add_fake
from limner.engines import Message, Options, Piece
from limner.errors import InsufficientMemory, LimnerError, ServerBusy
from limner.names import ModelName
from limner.scheduler import Loaded, Scheduler
from limner.store import Store

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def ask(text: str) -> list[Message]:
    return [Message("user", text)]


async def answer(scheduler: Scheduler, model: str, text: str = "hi", **lease: Any) -> str:
    async with scheduler.lease(ModelName.parse(model), **lease) as loaded:
        steps = loaded.runner.chat(ask(text), Options())
        return "".join([s.text async for s in steps if isinstance(s, Piece)])


async def exited(loaded: Loaded, within: float = 5.0) -> bool:
    """Whether the model's runner stops within `within` seconds."""
    deadline = time.monotonic() + within
    while loaded.runner.alive and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return not loaded.runner.alive


async def test_a_loaded_model_is_reused(store: Store) -> None:
    add_fake(store, "a")
    scheduler = Scheduler(store)
    assert await answer(scheduler, "a", "one") == "I see 0 picture(s). You said: one"
    assert await answer(scheduler, "a", "two") == "I see 0 picture(s). You said: two"
    assert scheduler.loads == 1
    await scheduler.close()


async def test_concurrent_requests_share_one_runner(store: Store) -> None:
    add_fake(store, "a")
    scheduler = Scheduler(store)
    replies = await asyncio.gather(*(answer(scheduler, "a", f"n{i}") for i in range(4)))
    assert sorted(replies) == [f"I see 0 picture(s). You said: n{i}" for i in range(4)]
    assert scheduler.loads == 1
    await scheduler.close()


async def test_keep_alive_expiry_unloads_and_stops_the_process(store: Store) -> None:
    add_fake(store, "a")
    scheduler = Scheduler(store, keep_alive=0.3)
    await answer(scheduler, "a")
    [loaded] = scheduler.running()
    assert loaded.expires_at > time.time()
    await asyncio.sleep(0.6)
    assert scheduler.running() == []
    assert await exited(loaded)


async def test_keep_alive_zero_unloads_after_the_request(store: Store) -> None:
    add_fake(store, "a")
    scheduler = Scheduler(store)
    await answer(scheduler, "a", keep_alive=0)
    assert scheduler.running() == []
    await scheduler.settle()


async def test_negative_keep_alive_keeps_the_model_forever(store: Store) -> None:
    add_fake(store, "a")
    scheduler = Scheduler(store, keep_alive=0.1)
    await answer(scheduler, "a", keep_alive=float("inf"))
    await asyncio.sleep(0.3)
    assert [m.name.model for m in scheduler.running()] == ["a"]
    await scheduler.close()


async def test_the_least_recently_used_idle_model_is_evicted(store: Store) -> None:
    for name in ("a", "b", "c"):
        add_fake(store, name, tag=name)  # distinct configs: distinct manifests
    scheduler = Scheduler(store, max_loaded=2)
    await answer(scheduler, "a")
    await answer(scheduler, "b")
    old_b = next(m for m in scheduler.running() if m.name.model == "b")
    await answer(scheduler, "a")
    await answer(scheduler, "c")
    assert sorted(m.name.model for m in scheduler.running()) == ["a", "c"]
    assert await exited(old_b)
    assert scheduler.loads == 3
    await scheduler.close()


async def test_a_full_queue_answers_server_busy(store: Store) -> None:
    add_fake(store, "a", token_delay=0.05)
    scheduler = Scheduler(store, max_queue=1)
    first = asyncio.create_task(answer(scheduler, "a", "SLOW"))
    await asyncio.sleep(1.0)  # loaded and generating
    second = asyncio.create_task(answer(scheduler, "a", "queued"))
    await asyncio.sleep(0.1)
    with pytest.raises(ServerBusy):
        await answer(scheduler, "a", "one too many")
    assert (await second).endswith("queued")
    assert (await first).startswith("w0 w1")
    await scheduler.close()


async def test_closing_a_stream_cancels_generation_and_frees_the_runner(store: Store) -> None:
    add_fake(store, "a", token_delay=0.2)
    scheduler = Scheduler(store)
    async with scheduler.lease(ModelName.parse("a")) as loaded:
        stream = loaded.runner.chat(ask("SLOW"), Options())
        assert await anext(stream) == Piece("w0")
        await stream.aclose()  # what a disconnecting client causes
    started = time.monotonic()
    assert (await answer(scheduler, "a", "next")).endswith("next")
    assert time.monotonic() - started < 2  # not the 20 s the slow answer would take
    await scheduler.close()


async def test_a_crashed_runner_fails_its_request_then_a_new_one_serves(store: Store) -> None:
    add_fake(store, "a")
    scheduler = Scheduler(store)
    with pytest.raises(LimnerError, match="stopped unexpectedly"):
        await answer(scheduler, "a", "CRASH")
    assert (await answer(scheduler, "a", "again")).endswith("again")
    assert scheduler.loads == 2
    await scheduler.close()


async def test_a_model_that_fails_to_load_reports_why(store: Store) -> None:
    add_fake(store, "broken", fail_load=True)
    scheduler = Scheduler(store)
    with pytest.raises(LimnerError, match="scripted to fail loading"):
        await answer(scheduler, "broken")
    assert scheduler.running() == []


async def test_close_stops_every_runner(store: Store) -> None:
    for name in ("a", "b"):
        add_fake(store, name, tag=name)
    scheduler = Scheduler(store, keep_alive=float("inf"))
    await answer(scheduler, "a")
    await answer(scheduler, "b")
    runners = [m.runner for m in scheduler.running()]
    await scheduler.close()
    assert not any(runner.alive for runner in runners)
    assert scheduler.running() == []


async def test_a_load_that_takes_too_long_is_stopped_with_a_clear_error(store: Store) -> None:
    add_fake(store, "sluggish", load_delay=30)
    scheduler = Scheduler(store, load_timeout=1.0)
    with pytest.raises(LimnerError, match="LIMNER_LOAD_TIMEOUT"):
        await answer(scheduler, "sluggish")
    assert scheduler.running() == []


async def test_the_memory_limit_unloads_idle_models_to_make_room(store: Store) -> None:
    for name in ("a", "b"):
        add_fake(store, name, tag=name)  # each runner reports 1024 bytes
    scheduler = Scheduler(store, memory_limit=1200)  # one runner (1024) + one manifest
    await answer(scheduler, "a")
    await answer(scheduler, "b")
    assert [m.name.model for m in scheduler.running()] == ["b"]
    async with scheduler.lease(ModelName.parse("b"), work_bytes=10_000):
        pass  # already loaded: work_bytes matter only for loads
    assert [m.name.model for m in scheduler.running()] == ["b"]
    await scheduler.close()


async def test_a_model_that_can_never_fit_is_refused_with_both_numbers(store: Store) -> None:
    add_fake(store, "a")
    scheduler = Scheduler(store, memory_limit=10)
    with pytest.raises(InsufficientMemory, match=r"needs .* B .* the memory limit is 10 B"):
        await answer(scheduler, "a", "fits?")
    assert scheduler.loads == 0
    await scheduler.close()
