"""One loaded model in its own worker process, and the server's handle on it.

Child side (`python -m limner.runner`): hosts one engine and speaks the runner protocol
(limner.protocol) on stdin and stdout. The first line loads the model; then requests are
served one at a time (several at once for an engine that batches) while cancel and finish
lines are read concurrently, so a request can be stopped between two tokens or steps. When
stdin closes (the server exited or was killed) the runner exits at once, so no runner
outlives its server.

Parent side (`RunnerProcess`): spawns the child with asyncio, waits for it to be ready,
and turns each request into an async iterator of the engine's typed steps. If the child
dies, or writes a line that is not the protocol's, every request it held ends with
RunnerFailed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from limner import config, protocol
from limner.engines import (
    ChatStep,
    EmbedStep,
    ImageRequest,
    ImageStep,
    LoadOptions,
    Message,
    Options,
    Piece,
    engine_for,
    tool_calls,
)
from limner.engines.training import TrainStep, examples, read_uploaded
from limner.errors import (
    InsufficientStorage,
    InvalidRequest,
    LimnerError,
    ProtocolError,
    RunnerFailed,
    without_paths,
)
from limner.protocol import (
    LAST,
    Cancel,
    Chat,
    Draw,
    Embed,
    Error,
    Finish,
    Load,
    LoadError,
    Ready,
    Reply,
    Request,
    Train,
)
from limner.store.blobs import NO_SPACE, no_space

log = logging.getLogger("limner.runner")

STREAM_LIMIT = 64 * 1024 * 1024  # one line may carry several base64 pictures
S = TypeVar("S")  # the steps one request yields


@dataclass(frozen=True)
class Placement:
    """What the scheduler knows of a load beyond its files: the model's name and the
    memory it is estimated to need (a cluster places replicas by it)."""

    model: str = ""
    need: int = 0


# --- parent side ----------------------------------------------------------------------


class RunnerProcess:
    """The server's handle on one runner process."""

    def __init__(self, process: asyncio.subprocess.Process, folder: Path, ready: Ready) -> None:
        self.process = process
        self.folder = folder
        self.memory = ready.memory
        self.vram = ready.vram  # the part of `memory` on a GPU
        self.load_duration = ready.load_duration
        self.concurrency = ready.concurrency  # requests it takes at once
        self._ids = itertools.count(1)
        self._open: dict[int, tuple[Request, asyncio.Queue[Reply]]] = {}  # by request id
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls,
        model_format: str,
        files: dict[str, Path],
        options: LoadOptions,
        timeout: float,
        placement: Placement | None = None,
    ) -> RunnerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "limner.runner",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=STREAM_LIMIT,
        )  # fmt: skip
        # The parent owns the folder of links, so it is removed however the runner ends.
        folder = link_files(files, Path(tempfile.mkdtemp(prefix="limner-model-")))
        try:
            await _send(process, protocol.encode(Load(model_format, folder, options)))
            assert process.stdout is not None
            line = await asyncio.wait_for(_readline(process.stdout), timeout)
            reply = (
                protocol.decode(line)[1] if line else LoadError(500, "runner exited while loading")
            )
            if not isinstance(reply, Ready):
                raise _load_failure(reply)
        except TimeoutError:
            await _kill(process, folder)
            raise RunnerFailed(
                f"the model did not load within {timeout:g} s; raise LIMNER_LOAD_TIMEOUT if it is large"
            ) from None
        except BaseException:
            await _kill(process, folder)
            raise
        return cls(process, folder, reply)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and not self._reader.done()

    def chat(self, messages: list[Message], options: Options) -> AsyncIterator[ChatStep]:
        """Yield `Piece`s then one `Done`."""
        return self._request(Chat(messages, options), protocol.CHAT_STEPS)

    def generate_image(
        self, request: ImageRequest, finish: asyncio.Event | None = None
    ) -> AsyncIterator[ImageStep]:
        """Yield `Progress` then one `ImageResult`. Setting `finish` skips the remaining
        steps and decodes the picture so far."""
        return self._request(Draw(request), protocol.IMAGE_STEPS, finish)

    def train(self, job: Train) -> AsyncGenerator[TrainStep, None]:
        """Yield `TrainProgress`, `TrainCheckpoint` and `TrainValidation`, then `TrainDone`."""
        return self._request(job, protocol.TRAIN_STEPS)

    def embed(self, request: Embed) -> AsyncIterator[EmbedStep]:
        """Yield one `Embedded`."""
        return self._request(request, protocol.EMBED_STEPS)

    async def _request(
        self, message: Request, steps: tuple[type[S], ...], finish: asyncio.Event | None = None
    ) -> AsyncGenerator[S, None]:
        """Send one request; yield its steps up to the last; raise on Error. Closing cancels."""
        request_id = next(self._ids)
        inbox: asyncio.Queue[Reply] = asyncio.Queue()
        self._open[request_id] = (message, inbox)
        finished = False
        finisher: asyncio.Task[None] | None = None
        try:
            if not self.alive:
                raise RunnerFailed("the model's runner has stopped; try again")
            await _send(self.process, protocol.encode(message, request_id))
            if finish is not None:
                finisher = asyncio.create_task(self._finish_when(finish, request_id))
            while True:
                reply = await inbox.get()
                finished = isinstance(reply, LAST)
                if isinstance(reply, Error):
                    raise reply.exception()
                if isinstance(reply, steps):  # the reader let no other kind through
                    yield reply
                if finished:
                    return
        finally:
            if finisher is not None:
                finisher.cancel()
            self._open.pop(request_id, None)
            if not finished and self.alive:
                # No await here: this runs while the request's task is being cancelled.
                with contextlib.suppress(OSError, RuntimeError):
                    assert self.process.stdin is not None
                    self.process.stdin.write(protocol.encode(Cancel(), request_id))

    async def _finish_when(self, finish: asyncio.Event, request_id: int) -> None:
        await finish.wait()
        if self.alive:
            with contextlib.suppress(OSError, RuntimeError):
                await _send(self.process, protocol.encode(Finish(), request_id))

    async def _read(self) -> None:
        assert self.process.stdout is not None
        failure = None
        try:
            while line := await _readline(self.process.stdout):
                self._deliver(*protocol.decode(line))
        except ProtocolError as exc:  # a runner that speaks nonsense is stopped, not guessed
            failure = f"the model's runner sent a line limner cannot read ({exc.message})"
            log.error("%s; stopping it", failure)
            self.process.kill()
        code = await self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
        failure = failure or (
            f"the model's runner stopped unexpectedly (exit code {code}); "
            "the next request starts a new one"
        )
        for _, inbox in self._open.values():
            inbox.put_nowait(Error(500, failure))

    def _deliver(self, request_id: int, reply: Any) -> None:
        """Hand a reply to its open request; a reply no request of its kind takes is an error."""
        if not isinstance(reply, protocol.REPLIES):
            raise ProtocolError(f"a runner does not send {type(reply).__name__}")
        request, inbox = self._open.get(request_id, (None, None))
        if request is None or inbox is None:
            return  # the request was closed meanwhile: its last replies are dropped
        if not protocol.answers(request, reply):
            kind = type(request).__name__.lower()
            raise ProtocolError(f"a {type(reply).__name__} does not answer a {kind} request")
        inbox.put_nowait(reply)

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


async def _readline(stream: asyncio.StreamReader) -> bytes:
    """One line, or ProtocolError if it is longer than STREAM_LIMIT (never a reader that dies)."""
    try:
        return await stream.readline()
    except ValueError:  # asyncio's limit overrun
        raise ProtocolError(f"a line is longer than {STREAM_LIMIT >> 20} MiB") from None


async def _send(process: asyncio.subprocess.Process, line: bytes) -> None:
    assert process.stdin is not None
    process.stdin.write(line)
    await process.stdin.drain()


async def _kill(process: asyncio.subprocess.Process, folder: Path | None = None) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _load_failure(reply: Any) -> LimnerError:
    if isinstance(reply, LoadError):
        return LimnerError(reply.message, reply.status)
    return ProtocolError(f"the runner answered its load with {type(reply).__name__}")


def link_files(files: dict[str, Path], folder: Path) -> Path:
    """A folder with the model's files under their relative names, as engines expect."""
    for name, target in files.items():
        link = folder / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    return folder


# --- child side -----------------------------------------------------------------------


def main() -> None:
    # The protocol owns the real stdout; anything a library prints goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    line = sys.stdin.buffer.readline()
    if not line:
        return
    _, load = protocol.decode(line)
    if not isinstance(load, Load):
        raise ProtocolError(f"a runner's first line loads a model, not {type(load).__name__}")
    try:
        started = time.perf_counter_ns()
        engine = engine_for(load.format)(load.folder, load.options)
        loaded = time.perf_counter_ns() - started
    except Exception as exc:  # reported to the server, which maps it
        failure = _failure(exc)
        _write(out, protocol.encode(LoadError(failure.status, failure.message)))
        return
    _write(out, protocol.encode(ready(engine, loaded)))
    _serve(engine, out)


def ready(engine: Any, load_duration: int) -> Ready:
    """What a loaded engine holds and takes: every kind of runner answers its load with this."""
    memory = engine.memory_bytes()
    vram = memory if getattr(engine, "on_gpu", False) else 0
    return Ready(memory, load_duration, vram, int(getattr(engine, "max_concurrency", 1)))


def _serve(engine: Any, out: IO[bytes]) -> None:
    work: queue.Queue[tuple[int, Request]] = queue.Queue()
    cancelled: set[int] = set()
    finished: set[int] = set()  # drawings asked to stop early and keep their picture
    interval = config.stream_interval()

    def read_stdin() -> None:
        for line in sys.stdin.buffer:
            try:
                request_id, message = protocol.decode(line)
            except ProtocolError as exc:  # a deaf runner would leave its requests hanging
                print(f"runner: cannot read the server's line: {exc.message}", file=sys.stderr)
                os._exit(2)
            if isinstance(message, Cancel):
                cancelled.add(request_id)
            elif isinstance(message, Finish):
                finished.add(request_id)
            elif isinstance(message, Chat | Draw | Train | Embed):
                work.put((request_id, message))
            else:
                print(f"runner: {type(message).__name__} is no request", file=sys.stderr)
                os._exit(2)
        os._exit(0)  # the server closed our stdin: exit now, even mid-generation

    threading.Thread(target=read_stdin, daemon=True).start()

    def run(request_id: int, request: Request) -> None:
        stop = functools.partial(set.__contains__, cancelled, request_id)
        finish = functools.partial(set.__contains__, finished, request_id)
        for reply in coalesced(replies(engine, request, stop, finish), interval):
            _write(out, protocol.encode(reply, request_id))
        cancelled.discard(request_id)
        finished.discard(request_id)

    while True:
        request_id, request = work.get()
        if getattr(engine, "concurrent", False):  # it batches requests itself (vLLM)
            threading.Thread(target=run, args=(request_id, request), daemon=True).start()
        else:
            run(request_id, request)


def coalesced(steps: Iterator[Reply], interval: float) -> Iterator[Reply]:
    """`steps` with the pieces of text made within `interval` of the last reply sent joined into
    one: fewer wake-ups of the server and its client for fast models. A held piece waits at most
    one token, and goes out before any other reply."""
    held: list[str] = []
    sent = -math.inf
    for step in steps:
        if type(step) is Piece:
            held.append(step.text)
            now = time.monotonic()
            if now - sent < interval:
                continue
            sent = now
            step = Piece("".join(held))
            held.clear()
        elif held:
            yield Piece("".join(held))
            held.clear()
        yield step


def replies(
    engine: Any,
    request: Request,
    cancelled: Callable[[], bool],
    finish: Callable[[], bool] = lambda: False,
) -> Iterator[Reply]:
    """The replies to one request, up to its last: every kind of runner sends these."""
    try:
        for step in _steps(engine, request, cancelled, finish):
            if cancelled():
                break
            if not protocol.answers(request, step):
                raise ProtocolError(f"the engine answered with {type(step).__name__}")
            if type(step) is Piece and not step.text:
                continue  # a multi-byte character still pending
            yield step
            if isinstance(step, LAST):
                return
        yield Error(499, "request canceled")
    except Exception as exc:  # one bad request must not stop the runner
        yield _failure(exc)


def _steps(
    engine: Any, request: Request, cancelled: Callable[[], bool], finish: Callable[[], bool]
) -> Iterator[Any]:
    if isinstance(request, Train):
        return _training(engine, request, cancelled)
    if isinstance(request, Embed):
        if not hasattr(engine, "embed"):
            raise InvalidRequest("this model does not embed text")
        return iter(engine.embed(request.inputs, request.truncate, request.num_ctx, cancelled))
    if isinstance(request, Draw):
        if not hasattr(engine, "generate_image"):
            raise InvalidRequest("this model does not draw pictures; it answers questions")
        return iter(engine.generate_image(request.request, cancelled, finish))
    if not hasattr(engine, "chat"):
        raise InvalidRequest("this model draws pictures; it does not chat")
    steps: Iterator[ChatStep] = iter(engine.chat(request.messages, request.options, cancelled))
    if request.options.tools:  # engines without a template of their own read bare JSON
        return tool_calls.with_tool_calls(steps, getattr(engine, "tool_tag", tool_calls.BARE))
    return steps


def _training(engine: Any, request: Train, cancelled: Callable[[], bool]) -> Iterator[Any]:
    if not hasattr(engine, "train"):
        raise InvalidRequest("this runner holds a model loaded to serve, not to train")
    settings = request.request
    dataset = examples(read_uploaded(request.files), settings.instance_prompt, request.captions)
    return iter(engine.train(dataset, settings, request.output, cancelled))


def _failure(exc: Exception) -> Error:
    if isinstance(exc, LimnerError):
        return Error(exc.status, without_paths(exc.message))
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:  # a checkpoint, a converted graph
        full = InsufficientStorage(no_space(Path(str(exc.filename or ".")), None))
        return Error(full.status, without_paths(full.message))
    print(f"runner error: {exc!r}", file=sys.stderr)
    return Error(500, without_paths(f"the model failed: {type(exc).__name__}: {exc}"))


_WRITING = threading.Lock()  # concurrent engines answer from several threads


def _write(out: IO[bytes], line: bytes) -> None:
    with _WRITING:  # buffered, so a long line is written whole; one flush, one write call
        out.write(line)
        out.flush()


if __name__ == "__main__":
    main()
