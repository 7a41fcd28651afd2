"""The scheduler owns every loaded model: load, share, queue, expire, evict, unload.

`lease(name)` is the only way to a model; `work_bytes` is what the request itself will
need beyond the weights (a diffusion model's activations at the requested size), and
`num_ctx` the context window it asks for. A lease counts as a reference; a model whose
references drop to zero starts its keep_alive timer (0: unload now; inf: never). Each
runner serves one request at a time; requests wait in a queue bounded by LIMNER_MAX_QUEUE
and beyond it get ServerBusy (503).

Loads never stall other models (as Ollama's sched.go: the lock-free bookkeeping here,
the slow runner start outside it). A model being loaded is a `Loading` entry holding a
future: requests for it wait on that future and share the one load; requests for loaded
models never wait on it. A load that fails wakes its waiters with the error.

Memory: before a load the model's need is estimated -- weights, plus keys and values for
its whole window (chat models), plus the request's work (drawing). Loads are admitted one
at a time, in the order they were asked for; an admitted load counts against the budget
until its runner is up (then the runner's own report counts). When LIMNER_MAX_LOADED_MODELS
runners exist, or they plus the need would pass LIMNER_MEMORY_LIMIT, the least recently used
idle model is unloaded first; if none is idle, the load waits for one (its requests wait
with it, no one else does). A model that cannot fit even alone is refused with both numbers
(InsufficientMemory, 507). An unloaded runner's memory counts until its process has ended.

Work that is no loaded model (LoRA training) takes the whole budget with `exclusive()`: every
model is unloaded once its requests end, and until the work ends a load is refused with
ServerBusy (503) saying why.

Windows: a model loads with the request's `num_ctx`, else its parameters' `num_ctx`, else
its trained length capped by LIMNER_CONTEXT_LENGTH. A later request asking for a smaller
window uses the loaded runner as is (Ollama reloads: #6148, #8903); only a larger one reloads
a model whose window is fixed at load (GGUF): the old runner finishes its requests while the
new one loads. The runner factory (`start_runner`) is injected so tests can fake and hold
loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from limner.config import format_bytes
from limner.engines import (
    ChatStep,
    EmbedStep,
    ImageRequest,
    ImageStep,
    LoadOptions,
    Message,
    Options,
)
from limner.engines.training import TrainStep
from limner.errors import InsufficientMemory, RunnerFailed, ServerBusy
from limner.names import ModelName
from limner.protocol import Embed, Train
from limner.runner import Placement, RunnerProcess
from limner.store.described import GGUF, Capability, Described, describe
from limner.store.manifests import TEMPLATE
from limner.store.store import Store

log = logging.getLogger("limner.scheduler")


class Runner(Protocol):
    """A loaded model the scheduler hands out: a runner process (runner.RunnerProcess) or a
    cluster's replicas (cluster.RayRunner). Both yield the engine's typed steps."""

    memory: int
    vram: int
    load_duration: int
    concurrency: int

    @property
    def alive(self) -> bool: ...

    def chat(self, messages: list[Message], options: Options) -> AsyncIterator[ChatStep]: ...

    def generate_image(
        self, request: ImageRequest, finish: asyncio.Event | None = None
    ) -> AsyncIterator[ImageStep]: ...

    def train(self, job: Train) -> AsyncIterator[TrainStep]: ...

    def embed(self, request: Embed) -> AsyncIterator[EmbedStep]: ...

    async def stop(self, grace: float = 5.0) -> None: ...

    def kill_now(self) -> None: ...


StartRunner = Callable[[str, dict[str, Path], LoadOptions, float, Placement], Awaitable[Runner]]


@dataclass(eq=False)  # one object per model: equal only to itself, so it can be in a set
class Held:
    """A model the scheduler holds, keyed by its manifest's digest."""

    described: Described

    @property
    def key(self) -> str:
        return self.described.digest

    @property
    def name(self) -> ModelName:
        return self.described.name


@dataclass(eq=False)
class Loaded(Held):
    """A model in memory, as /api/ps shows it."""

    runner: Runner
    keep_alive: float
    size: int
    references: int = 0
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float = math.inf  # wall-clock seconds; inf while in use or forever
    slot: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))
    timer: asyncio.TimerHandle | None = None
    fresh: bool = True  # the first lease after a load reports load_duration
    context_length: int = 0  # the window the runner was loaded with (0: not a chat model)
    stopping: asyncio.Task[None] | None = None  # set once its runner is being stopped

    @property
    def digest(self) -> str:
        return self.described.digest


@dataclass(eq=False)
class Plan:
    """What a load needs, worked out before anything is reserved."""

    params: dict[str, Any]
    files: dict[str, Path]
    window: int
    size: int  # weights and the window's keys and values
    need: int  # size plus the first request's work


@dataclass(eq=False)
class Loading(Held):
    """A model whose runner is starting. Requests for it wait on `ready`; the load counts
    against the memory budget from the moment it is admitted until its runner is up."""

    plan: Plan
    ready: asyncio.Future[Loaded]
    waiters: int = 0  # requests waiting on `ready`; each gets a reference when it resolves
    admitted: bool = False
    task: asyncio.Task[None] | None = None


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
        self.loaded: dict[str, Loaded] = {}  # by digest: the runners new requests lease
        self.loading: dict[str, Loading] = {}  # by digest: runners starting
        self.leaving: set[Loaded] = set()  # forgotten runners that still hold memory
        self.loads = 0  # how many runners were started, for tests and logs
        self.waiting = 0  # leases waiting for a model or for its runner
        self.in_flight = 0  # leases waiting or held: 0 once every request has ended
        self.held_by = ""  # what holds the whole budget (exclusive()), for messages
        self._admission: list[Loading] = []  # loads waiting for room, first come first served
        self._changed = asyncio.Event()  # replaced each time memory or references change
        self._tasks: set[asyncio.Task[None]] = set()  # loads and stops in the background

    # --- leasing ---

    @contextlib.asynccontextmanager
    async def lease(
        self,
        model: Described | ModelName,
        keep_alive: float | None = None,
        work_bytes: int = 0,
        num_ctx: int = 0,
    ) -> AsyncIterator[Loaded]:
        """Hold a loaded model for one request; the caller has the runner to itself.
        Handlers pass the model they described; a name is described here."""
        if self.waiting >= self.max_queue:
            raise ServerBusy()
        self.waiting += 1
        self.in_flight += 1
        loaded: Loaded | None = None
        try:
            if isinstance(model, ModelName):
                model = describe(self.store, model)
            loaded = await self._acquire(model, keep_alive, work_bytes, num_ctx)
            await loaded.slot.acquire()
        except BaseException:
            self.in_flight -= 1
            if loaded is not None:
                self._release(loaded)
            raise
        finally:
            self.waiting -= 1
        try:
            yield loaded
        finally:
            self.in_flight -= 1
            loaded.slot.release()
            loaded.fresh = False
            self._release(loaded)

    @contextlib.asynccontextmanager
    async def exclusive(self, holder: str) -> AsyncIterator[None]:
        """The machine's whole memory budget for `holder`: every loaded model is unloaded
        once its requests end, and no model loads until this ends."""
        if self.held_by:
            raise ServerBusy(f"the machine is busy with {self.held_by}; try again when it ends")
        self.held_by = holder
        try:
            while self.loaded or self.loading or self.leaving:
                for model in list(self.loaded.values()):
                    log.info("unloading %s for %s", model.name, holder)
                    self._retire(model)
                if self.loading or self.leaving:
                    await self._change()
            yield
        finally:
            self.held_by = ""

    def used_bytes(self) -> int:
        """Memory held by runners (as they report it) and reserved by admitted loads."""
        return self._use()[1]

    def _use(self, once_stopped: bool = False) -> tuple[int, int]:
        """How many runners there are and the bytes they hold or have reserved; with
        `once_stopped`, as it will be once the runners already stopping have ended."""
        leaving = [m for m in self.leaving if not (once_stopped and m.stopping is not None)]
        admitted = [load for load in self.loading.values() if load.admitted]
        held = sum(m.runner.memory or m.size for m in (*self.loaded.values(), *leaving))
        runners = len(self.loaded) + len(leaving) + len(admitted)
        return runners, held + sum(load.plan.need for load in admitted)

    async def _acquire(
        self, described: Described, keep_alive: float | None, work_bytes: int, num_ctx: int
    ) -> Loaded:
        """A reference to the model's runner; only this model's own load is ever awaited."""
        while True:
            model = self._current(described.digest, num_ctx)
            if model is None:
                loading = self.loading.get(described.digest)
                if loading is None:
                    loading = self._start_load(described, keep_alive, work_bytes, num_ctx)
                model = await self._wait_for(loading)
                if self.loaded.get(model.key) is not model or not self._serves(model, num_ctx):
                    self._release(model)  # it was replaced meanwhile, or its window is small
                    continue
            else:
                model.references += 1
            model.last_used = time.monotonic()
            model.expires_at = math.inf
            if model.timer is not None:
                model.timer.cancel()
                model.timer = None
            if keep_alive is not None:
                model.keep_alive = keep_alive  # the last request's keep_alive wins
            return model

    def _current(self, key: str, num_ctx: int) -> Loaded | None:
        """The loaded runner that can serve this request, retiring one that cannot."""
        model = self.loaded.get(key)
        if model is None:
            return None
        if not model.runner.alive:
            log.warning("runner for %s stopped; loading it again", model.name)
            self._retire(model)
            return None
        if not self._serves(model, num_ctx):
            log.info("reloading %s for a window of %d tokens (loaded: %d)",
                     model.name, num_ctx, model.context_length)  # fmt: skip
            self._retire(model)  # it stops once its requests end
            return None
        return model

    def _serves(self, model: Loaded, num_ctx: int) -> bool:
        return not (model.described.fixed_window and num_ctx > model.context_length)

    def _start_load(
        self, described: Described, keep_alive: float | None, work_bytes: int, num_ctx: int
    ) -> Loading:
        """Check that the model can load at all, then start loading it in the background."""
        if self.held_by:
            raise ServerBusy(
                f"{described.name.display()} cannot load while the machine is busy with "
                f"{self.held_by}; try again when it ends"
            )
        plan = self._plan(described, work_bytes, num_ctx)
        ready: asyncio.Future[Loaded] = asyncio.get_running_loop().create_future()
        loading = Loading(described=described, plan=plan, ready=ready)
        self.loading[described.digest] = loading
        loading.task = self._spawn(self._load(loading, keep_alive))
        return loading

    def _plan(self, described: Described, work_bytes: int, num_ctx: int) -> Plan:
        name, manifest, params = described.name, described.manifest, described.parameters
        window = self.window(described, num_ctx or int(params.get("num_ctx", 0)))
        weights, context = manifest.size(), context_bytes(described.config, window)
        need = weights + context + work_bytes
        if need > self.memory_limit:
            raise InsufficientMemory(
                f"{name.display()} needs {format_bytes(need)} "
                f"({format_bytes(weights)} of weights"
                + (f", {format_bytes(context)} for a {window}-token context" if context else "")
                + (f", {format_bytes(work_bytes)} to work" if work_bytes else "")
                + f") but the memory limit is {format_bytes(self.memory_limit)}; "
                + ("lower num_ctx or " if context else "")
                + "raise LIMNER_MEMORY_LIMIT"
            )
        files = self.store.files(manifest)
        template = manifest.layer(TEMPLATE)
        if template is not None:  # a template layer replaces the model's own chat template
            files["chat_template.jinja"] = self.store.blobs.open_path(template.digest)
        if window:
            params = {**params, "num_ctx": window}
        return Plan(params, files, window, weights + context, need)

    async def _wait_for(self, loading: Loading) -> Loaded:
        """Wait for a load this request shares; the reference it holds once the load is done
        is given back if the request is cancelled before it resumes."""
        loading.waiters += 1
        try:
            return await asyncio.shield(loading.ready)
        except asyncio.CancelledError:
            ready = loading.ready
            if not ready.done():
                loading.waiters -= 1
            elif not ready.cancelled() and ready.exception() is None:
                self._release(ready.result())
            raise

    async def _load(self, loading: Loading, keep_alive: float | None) -> None:
        """Make room, start the runner, and hand it to every request waiting for it."""
        plan = loading.plan
        try:
            await self._admit(loading)
            log.info("loading %s (~%d MiB%s)", loading.name, plan.need >> 20,
                     f", {plan.window}-token window" if plan.window else "")  # fmt: skip
            placement = Placement(loading.name.display(), plan.need)
            options = LoadOptions.from_dict(plan.params)
            options.cache = str(self.store.derived(loading.described.digest))
            runner = await self.start_runner(
                loading.described.engine,
                plan.files,
                options,
                self.load_timeout,
                placement,
            )
        except BaseException as exc:
            del self.loading[loading.key]
            self._notify()
            failure = exc if isinstance(exc, Exception) else RunnerFailed("the load was stopped")
            loading.ready.set_exception(failure)
            loading.ready.exception()  # retrieved: a load nobody waits for any more is no error
            if not isinstance(exc, Exception):
                raise
            return
        self.loads += 1
        # A runner takes one request at a time; a cluster's model takes one per replica.
        slot = asyncio.Semaphore(runner.concurrency)
        model = Loaded(
            runner=runner,
            keep_alive=self.keep_alive if keep_alive is None else keep_alive,
            described=loading.described, size=plan.size, context_length=plan.window, slot=slot,
            references=loading.waiters,
        )  # fmt: skip
        del self.loading[loading.key]
        self.loaded[loading.key] = model
        loading.ready.set_result(model)
        if model.references == 0:  # every request that wanted it has gone
            self._idle(model)
        self._notify()

    async def _admit(self, loading: Loading) -> None:
        """Wait until this load is first in line and fits, unloading the least recently used
        idle models to make room; requests to loaded models go on meanwhile."""
        self._admission.append(loading)
        try:
            while True:
                if self._admission[0] is loading:
                    need = loading.plan.need
                    if self._fits(need):
                        loading.admitted = True
                        return
                    victim = self._victim()
                    if victim is not None and not self._fits(need, once_stopped=True):
                        log.info("unloading %s to make room", victim.name)
                        self._retire(victim)
                        continue
                await self._change()
        finally:
            self._admission.remove(loading)
            self._notify()

    def _fits(self, need: int, once_stopped: bool = False) -> bool:
        """Whether a load of `need` bytes fits now, or once the runners already stopping
        have ended (then the load waits for them instead of unloading more)."""
        runners, used = self._use(once_stopped)
        if runners == 0:
            return True  # alone it fits: _plan refused what never could
        return runners < self.max_loaded and used + need <= self.memory_limit

    def _victim(self) -> Loaded | None:
        idle = [m for m in self.loaded.values() if m.references == 0]
        return min(idle, key=lambda m: m.last_used) if idle else None

    def window(self, described: Described, asked: int) -> int:
        """The context window a chat model loads with; 0 for models that do not chat."""
        trained = described.context_length
        if not described.can(Capability.COMPLETION) or not trained:
            return 0
        window = min(asked, trained) if asked else min(trained, self.context_limit)
        # llama.cpp allocates whole blocks of 256 tokens.
        return -(-window // 256) * 256 if described.fixed_window else window

    def _release(self, model: Loaded) -> None:
        # Synchronous on purpose: it runs in `finally` blocks of cancelled requests,
        # where a cancelled task must not await anything.
        model.references -= 1
        model.last_used = time.monotonic()
        if model.references == 0:
            self._idle(model)
            self._notify()

    def _idle(self, model: Loaded) -> None:
        """A model nobody uses: stop it if it is forgotten, dead or asked to go; else let
        its keep_alive run."""
        if self.loaded.get(model.key) is not model:
            if model in self.leaving:
                self._stop_soon(model)
        elif not model.runner.alive or model.keep_alive <= 0:
            self._retire(model)
        else:
            self._start_timer(model)

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
            self._retire(model)

    def _retire(self, model: Loaded) -> asyncio.Task[None] | None:
        """Forget the model, so new requests load it afresh; its runner stops (in the
        background) once its requests end, and its memory counts until then."""
        if model.timer is not None:
            model.timer.cancel()
            model.timer = None
        if self.loaded.get(model.key) is model:
            del self.loaded[model.key]
        self.leaving.add(model)
        return self._stop_soon(model) if model.references == 0 else None

    def _stop_soon(self, model: Loaded) -> asyncio.Task[None]:
        if model.stopping is None:
            model.stopping = self._spawn(self._stop(model))
        return model.stopping

    async def _stop(self, model: Loaded) -> None:
        try:
            await model.runner.stop()
        finally:
            self.leaving.discard(model)
            self._notify()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _notify(self) -> None:
        """Wake everything waiting in `_change`: memory or references changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _change(self) -> None:
        await self._changed.wait()

    # --- explicit load / unload (empty prompts) ---

    async def unload(self, name: ModelName) -> None:
        """keep_alive 0 with an empty prompt: unload now, or when the last request ends."""
        entry = self.store.entry(name)
        model = self.loaded.get(entry.digest)
        if model is None:
            return
        model.keep_alive = 0
        if model.references == 0:
            stopping = self._retire(model)
            if stopping is not None:
                await asyncio.shield(stopping)

    async def settle(self) -> None:
        """Wait until loads and stops in the background have ended."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def running(self) -> list[Loaded]:
        return sorted(self.loaded.values(), key=lambda m: m.expires_at, reverse=True)

    async def close(self) -> None:
        """Stop every runner (server shutdown), runners still loading included."""
        for loading in list(self.loading.values()):
            if loading.task is not None:
                loading.task.cancel()
        for model in list(self.loaded.values()):
            self._retire(model)
        for model in list(self.leaving):
            self._stop_soon(model)
        await self.settle()

    def kill_all(self) -> None:
        for model in (*self.loaded.values(), *self.leaving):
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
    element = 2 if config.get("model_format") == GGUF else 4
    return layers * key("attention.head_count_kv", heads) * head_dim * 2 * element * window
