"""The scheduler owns every loaded model: load, share, queue, expire, evict, unload.

`lease(name)` is the only way to a model; `work_bytes` is what the request itself will
need beyond the weights (a diffusion model's activations at the requested size), and
`num_ctx` the context window it asks for. A lease counts as a reference; a model whose
references drop to zero starts its keep_alive timer (0: unload now; inf: never). Each
runner serves one request at a time; requests wait in a queue bounded by LIMNER_MAX_QUEUE
and beyond it get ServerBusy (503).

Memory: before a load the model's need is estimated -- weights, plus keys and values for
its whole window (chat models), plus the request's work (drawing). When LIMNER_MAX_LOADED_MODELS
are loaded, or the loaded models plus that need would pass LIMNER_MEMORY_LIMIT, the least
recently used idle model is unloaded first (if none is idle, the load waits). A model that
cannot fit even alone is refused with both numbers (InsufficientMemory, 507).

Work that is no loaded model (LoRA training) takes the whole budget with `exclusive()`: every
model is unloaded once its requests end, and until the work ends a load is refused with
ServerBusy (503) saying why.

Windows: a model loads with the request's `num_ctx`, else its parameters' `num_ctx`, else
its trained length capped by LIMNER_CONTEXT_LENGTH. A later request asking for a smaller
window uses the loaded runner as is (Ollama reloads: #6148, #8903); only a larger one reloads
a model whose window is fixed at load (GGUF). The runner factory is injected so tests can
count and fake loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from limner.errors import InsufficientMemory, ServerBusy
from limner.names import ModelName
from limner.runner import Placement, RunnerProcess
from limner.store.create import described
from limner.store.manifests import PARAMS, TEMPLATE, Entry, Store

log = logging.getLogger("limner.scheduler")


class Runner(Protocol):
    memory: int
    vram: int
    load_duration: int

    @property
    def alive(self) -> bool: ...

    def chat(
        self, messages: list[dict[str, Any]], options: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]: ...

    def generate_image(
        self, request: dict[str, Any], finish: asyncio.Event | None = None
    ) -> AsyncIterator[dict[str, Any]]: ...

    def train(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...

    async def stop(self, grace: float = 5.0) -> None: ...

    def kill_now(self) -> None: ...


StartRunner = Callable[[str, dict[str, Path], dict[str, Any], float, Placement], Awaitable[Runner]]


@dataclass
class Loaded:
    """A model in memory, as /api/ps shows it."""

    key: str
    name: ModelName
    digest: str
    runner: Runner
    keep_alive: float
    config: dict[str, Any]
    size: int
    references: int = 0
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float = math.inf  # wall-clock seconds; inf while in use or forever
    slot: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    timer: asyncio.TimerHandle | None = None
    fresh: bool = True  # the first lease after a load reports load_duration
    context_length: int = 0  # the window the runner was loaded with (0: not a chat model)


class Scheduler:
    def __init__(
        self,
        store: Store,
        *,
        start_runner: StartRunner = RunnerProcess.start,
        max_loaded: int = 3,
        max_queue: int = 512,
        keep_alive: float = 300.0,
        load_timeout: float = 300.0,
        memory_limit: int = 1 << 62,
        context_limit: int = 32768,
    ) -> None:
        self.store = store
        self.start_runner = start_runner
        self.max_loaded = max_loaded
        self.max_queue = max_queue
        self.keep_alive = keep_alive
        self.load_timeout = load_timeout
        self.memory_limit = memory_limit
        self.context_limit = context_limit
        self.loaded: dict[str, Loaded] = {}
        self.loads = 0  # how many runners were started, for tests and logs
        self._pending = 0
        self.in_flight = 0  # leases waiting or held: 0 once every request has ended
        self._load_lock = asyncio.Lock()
        self._became_idle = asyncio.Event()
        self._stopping: set[asyncio.Task[None]] = set()
        self.held_by = ""  # what holds the whole budget (exclusive()), for messages

    # --- leasing ---

    @contextlib.asynccontextmanager
    async def lease(
        self,
        name: ModelName,
        keep_alive: float | None = None,
        work_bytes: int = 0,
        num_ctx: int = 0,
    ) -> AsyncIterator[Loaded]:
        """Hold a loaded model for one request; the caller has the runner to itself."""
        if self._pending >= self.max_queue:
            raise ServerBusy()
        self._pending += 1
        self.in_flight += 1
        model: Loaded | None = None
        try:
            model = await self._acquire(name, keep_alive, work_bytes, num_ctx)
            await model.slot.acquire()
        except BaseException:
            self.in_flight -= 1
            if model is not None:
                self._release(model)
            raise
        finally:
            self._pending -= 1
        try:
            yield model
        finally:
            self.in_flight -= 1
            model.slot.release()
            model.fresh = False
            self._release(model)

    @contextlib.asynccontextmanager
    async def exclusive(self, holder: str) -> AsyncIterator[None]:
        """The machine's whole memory budget for `holder`: every loaded model is unloaded
        first (waiting for its requests to end), and no model loads until this ends."""
        async with self._load_lock:
            if self.held_by:
                raise ServerBusy(f"the machine is busy with {self.held_by}; try again when it ends")
            for model in list(self.loaded.values()):
                await self._wait_idle(model)
                log.info("unloading %s for %s", model.name, holder)
                await self._unload(model)
            await self.settle()
            self.held_by = holder
        try:
            yield
        finally:
            self.held_by = ""

    def used_bytes(self) -> int:
        """Memory the loaded models hold, as their runners report it."""
        return sum(m.runner.memory or m.size for m in self.loaded.values())

    async def _acquire(
        self, name: ModelName, keep_alive: float | None, work_bytes: int, num_ctx: int
    ) -> Loaded:
        entry = self.store.entry(name)
        async with self._load_lock:
            model = self.loaded.get(entry.digest)
            if model is not None and not model.runner.alive:
                log.warning("runner for %s stopped; loading it again", model.name)
                await self._unload(model)
                model = None
            if model is not None and _fixed_window(model.config) and num_ctx > model.context_length:
                log.info("reloading %s for a window of %d tokens (loaded: %d)",
                         model.name, num_ctx, model.context_length)  # fmt: skip
                await self._wait_idle(model)
                await self._unload(model)
                model = None
            if model is None and self.held_by:
                raise ServerBusy(
                    f"{name.display()} cannot load while the machine is busy with "
                    f"{self.held_by}; try again when it ends"
                )
            if model is None:
                model = await self._load(entry, keep_alive, work_bytes, num_ctx)
            model.references += 1
            model.last_used = time.monotonic()
            model.expires_at = math.inf
            if model.timer is not None:
                model.timer.cancel()
                model.timer = None
            if keep_alive is not None:
                model.keep_alive = keep_alive  # the last request's keep_alive wins
            return model

    async def _load(
        self, entry: Entry, keep_alive: float | None, work_bytes: int, num_ctx: int
    ) -> Loaded:
        name, digest, manifest = entry.name, entry.digest, entry.manifest
        config = described(self.store, manifest)
        params = self.store.json_layer(manifest, PARAMS) or {}
        window = self.window(config, num_ctx or int(params.get("num_ctx", 0)))
        weights, context = manifest.size(), context_bytes(config, window)
        need = weights + context + work_bytes
        if need > self.memory_limit:
            raise InsufficientMemory(
                f"{name.display()} needs {_gib(need)} ({_gib(weights)} of weights"
                + (f", {_gib(context)} for a {window}-token context" if context else "")
                + (f", {_gib(work_bytes)} to work" if work_bytes else "")
                + f") but the memory limit is {_gib(self.memory_limit)}; "
                + ("lower num_ctx or " if context else "")
                + "raise LIMNER_MEMORY_LIMIT"
            )
        while self.loaded and (
            len(self.loaded) >= self.max_loaded or self.used_bytes() + need > self.memory_limit
        ):
            await self._evict_one()
        files = self.store.files(manifest)
        template = manifest.layer(TEMPLATE)
        if template is not None:  # a template layer replaces the model's own chat template
            files["chat_template.jinja"] = self.store.blobs.open_path(template.digest)
        if window:
            params = {**params, "num_ctx": window}
        log.info("loading %s (~%d MiB%s)", name, need >> 20,
                 f", {window}-token window" if window else "")  # fmt: skip
        placement = Placement(name.display(), need)
        runner = await self.start_runner(
            config["model_format"], files, params, self.load_timeout, placement
        )
        self.loads += 1
        # A runner takes one request at a time; a cluster's model takes one per replica.
        slot = asyncio.Semaphore(getattr(runner, "concurrency", 1))
        model = Loaded(
            key=digest, name=name, digest=digest, runner=runner,
            keep_alive=self.keep_alive if keep_alive is None else keep_alive,
            config=config, size=weights + context, context_length=window, slot=slot,
        )  # fmt: skip
        self.loaded[digest] = model
        return model

    def window(self, config: dict[str, Any], asked: int) -> int:
        """The context window a chat model loads with; 0 for models that do not chat."""
        trained = int(config.get("context_length", 0))
        if "completion" not in config.get("capabilities", ["completion"]) or not trained:
            return 0
        window = min(asked, trained) if asked else min(trained, self.context_limit)
        # llama.cpp allocates whole blocks of 256 tokens.
        return -(-window // 256) * 256 if _fixed_window(config) else window

    async def _wait_idle(self, model: Loaded) -> None:
        while model.references > 0:
            self._became_idle.clear()
            await self._became_idle.wait()

    async def _evict_one(self) -> None:
        """Unload the least recently used idle model, waiting for one to become idle."""
        while not any(m.references == 0 for m in self.loaded.values()):
            self._became_idle.clear()
            await self._became_idle.wait()
        idle = [m for m in self.loaded.values() if m.references == 0]
        victim = min(idle, key=lambda m: m.last_used)
        log.info("unloading %s to make room", victim.name)
        await self._unload(victim)

    def _release(self, model: Loaded) -> None:
        # Synchronous on purpose: it runs in `finally` blocks of cancelled requests,
        # where a cancelled task must not await anything.
        model.references -= 1
        model.last_used = time.monotonic()
        if model.references > 0 or self.loaded.get(model.key) is not model:
            return
        if not model.runner.alive or model.keep_alive <= 0:
            self._unload_soon(model)
        else:
            self._start_timer(model)
        self._became_idle.set()

    def _start_timer(self, model: Loaded) -> None:
        if model.keep_alive == math.inf:
            model.expires_at = math.inf
            return
        model.expires_at = time.time() + model.keep_alive
        loop = asyncio.get_running_loop()
        model.timer = loop.call_later(model.keep_alive, self._expire, model)

    def _expire(self, model: Loaded) -> None:
        if model.references == 0 and self.loaded.get(model.key) is model:
            log.info("keep_alive expired for %s", model.name)
            self._unload_soon(model)

    def _unload_soon(self, model: Loaded) -> None:
        """Forget the model now and stop its runner in the background."""
        if self.loaded.get(model.key) is model:
            del self.loaded[model.key]
        task = asyncio.get_running_loop().create_task(self._unload(model))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _unload(self, model: Loaded) -> None:
        if model.timer is not None:
            model.timer.cancel()
        if self.loaded.get(model.key) is model:
            del self.loaded[model.key]
        await model.runner.stop()

    # --- explicit load / unload (empty prompts) ---

    async def unload(self, name: ModelName) -> None:
        """keep_alive 0 with an empty prompt: unload now, or when the last request ends."""
        entry = self.store.entry(name)
        model = self.loaded.get(entry.digest)
        if model is None:
            return
        model.keep_alive = 0
        if model.references == 0:
            await self._unload(model)

    async def settle(self) -> None:
        """Wait until runners being stopped in the background have stopped."""
        while self._stopping:
            await asyncio.gather(*list(self._stopping), return_exceptions=True)

    def running(self) -> list[Loaded]:
        return sorted(self.loaded.values(), key=lambda m: m.expires_at, reverse=True)

    async def close(self) -> None:
        """Stop every runner (server shutdown)."""
        await asyncio.gather(*(self._unload(m) for m in list(self.loaded.values())))
        await self.settle()

    def kill_all(self) -> None:
        for model in self.loaded.values():
            model.runner.kill_now()


def context_bytes(config: dict[str, Any], window: int) -> int:
    """Keys and values for `window` tokens: layers x kv heads x head width x 2, in f16 for
    llama.cpp and f32 for the transformers engine (which runs in f32 on a CPU)."""
    info = config.get("model_info", {})
    arch = info.get("general.architecture", "")

    def key(name: str, default: int = 0) -> int:
        return int(info.get(f"{arch}.{name}") or default)

    layers, width = key("block_count"), key("embedding_length")
    heads = key("attention.head_count", 1)
    head_dim = key("attention.key_length", width // heads)
    element = 2 if config.get("model_format") == "gguf" else 4
    return layers * key("attention.head_count_kv", heads) * head_dim * 2 * element * window


def _fixed_window(config: dict[str, Any]) -> bool:
    return config.get("model_format") == "gguf"


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB" if size >= 1 << 30 else f"{size / (1 << 20):.1f} MiB"
