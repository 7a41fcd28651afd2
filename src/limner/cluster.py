"""limner on a Ray cluster: each loaded model is a Ray Serve application of replicas.

`limner serve --cluster ADDRESS` runs the same HTTP API and scheduler as the single-machine
server; only the runner factory differs. Where a plain server starts a runner process for a
model, this starts a Serve deployment of `ModelReplica`s (`num_replicas`, or autoscaling
between bounds), each loading the engine once and streaming the same typed replies a runner
process writes (`runner.replies`), as Python objects rather than lines. Requests are routed to a free replica (each takes one at
a time, as a runner does); closing a stream cancels the replica's work; a replica that dies
is replaced by Serve while its clients get a clean error.

Models reach the nodes through a shared store: every node must see the files at the path
the API server sees them (an NFS or similar mount of LIMNER_MODELS). This keeps the store's
guarantees (digests checked once, nothing half-written) in one place; pulling on each node
would copy the registry client and its checks to every replica.

Ray is imported here only; the single-machine server never imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray import serve

from limner import config
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
from limner.errors import InvalidRequest, LimnerError, ProtocolError, RunnerFailed
from limner.protocol import (
    CHAT_STEPS,
    EMBED_STEPS,
    IMAGE_STEPS,
    LAST,
    Chat,
    Draw,
    Embed,
    Error,
    Ready,
    Reply,
    Request,
    Train,
)
from limner.runner import Placement, coalesced, link_files, ready, replies

S = TypeVar("S")  # the steps one request yields


@dataclass(frozen=True)
class ClusterSettings:
    """Where the cluster is and how each model is placed on it."""

    address: str  # "local" (start one here), "auto" (this node's), or "ray://head:10001"
    replicas: int = 1  # of every model not named in `models`
    models: dict[str, int] = field(default_factory=dict)  # replicas by model name
    autoscale: tuple[int, int] | None = None  # (min, max) replicas; None: fixed counts
    cpus: float = 1.0  # per replica
    gpus: float | None = None  # per replica; None: 1 where the cluster has GPUs, else 0

    @classmethod
    def parse(
        cls, address: str, replicas: str, autoscale: str, cpus: str, gpus: str
    ) -> ClusterSettings:
        """From LIMNER_CLUSTER* values: replicas as "2" or "2,llava=4,sd15=1"."""
        try:
            default, models = 1, {}
            for part in filter(None, (p.strip() for p in replicas.split(","))):
                name, _, count = part.rpartition("=")
                if name:
                    models[name.strip()] = int(count)
                else:
                    default = int(count)
            bounds = tuple(int(n) for n in autoscale.split("-")) if autoscale else None
            settings = cls(address.strip(), default, models, None, float(cpus),
                           float(gpus) if gpus else None)  # fmt: skip
        except ValueError as exc:
            raise InvalidRequest(f"bad cluster setting: {exc}") from None
        if min([settings.replicas, *models.values()]) < 1:
            raise InvalidRequest("LIMNER_CLUSTER_REPLICAS: every model needs at least 1 replica")
        if bounds is not None:
            if len(bounds) != 2 or not 0 <= bounds[0] <= bounds[1] or bounds[1] < 1:
                raise InvalidRequest(f"LIMNER_CLUSTER_AUTOSCALE must be MIN-MAX, got {autoscale!r}")
            settings = replace(settings, autoscale=(bounds[0], bounds[1]))
        return settings

    def replicas_of(self, model: str) -> int:
        short = model.removesuffix(":latest")
        return self.models.get(model, self.models.get(short, self.replicas))


def connect(settings: ClusterSettings) -> None:
    """Join (or, for "local", start) the Ray cluster and its Serve controller, without
    Serve's own HTTP proxy: limner's API is the only way in."""
    address = None if settings.address == "local" else settings.address
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # fmt: skip
    serve.start(proxy_location="Disabled")


def disconnect() -> None:
    """Leave the cluster; a local one is stopped with its Serve controller."""
    if ray.is_initialized():
        with contextlib.suppress(Exception):
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


class ModelReplica:
    """One replica of one model: the engine loaded once, one request at a time."""

    def __init__(self, model_format: str, files: dict[str, str], options: LoadOptions) -> None:
        from limner.engines import engine_for

        self.folder = link_files({name: Path(path) for name, path in files.items()},
                                 Path(tempfile.mkdtemp(prefix="limner-replica-")))  # fmt: skip
        started = time.perf_counter_ns()
        self.engine = engine_for(model_format)(self.folder, options)
        self.load_duration = time.perf_counter_ns() - started
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.busy = threading.Lock()  # a cancelled request's engine work ends before the next
        self.stream_interval = config.stream_interval()

    def info(self) -> Ready:
        return ready(self.engine, self.load_duration)

    async def run(self, request: Request) -> AsyncIterator[tuple[str, Reply]]:
        """The runner protocol's replies to one request, each with the replica that sent it."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Reply] = asyncio.Queue()
        cancelled = threading.Event()

        def work() -> None:
            # An engine that batches (vLLM) takes requests side by side; others one at a time.
            concurrent = getattr(self.engine, "concurrent", False)
            with contextlib.nullcontext() if concurrent else self.busy:
                steps = replies(self.engine, request, cancelled.is_set)
                for reply in coalesced(steps, self.stream_interval):
                    loop.call_soon_threadsafe(inbox.put_nowait, reply)

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while True:
                reply = await inbox.get()
                yield self.replica, reply
                if isinstance(reply, LAST):
                    return
        finally:
            cancelled.set()  # the client left: the engine stops at its next step


class RayRunner:
    """The scheduler's handle on one model's Serve application (the Runner protocol)."""

    def __init__(self, app: str, handle: Any, info: Ready, concurrency: int) -> None:
        self.app = app
        self.handle = handle
        self.memory = info.memory
        self.vram = info.vram
        self.load_duration = info.load_duration
        self.concurrency = concurrency  # requests the scheduler may hand over at once
        self.served: Counter[str] = Counter()  # requests finished, by replica
        self.stopped = False

    @classmethod
    async def start(
        cls,
        model_format: str,
        files: dict[str, Path],
        options: LoadOptions,
        timeout: float,
        placement: Placement,
        settings: ClusterSettings,
    ) -> RayRunner:
        app = f"limner-{_slug(placement.model)}-{secrets.token_hex(3)}"
        deployment = serve.deployment(ModelReplica).options(  # type: ignore[attr-defined]
            name="model", max_ongoing_requests=1, **_scale(settings, placement)
        )
        arguments = (model_format, {k: str(v) for k, v in files.items()}, options)
        bound = deployment.bind(*arguments)
        try:
            handle = await asyncio.wait_for(
                asyncio.to_thread(serve.run, bound, name=app, route_prefix=None), timeout
            )
            info = await handle.info.remote()
            if not isinstance(info, Ready):
                raise ProtocolError(f"a replica answered its load with {type(info).__name__}")
        except TimeoutError:
            await asyncio.to_thread(_delete, app)
            raise RunnerFailed(
                f"the model's replicas did not start within {timeout:g} s; "
                "raise LIMNER_LOAD_TIMEOUT, or check the cluster's free CPUs and GPUs"
            ) from None
        except Exception as exc:
            await asyncio.to_thread(_delete, app)
            raise RunnerFailed(f"the model's replicas failed to start: {_reason(exc)}") from None
        each = info.concurrency
        if each > 1:  # the engine batches: Serve may send each replica that many at once
            wider = deployment.options(max_ongoing_requests=each)
            await asyncio.to_thread(serve.run, wider.bind(*arguments), name=app, route_prefix=None)
        most = (
            settings.autoscale[1] if settings.autoscale else settings.replicas_of(placement.model)
        )
        return cls(app, handle, info, most * each)

    @property
    def alive(self) -> bool:
        return not self.stopped  # Serve replaces replicas that die

    def chat(self, messages: list[Message], options: Options) -> AsyncIterator[ChatStep]:
        return self._request(Chat(messages, options), CHAT_STEPS)

    def generate_image(
        self, request: ImageRequest, finish: asyncio.Event | None = None
    ) -> AsyncIterator[ImageStep]:
        # A replica cannot be told to finish early (requests go to whichever replica is
        # free), so Automatic1111's interrupt ends a drawing on a cluster without a picture.
        return self._request(Draw(request), IMAGE_STEPS)

    def embed(self, request: Embed) -> AsyncIterator[EmbedStep]:
        return self._request(request, EMBED_STEPS)

    def train(self, job: Train) -> AsyncIterator[TrainStep]:
        raise InvalidRequest("training runs on the API server's machine, not on the cluster")

    async def _request(self, message: Request, steps: tuple[type[S], ...]) -> AsyncIterator[S]:
        stream = self.handle.options(stream=True, method_name="run").remote(message)
        finished = False
        try:
            async for replica, reply in stream:
                finished = isinstance(reply, LAST)
                if isinstance(reply, Error):
                    raise reply.exception()
                if not isinstance(reply, steps):
                    raise ProtocolError(f"a {type(reply).__name__} does not answer this request")
                if finished:
                    self.served[replica] += 1
                yield reply
                if finished:
                    return
        except LimnerError:
            raise
        except Exception as exc:  # a replica that died, or a cluster that is gone
            finished = True
            raise RunnerFailed(
                f"a replica of this model stopped ({_reason(exc)}); try again"
            ) from None
        finally:
            if not finished:
                stream.cancel()  # the client left: the replica stops the engine

    async def stop(self, grace: float = 5.0) -> None:
        self.stopped = True
        await asyncio.to_thread(_delete, self.app)

    def kill_now(self) -> None:
        self.stopped = True
        _delete(self.app)


def _scale(settings: ClusterSettings, placement: Placement) -> dict[str, Any]:
    """Replicas and what each needs: CPUs, GPUs, and the model's memory estimate."""
    gpus = settings.gpus
    if gpus is None:
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        gpus = 1.0 if resources.get("GPU", 0) > 0 else 0.0
    actor = {"num_cpus": settings.cpus, "num_gpus": gpus}
    if placement.need and not gpus:
        actor["memory"] = placement.need  # on a GPU the weights live in its memory instead
    if settings.autoscale:
        low, high = settings.autoscale
        return {"ray_actor_options": actor, "autoscaling_config": {
            "min_replicas": low, "max_replicas": high, "target_ongoing_requests": 1}}  # fmt: skip
    return {"ray_actor_options": actor, "num_replicas": settings.replicas_of(placement.model)}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:40] or "model"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _delete(app: str) -> None:
    with contextlib.suppress(Exception):
        serve.delete(app)
