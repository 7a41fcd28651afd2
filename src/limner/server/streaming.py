"""The one streaming convention (Ollama's), written down once.

- `stream` true (the default): NDJSON, one object per line, no blank lines; the last line
  has `done: true` or `status: "success"`.
- `stream` false: one JSON object, the final one, with text fields concatenated.
- An error before the first line is a real HTTP status with `{"error": ...}` (the first
  item is computed before any byte is sent); after it, a last `{"error": ...}` line. A
  stream still running when the server's shutdown time is nearly up ends with one too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
from fastapi.responses import JSONResponse, Response, StreamingResponse

from limner.errors import LimnerError, without_paths
from limner.server.connections import SHUTDOWN

log = logging.getLogger("limner.server")

Aggregate = Callable[[list[dict[str, Any]]], dict[str, Any]]


def created_at() -> str:
    """RFC 3339 with a Z, as Ollama's `created_at` on every chunk."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def last_only(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    return chunks[-1]


async def respond(
    chunks: AsyncIterator[dict[str, Any]], stream: bool, aggregate: Aggregate = last_only
) -> Response:
    first = await anext(chunks)  # errors here become real statuses
    if not stream:
        collected = [first]
        async for chunk in chunks:
            collected.append(chunk)
        return JSONResponse(aggregate(collected))
    return StreamingResponse(_lines(first, chunks), media_type="application/x-ndjson")


async def _lines(
    first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[bytes]:
    yield _line(first)
    try:
        async for chunk in _until_shutdown(rest):
            yield _line(chunk)
    except LimnerError as exc:
        yield _line({"error": without_paths(exc.message)})
    except Exception:
        log.exception("stream failed")
        yield _line({"error": "internal error; see the server log"})


async def _until_shutdown(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """`chunks`, until the server's shutdown time is nearly up: then ServerBusy, which the
    stream reports in its last line (uvicorn would cut the connection without a word).
    However it ends, `chunks` is closed before this returns, so its model is let go.
    Each chunk is awaited directly: no task or timer per chunk (see `Shutdown.cut`)."""
    try:
        async for chunk in SHUTDOWN.until_cut(
            chunks, "the server is shutting down; this answer was cut short"
        ):
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):  # the client left, or the shutdown: clean up
            await chunks.aclose()  # type: ignore[attr-defined]


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
