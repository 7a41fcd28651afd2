"""One loaded model in its own worker process, and the server's handle on it.

Child side (`python -m limner.runner`): reads JSON lines on stdin, hosts one engine, and
writes JSON lines on stdout. The first line loads the model; then `chat` requests are
served one at a time while `cancel` lines are read concurrently, so a request can be
stopped between two tokens. When stdin closes (the server exited or was killed) the
runner exits at once, so no runner outlives its server.

Parent side (`RunnerProcess`): spawns the child with asyncio, waits for it to be ready,
and turns each request into an async iterator of step messages. If the child dies, every
request it held ends with RunnerFailed.

Messages (one JSON object per line):
    server -> runner   {"op": "load", "format", "folder", "options"}
                       {"op": "chat", "id", "messages": [{role, content, images: [b64]}], "options"}
                       {"op": "image", "id", "request": {ImageRequest fields, pictures as b64}}
                       {"op": "train", "id", "files": {name: path}, "captions", "request", "output"}
                       {"op": "cancel", "id"}
    runner -> server   {"type": "ready", "memory", "vram", "load_duration"} | {"type": "load_error", ...}
                       {"type": "piece", "id", "text"} | {"type": "done", "id", ...Done fields}
                       {"type": "progress", "id", "completed", "total"} | {"type": "image", "id", "image", "parameters"}
                       {"type": "train_progress", "id", "step", "total", "loss", "learning_rate", "eta_seconds"}
                       {"type": "checkpoint", "id", "step", "path"} | {"type": "validation", "id", "step", "image"}
                       {"type": "trained", "id", "steps", "final_loss", "path", "parameters"}
                       {"type": "error", "id", "status", "message"}
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from limner.engines import (
    Done,
    ImageRequest,
    ImageResult,
    LoadOptions,
    Message,
    Options,
    Piece,
    Progress,
    engine_for,
)
from limner.engines.training import (
    TrainCheckpoint,
    TrainDone,
    TrainProgress,
    TrainRequest,
    TrainValidation,
    examples,
    read_uploaded,
)
from limner.errors import InvalidRequest, LimnerError, RunnerFailed, without_paths

STREAM_LIMIT = 64 * 1024 * 1024  # one line may carry several base64 pictures


def chat_message(messages: list[dict[str, Any]], options: dict[str, Any]) -> dict[str, Any]:
    """The protocol's chat request (every kind of runner sends these)."""
    return {"op": "chat", "messages": messages, "options": options}


def image_message(request: dict[str, Any]) -> dict[str, Any]:
    """The protocol's drawing request (pictures in `request` as base64)."""
    return {"op": "image", "request": request}


@dataclass(frozen=True)
class Placement:
    """What the scheduler knows of a load beyond its files: the model's name and the
    memory it is estimated to need (a cluster places replicas by it)."""

    model: str = ""
    need: int = 0


LAST_REPLIES = ("done", "image", "trained")


# --- parent side ----------------------------------------------------------------------


class RunnerProcess:
    """The server's handle on one runner process."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        folder: Path,
        memory: int,
        load_duration: int,
        vram: int = 0,
    ) -> None:
        self.process = process
        self.folder = folder
        self.memory = memory
        self.vram = vram  # the part of `memory` on a GPU
        self.load_duration = load_duration
        self.concurrency = 1  # requests it takes at once (an engine that batches: more)
        self._ids = itertools.count(1)
        self._queues: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls,
        model_format: str,
        files: dict[str, Path],
        options: dict[str, Any],
        timeout: float,
        placement: Placement | None = None,
    ) -> RunnerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "limner.runner",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=STREAM_LIMIT,
        )  # fmt: skip
        # The parent owns the folder of links, so it is removed however the runner ends.
        folder = _link_files(files, Path(tempfile.mkdtemp(prefix="limner-model-")))
        load = {"op": "load", "format": model_format, "options": options, "folder": str(folder)}
        try:
            await _send(process, load)
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), timeout)
        except TimeoutError:
            await _kill(process, folder)
            raise RunnerFailed(
                f"the model did not load within {timeout:g} s; raise LIMNER_LOAD_TIMEOUT if it is large"
            ) from None
        except BaseException:
            await _kill(process, folder)
            raise
        exited = {"type": "load_error", "message": "runner exited while loading", "status": 500}
        reply: dict[str, Any] = json.loads(line) if line else exited
        if reply["type"] != "ready":
            await _kill(process, folder)
            raise _error(reply)
        runner = cls(
            process, folder, int(reply["memory"]), int(reply["load_duration"]),
            int(reply.get("vram", 0)),
        )  # fmt: skip
        runner.concurrency = int(reply.get("concurrency", 1))
        return runner

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and not self._reader.done()

    def chat(
        self, messages: list[dict[str, Any]], options: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield `piece` messages then one `done`."""
        return self._request(chat_message(messages, options))

    def generate_image(
        self, request: dict[str, Any], finish: asyncio.Event | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield `progress` messages then one `image` (pictures in the request as base64).
        Setting `finish` skips the remaining steps and decodes the picture so far."""
        return self._request(image_message(request), finish)

    def train(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yield `train_progress`, `checkpoint` and `validation` messages, then `trained`.

        `job`: the dataset's files (name -> path), captions written for it, the TrainRequest
        fields, and the output folder."""
        return self._request({"op": "train", **job})

    async def _request(
        self, message: dict[str, Any], finish: asyncio.Event | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Send one request; yield its replies up to the last; raise on `error`. Closing cancels."""
        request_id = next(self._ids)
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues[request_id] = inbox
        finished = False
        finisher: asyncio.Task[None] | None = None
        try:
            if not self.alive:
                raise RunnerFailed("the model's runner has stopped; try again")
            await _send(self.process, {**message, "id": request_id})
            if finish is not None:
                finisher = asyncio.create_task(self._finish_when(finish, request_id))
            while True:
                reply = await inbox.get()
                if reply["type"] == "error":
                    finished = True
                    raise _error(reply)
                yield reply
                if reply["type"] in LAST_REPLIES:
                    finished = True
                    return
        finally:
            if finisher is not None:
                finisher.cancel()
            self._queues.pop(request_id, None)
            if not finished and self.alive:
                # No await here: this runs while the request's task is being cancelled.
                with contextlib.suppress(OSError, RuntimeError):
                    assert self.process.stdin is not None
                    self.process.stdin.write(
                        json.dumps({"op": "cancel", "id": request_id}).encode() + b"\n"
                    )

    async def _finish_when(self, finish: asyncio.Event, request_id: int) -> None:
        await finish.wait()
        if self.alive:
            with contextlib.suppress(OSError, RuntimeError):
                await _send(self.process, {"op": "finish", "id": request_id})

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            reply = json.loads(line)
            inbox = self._queues.get(reply.get("id", -1))
            if inbox is not None:
                inbox.put_nowait(reply)
        code = await self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
        crash = {"type": "error", "status": 500,
                 "message": f"the model's runner stopped unexpectedly (exit code {code}); the next request starts a new one"}  # fmt: skip
        for inbox in self._queues.values():
            inbox.put_nowait(crash)

    async def stop(self, grace: float = 5.0) -> None:
        """Ask the runner to exit; kill it if it does not within `grace` seconds."""
        if self.process.returncode is None:
            with contextlib.suppress(OSError, RuntimeError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                await _kill(self.process)
        await asyncio.gather(self._reader, return_exceptions=True)

    def kill_now(self) -> None:
        """For interpreter exit: no event loop needed."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


async def _send(process: asyncio.subprocess.Process, message: dict[str, Any]) -> None:
    assert process.stdin is not None
    process.stdin.write(json.dumps(message).encode() + b"\n")
    await process.stdin.drain()


async def _kill(process: asyncio.subprocess.Process, folder: Path | None = None) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _error(reply: dict[str, Any]) -> LimnerError:
    return LimnerError(reply.get("message", "runner error"), reply.get("status", 500))


# --- child side -----------------------------------------------------------------------


def main() -> None:
    # The protocol owns the real stdout; anything a library prints goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    load = json.loads(sys.stdin.readline() or "{}")
    try:
        started = time.perf_counter_ns()
        factory = engine_for(load["format"])
        engine = factory(Path(load["folder"]), LoadOptions.from_dict(load.get("options", {})))
        loaded = time.perf_counter_ns() - started
    except Exception as exc:  # reported to the server, which maps it
        _write(out, {"type": "load_error", **_describe(exc)})
        return
    memory = engine.memory_bytes()
    vram = memory if getattr(engine, "on_gpu", False) else 0
    concurrency = int(getattr(engine, "max_concurrency", 1))
    _write(out, {"type": "ready", "memory": memory, "vram": vram, "load_duration": loaded,
                 "concurrency": concurrency})  # fmt: skip
    _serve(engine, out)


def _link_files(files: dict[str, Path], folder: Path) -> Path:
    """A folder with the model's files under their relative names, as engines expect."""
    for name, target in files.items():
        link = folder / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    return folder


def _serve(engine: Any, out: IO[str]) -> None:
    work: queue.Queue[dict[str, Any]] = queue.Queue()
    cancelled: set[int] = set()
    finished: set[int] = set()  # drawings asked to stop early and keep their picture

    def read_stdin() -> None:
        for line in sys.stdin:
            message = json.loads(line)
            if message["op"] == "cancel":
                cancelled.add(message["id"])
            elif message["op"] == "finish":
                finished.add(message["id"])
            else:
                work.put(message)
        os._exit(0)  # the server closed our stdin: exit now, even mid-generation

    threading.Thread(target=read_stdin, daemon=True).start()

    def run(request: dict[str, Any]) -> None:
        rid: int = request["id"]
        is_cancelled = functools.partial(set.__contains__, cancelled, rid)
        _run(engine, request, is_cancelled, functools.partial(set.__contains__, finished, rid), out)
        cancelled.discard(rid)
        finished.discard(rid)

    while True:
        request = work.get()
        if getattr(engine, "concurrent", False):  # it batches requests itself (vLLM)
            threading.Thread(target=run, args=(request,), daemon=True).start()
        else:
            run(request)


def _run(
    engine: Any,
    request: dict[str, Any],
    is_cancelled: Callable[[], bool],
    finish: Callable[[], bool],
    out: IO[str],
) -> None:
    rid = request["id"]
    try:
        for step in _steps(engine, request, is_cancelled, finish):
            if is_cancelled():
                break
            reply = _encode(step)
            if reply is not None:
                _write(out, {**reply, "id": rid})
            if isinstance(step, Done | ImageResult | TrainDone):
                return
        _write(out, {"type": "error", "id": rid, "status": 499, "message": "request canceled"})
    except Exception as exc:  # one bad request must not stop the runner
        _write(out, {"type": "error", "id": rid, **_describe(exc)})


def _steps(
    engine: Any,
    request: dict[str, Any],
    is_cancelled: Callable[[], bool],
    finish: Callable[[], bool],
) -> Iterator[Any]:
    if request["op"] == "train":
        return _training(engine, request, is_cancelled)
    if request["op"] == "image":
        if not hasattr(engine, "generate_image"):
            raise InvalidRequest("this model does not draw pictures; it answers questions")
        fields = dict(request["request"])
        for key in ("image", "mask"):
            fields[key] = base64.b64decode(fields[key]) if fields.get(key) else None
        fields["style_images"] = [base64.b64decode(i) for i in fields.get("style_images") or []]
        return iter(engine.generate_image(ImageRequest(**fields), is_cancelled, finish))
    if not hasattr(engine, "chat"):
        raise InvalidRequest("this model draws pictures; it does not chat")
    messages = [
        Message(
            role=m["role"],
            content=m.get("content") or "",
            images=[base64.b64decode(i) for i in m.get("images") or []],
        )
        for m in request["messages"]
    ]
    return iter(engine.chat(messages, Options.from_dict(request.get("options", {})), is_cancelled))


def _training(
    engine: Any, request: dict[str, Any], is_cancelled: Callable[[], bool]
) -> Iterator[Any]:
    if not hasattr(engine, "train"):
        raise InvalidRequest("this runner holds a model loaded to serve, not to train")
    settings = TrainRequest(**request["request"])
    files = read_uploaded({name: Path(path) for name, path in request["files"].items()})
    dataset = examples(files, settings.instance_prompt, request.get("captions"))
    return iter(engine.train(dataset, settings, Path(request["output"]), is_cancelled))


def _encode(step: Any) -> dict[str, Any] | None:
    if isinstance(step, Piece):
        return {"type": "piece", "text": step.text} if step.text else None
    if isinstance(step, Done):
        return {"type": "done", **asdict(step)}
    if isinstance(step, Progress):
        preview = base64.b64encode(step.preview).decode() if step.preview else None
        return {"type": "progress", "completed": step.completed, "total": step.total,
                "preview": preview}  # fmt: skip
    if isinstance(step, TrainProgress):
        return {"type": "train_progress", **asdict(step)}
    if isinstance(step, TrainCheckpoint):
        return {"type": "checkpoint", "step": step.step, "path": str(step.path)}
    if isinstance(step, TrainValidation):
        return {
            "type": "validation",
            "step": step.step,
            "image": base64.b64encode(step.png).decode(),
        }
    if isinstance(step, TrainDone):
        return {"type": "trained", **asdict(step), "path": str(step.path)}
    png = base64.b64encode(step.png).decode()
    return {"type": "image", "image": png, "parameters": step.parameters}


def _describe(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, LimnerError):
        return {"status": exc.status, "message": without_paths(exc.message)}
    print(f"runner error: {exc!r}", file=sys.stderr)
    message = f"the model failed: {type(exc).__name__}: {exc}"
    return {"status": 500, "message": without_paths(message)}


_WRITING = threading.Lock()  # concurrent engines answer from several threads


def _write(out: IO[str], message: dict[str, Any]) -> None:
    line = json.dumps(message) + "\n"
    with _WRITING:
        out.write(line)


if __name__ == "__main__":
    main()
