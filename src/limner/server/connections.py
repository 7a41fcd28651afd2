"""What a connection may do before its request is whole, and what its request may hold.

uvicorn bounds none of it: a client that sends its headers one byte every ten seconds
(slowloris), or a megabyte of headers, or its body one byte a second, holds a connection
and memory for as long as it likes. `Guarded` is uvicorn's h11 protocol with three limits:

- the headers must be whole within LIMNER_HEADER_TIMEOUT of the connection opening (or of
  the previous response ending); else 408 and the connection is closed;
- they may not pass LIMNER_MAX_HEADER_BYTES; else 431 and the connection is closed;
- a body must keep coming: 64 KiB more within every LIMNER_BODY_TIMEOUT (a small body
  whole within it); else 408 (when nothing was answered yet) and the connection is closed.

Two ASGI middlewares sit in front of the app:

- `Concurrency`: at most LIMNER_MAX_CONNECTIONS requests in progress; more get 503 with
  `Retry-After` at once. Connections still sending their headers do not count (they are
  bounded by the header timeout), so trickling connections cannot lock real clients out.
- `ClientGone`: a client that disconnects before its response starts (a request waiting in
  the queue, or a `stream: false` answer being generated) cancels its request, so the queue
  entry and the model are freed at once rather than when the answer would have been sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, TypeVar

import h11
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from limner.errors import ServerBusy

BODY_STEP = 64 * 1024  # each step of a body restarts its timer
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    body_timeout: float
    header_bytes: int


def guarded(limits: Limits) -> type[H11Protocol]:
    """uvicorn's `http=` protocol class with `limits`."""
    return type("Guarded", (Guarded,), {"limits": limits})


class Guarded(H11Protocol):  # type: ignore[misc]
    limits = Limits(header_timeout=10.0, body_timeout=30.0, header_bytes=64 * 1024)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = ""  # "headers", "body" or "app": what the client owes us now
        self._seen = 0  # bytes of this phase (headers) or of this step (body)
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting = self._phase == "headers"
        super().data_received(data)
        if self.transport.is_closing():
            return
        if waiting and self.conn.their_state is h11.IDLE:  # still no whole request line + headers
            self._seen += len(data)
            if self._seen > self.limits.header_bytes:
                self._refuse(431, f"request headers are larger than {self.limits.header_bytes} "
                             "bytes (LIMNER_MAX_HEADER_BYTES)")  # fmt: skip
                return
        elif self._phase == "body":
            self._seen += len(data)
            if self._seen >= BODY_STEP:
                self._seen = 0
                self._arm(self.limits.body_timeout, "the request body came too slowly")
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._follow()

    def _follow(self) -> None:
        """Arm the timer that fits what the client owes now."""
        state = self.conn.their_state
        phase = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else "app"
        if phase == self._phase:
            return
        self._phase, self._seen = phase, 0
        self._disarm()
        if phase == "headers":
            self._arm(self.limits.header_timeout, "the request headers came too slowly")
        elif phase == "body":
            self._arm(self.limits.body_timeout, "the request body came too slowly")

    def _arm(self, seconds: float, message: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._refuse, 408, message)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` if nothing was answered on this request yet, then close."""
        self._disarm()
        if self.transport.is_closing():
            return
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # nothing answered yet
            body = json.dumps({"error": message}).encode()
            head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                    "content-type: application/json\r\nconnection: close\r\n"
                    f"content-length: {len(body)}\r\n\r\n")  # fmt: skip
            self.transport.write(head.encode() + body)
        self.transport.close()


class Concurrency:
    """At most `limit` requests in progress; more get 503 with Retry-After at once."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            body = json.dumps({"error": f"server busy: {self.limit} requests in progress "
                               "(LIMNER_MAX_CONNECTIONS); try again"}).encode()  # fmt: skip
            headers = [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                       (b"content-length", str(len(body)).encode())]  # fmt: skip
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class ClientGone:
    """Cancel a request whose client disconnects before its response starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        assert task is not None
        started = left = False
        gone: asyncio.Future[Message] | None = None  # the read after the body: a disconnect

        def on_gone(future: asyncio.Future[Message]) -> None:
            nonlocal left
            if future.cancelled() or future.exception() is not None:
                return
            if future.result()["type"] == "http.disconnect" and not started:
                left = True
                task.cancel()

        async def watched_receive() -> Message:
            nonlocal gone
            if gone is not None:
                return await asyncio.shield(gone)
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                gone = asyncio.ensure_future(receive())  # returns when the client leaves
                gone.add_done_callback(on_gone)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, watched_receive, watched_send)
        except asyncio.CancelledError:
            if not left or task.uncancel() > 0:
                raise  # not ours (server shutdown), or more than ours
        except ClientDisconnect:
            pass  # the client left while sending its body: nobody to answer
        finally:
            if gone is not None and not gone.done():
                gone.cancel()


class Shutdown:
    """When the server began shutting down, so that streams can end with an error line of
    their own before uvicorn cancels them at the end of LIMNER_SHUTDOWN_TIMEOUT.

    A stream registers a `Cut` once; at the cut time the cut fires and interrupts the stream
    if it is waiting for its next chunk. Nothing runs per chunk."""

    def __init__(self) -> None:
        self.cut_at: float | None = None  # time.monotonic() by which streams end
        self._cuts: set[Cut] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def begin(self, grace: float) -> None:
        """Start the clock; safe to call from a signal handler."""
        if self.cut_at is not None:
            return
        self.cut_at = time.monotonic() + grace - min(0.5, grace / 4)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._arm)

    def seconds_left(self) -> float | None:
        return None if self.cut_at is None else self.cut_at - time.monotonic()

    async def until_cut(
        self, chunks: AsyncIterator[T], message: str, at_once: bool = False
    ) -> AsyncIterator[T]:
        """`chunks` until this stream's cut: at the shutdown time, or with `at_once` as soon
        as the shutdown begins (an upload, which the client can send again); then
        ServerBusy(`message`). A chunk awaited at the cut is interrupted."""
        with self.cut(at_once) as cut:
            while not cut.fired:
                cut.waiting = True
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not cut.interrupted:
                        raise
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    break
                finally:
                    cut.waiting = False
                yield chunk
        raise ServerBusy(message)

    @contextlib.contextmanager
    def cut(self, at_once: bool = False) -> Iterator[Cut]:
        """A cut for the stream running in this task, for as long as the block lasts."""
        cut = Cut(asyncio.current_task(), at_once)
        self._loop = asyncio.get_running_loop()
        self._cuts.add(cut)
        if self.cut_at is not None:
            self._arm_one(cut)
        try:
            yield cut
        finally:
            self._cuts.discard(cut)
            cut.disarm()

    def _arm(self) -> None:
        for cut in list(self._cuts):
            self._arm_one(cut)

    def _arm_one(self, cut: Cut) -> None:
        left = 0.0 if cut.at_once else self.seconds_left() or 0.0
        cut.timer = asyncio.get_running_loop().call_later(max(left, 0.0), cut.fire)


class Cut:
    """One stream's end at the shutdown time: `fired` once the time is up; a stream waiting
    for its next chunk is interrupted then (its task cancelled, and `interrupted` set)."""

    def __init__(self, task: asyncio.Task[Any] | None, at_once: bool = False) -> None:
        self.task, self.at_once = task, at_once
        self.fired = self.waiting = self.interrupted = False
        self.timer: asyncio.TimerHandle | None = None

    def fire(self) -> None:
        self.fired = True
        if self.waiting and self.task is not None:
            self.interrupted = True
            self.task.cancel()

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


SHUTDOWN = Shutdown()  # one per process, as the signal that starts it
