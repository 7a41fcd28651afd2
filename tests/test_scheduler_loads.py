"""Loads never stall other models: the scheduler with a runner factory the test holds.

Every load waits on an event the test sets, so what runs during a load is pinned down by
order alone, never by sleeping. The last test does the same through a real server with
two real runner processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import add_fake
from limner.errors import RunnerFailed
from limner.names import ModelName
from limner.runner import Placement
from limner.scheduler import Loaded, Scheduler
from limner.store import Store

pytestmark = pytest.mark.anyio

GUARD = 10.0  # seconds a step may take before the test calls it stuck (never reached when green)


class HeldRunner:
    """Enough of a runner for leasing: it serves nothing, and records that it was stopped."""

    def __init__(self, model: str, memory: int, concurrency: int) -> None:
        self.model = model
        self.memory = memory
        self.vram = 0
        self.load_duration = 0
        self.concurrency = concurrency
        self.stopped = False

    @property
    def alive(self) -> bool:
        return not self.stopped

    async def stop(self, grace: float = 5.0) -> None:
        self.stopped = True

    def kill_now(self) -> None:
        self.stopped = True


class HeldLoads:
    """A `start_runner` whose loads each wait until the test lets them finish (or fail)."""

    def __init__(self, memory: int = 0, concurrency: int = 1) -> None:
        self.memory = memory
        self.concurrency = concurrency
        self.started: list[str] = []
        self.runners: dict[str, HeldRunner] = {}
        self._gates: dict[str, asyncio.Future[None]] = {}

    async def __call__(
        self, model_format: str, files: dict[str, Path], options: dict[str, Any],
        timeout: float, placement: Placement,
    ) -> HeldRunner:  # fmt: skip
        model = placement.model.removesuffix(":latest")
        self.started.append(model)
        try:
            await self._gate(model)
        finally:
            self._gates.pop(model)  # the next load of this model waits again
        runner = HeldRunner(model, self.memory, self.concurrency)
        self.runners[model] = runner
        return runner

    def _gate(self, model: str) -> asyncio.Future[None]:
        if model not in self._gates:
            self._gates[model] = asyncio.get_running_loop().create_future()
        return self._gates[model]

    def finish(self, model: str) -> None:
        self._gate(model).set_result(None)

    def fail(self, model: str, error: Exception) -> None:
        self._gate(model).set_exception(error)


async def until(condition: Callable[[], bool]) -> None:
    """Let the event loop run until `condition` holds (bounded by turns, not by time)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def models(store: Store, *names: str) -> None:
    for name in names:
        add_fake(store, name, tag=name)  # distinct configs: distinct digests


class Leases:
    """Leases held open in tasks, so a test can hold a model busy and let it go."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.tasks: list[asyncio.Task[Loaded]] = []
        self._stack = contextlib.AsyncExitStack()
        self._release: dict[asyncio.Task[Loaded], asyncio.Event] = {}

    def hold(self, model: str, **lease: Any) -> asyncio.Task[Loaded]:
        held, release = asyncio.get_running_loop().create_future(), asyncio.Event()

        async def run() -> Loaded:
            async with self.scheduler.lease(ModelName.parse(model), **lease) as loaded:
                held.set_result(loaded)
                await release.wait()
            return loaded

        task = asyncio.create_task(run())
        self._release[task] = release
        self.tasks.append(task)
        task.held = held  # type: ignore[attr-defined]
        return task

    def let_go(self, task: asyncio.Task[Loaded]) -> None:
        self._release[task].set()


async def held(task: asyncio.Task[Loaded]) -> Loaded:
    """The model a held lease got, once it has it."""
    loaded: Loaded = await asyncio.wait_for(task.held, GUARD)  # type: ignore[attr-defined]
    return loaded


@contextlib.asynccontextmanager
async def scheduler_with(
    store: Store, loads: HeldLoads, **settings: Any
) -> AsyncIterator[tuple[Scheduler, Leases]]:
    scheduler = Scheduler(store, start_runner=loads, keep_alive=600.0, **settings)
    leases = Leases(scheduler)
    try:
        yield scheduler, leases
    finally:
        for task in leases.tasks:
            task.cancel()
        await asyncio.gather(*leases.tasks, return_exceptions=True)
        await scheduler.close()


async def test_a_loaded_model_answers_while_another_loads(store: Store) -> None:
    models(store, "a", "b")
    loads = HeldLoads()
    async with scheduler_with(store, loads) as (_, leases):
        loads.finish("a")
        leases.let_go(first := leases.hold("a"))
        await first
        waiting_for_b = leases.hold("b")
        await until(lambda: loads.started == ["a", "b"])
        # b's load is held open; a lease of the loaded a must not wait for it.
        a = await held(again := leases.hold("a"))
        assert a.name.model == "a" and not waiting_for_b.held.done()  # type: ignore[attr-defined]
        leases.let_go(again)
        loads.finish("b")
        assert (await held(waiting_for_b)).name.model == "b"


async def test_two_requests_for_a_loading_model_share_one_load(store: Store) -> None:
    models(store, "b")
    loads = HeldLoads(concurrency=2)
    async with scheduler_with(store, loads) as (scheduler, leases):
        first, second = leases.hold("b"), leases.hold("b")
        await until(lambda: scheduler.waiting == 2 and loads.started == ["b"])
        loads.finish("b")
        assert await held(first) is await held(second)
        assert scheduler.loads == 1 and loads.started == ["b"]
        [model] = scheduler.running()
        assert model.references == 2


async def test_a_failed_load_wakes_every_waiter_with_its_error_and_reserves_nothing(
    store: Store,
) -> None:
    models(store, "b")
    loads = HeldLoads()
    async with scheduler_with(store, loads) as (scheduler, leases):
        waiters = [leases.hold("b") for _ in range(3)]
        await until(lambda: scheduler.waiting == 3 and loads.started == ["b"])
        assert scheduler.used_bytes() > 0  # the load is admitted: its estimate is reserved
        loads.fail("b", RunnerFailed("the model did not load: scripted"))
        for waiter in waiters:
            with pytest.raises(RunnerFailed, match="scripted"):
                await asyncio.wait_for(waiter, GUARD)
        assert scheduler.loading == {} and scheduler.running() == []
        assert scheduler.used_bytes() == 0 and scheduler.in_flight == 0
        retry = leases.hold("b")  # a later request loads afresh
        await until(lambda: loads.started == ["b", "b"])
        loads.finish("b")
        assert (await held(retry)).name.model == "b"


async def test_the_least_recently_used_idle_model_makes_room(store: Store) -> None:
    models(store, "a", "b", "c")
    loads = HeldLoads()
    async with scheduler_with(store, loads, max_loaded=2) as (scheduler, leases):
        for name in ("a", "b", "a"):  # b is now the least recently used
            if name not in loads.runners:
                loads.finish(name)
            leases.let_go(task := leases.hold(name))
            await task
        loads.finish("c")
        leases.let_go(task := leases.hold("c"))
        await task
        assert sorted(m.name.model for m in scheduler.running()) == ["a", "c"]
        await scheduler.settle()
        assert loads.runners["b"].stopped and not loads.runners["a"].stopped


async def test_a_load_waiting_for_a_busy_model_blocks_no_one_else(store: Store) -> None:
    models(store, "a", "c")
    loads = HeldLoads(concurrency=2)
    async with scheduler_with(store, loads, max_loaded=1) as (scheduler, leases):
        loads.finish("a")
        busy = leases.hold("a")
        await held(busy)
        waiting_for_c = leases.hold("c")
        await until(lambda: scheduler.waiting == 1)
        # c must wait for a to be idle before evicting it; a request to a goes on meanwhile.
        quick = leases.hold("a")
        assert (await held(quick)).name.model == "a"
        assert loads.started == ["a"]
        leases.let_go(quick)
        await quick
        assert loads.started == ["a"]  # a is still busy with the first request
        leases.let_go(busy)
        await until(lambda: loads.started == ["a", "c"])
        loads.finish("c")
        assert (await held(waiting_for_c)).name.model == "c"
        assert loads.runners["a"].stopped


async def test_a_loading_model_counts_against_memory_from_its_admission(store: Store) -> None:
    models(store, "a", "b")
    need = store.entry(ModelName.parse("a")).manifest.size()
    loads = HeldLoads()
    async with scheduler_with(store, loads, memory_limit=need + need // 2) as (scheduler, leases):
        first = leases.hold("a")
        await until(lambda: loads.started == ["a"])
        second = leases.hold("b")
        await until(lambda: scheduler.waiting == 2)
        assert scheduler.used_bytes() == need and loads.started == ["a"]  # b does not fit
        loads.finish("a")
        await held(first)
        assert loads.started == ["a"]  # a is loaded and busy: still no room for b
        leases.let_go(first)
        await until(lambda: loads.started == ["a", "b"])
        loads.finish("b")
        assert (await held(second)).name.model == "b"


async def test_cancelling_a_request_waiting_for_a_load_leaves_the_load_to_finish(
    store: Store,
) -> None:
    models(store, "b")
    loads = HeldLoads()
    async with scheduler_with(store, loads) as (scheduler, leases):
        waiter = leases.hold("b")
        await until(lambda: loads.started == ["b"])
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert scheduler.waiting == 0 and scheduler.in_flight == 0
        loads.finish("b")
        await until(lambda: bool(scheduler.running()))
        [model] = scheduler.running()
        assert model.references == 0 and model.expires_at < float("inf")  # keep_alive runs


async def test_a_larger_window_reloads_once_the_running_request_ends(store: Store) -> None:
    models(store, "g")
    loads = HeldLoads(concurrency=2)
    async with scheduler_with(store, loads) as (scheduler, leases):
        loads.finish("g")
        small = await held(busy := leases.hold("g"))
        old_runner = loads.runners["g"]
        gguf = {**small.described.config, "model_format": "gguf"}  # a window fixed at load
        small.described = dataclasses.replace(small.described, config=gguf)
        small.context_length = 256
        bigger = leases.hold("g", num_ctx=512)
        await until(lambda: loads.started == ["g", "g"])
        assert scheduler.running() == [] and small in scheduler.leaving
        loads.finish("g")
        assert (await held(bigger)) is not small
        assert not old_runner.stopped  # the first request still runs on it
        leases.let_go(busy)
        await until(lambda: small not in scheduler.leaving)
        assert old_runner.stopped


@pytest.mark.slow
def test_a_chat_is_answered_while_another_model_loads_in_a_real_server(
    store: Store, make_server: Any
) -> None:
    add_fake(store, "quick", tag="quick")
    add_fake(store, "sluggish", tag="sluggish", load_delay=60)
    server = make_server()
    body = {"model": "quick", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    httpx.post(f"{server.url}/api/chat", json=body, timeout=30).raise_for_status()

    async def both() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=90) as client:
            slow_body = {**body, "model": "sluggish"}
            loading = asyncio.create_task(client.post("/api/chat", json=slow_body))
            await until_loading(server.scheduler)
            reply = await client.post("/api/chat", json=body)
            assert reply.json()["message"]["content"].endswith("You said: hi")
            assert not loading.done() and server.scheduler.loading  # still loading
            loading.cancel()

    asyncio.run(both())


async def until_loading(scheduler: Scheduler) -> None:
    for _ in range(1000):
        if scheduler.loading:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the sluggish model never started loading")
