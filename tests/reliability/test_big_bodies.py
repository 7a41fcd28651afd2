"""Oversized base64 bodies (docs/reliability.md §6 IMG-06): a `limner serve` process with a
16 MiB body cap gets pictures of 20, 64, 100 and 500 MB, announced by Content-Length or
streamed in chunks. Each is a 413 within 2 seconds, and the server's peak memory grows by
less than twice the cap: it never holds a body past the cap."""

from __future__ import annotations

import select
import socket
import time
from pathlib import Path
from typing import Any

import pytest

CAP = 16 << 20
SIZES_MB = (20, 64, 100, 500)
PIECE = b"A" * (1 << 20)  # base64 of a picture, as far as the server can tell
PREFIX = b'{"model": "draw", "prompt": "a cat", "images": ["'


def peak_rss(pid: int) -> int:
    """The process's high-water mark of resident memory, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def send(port: int, size: int, chunked: bool) -> tuple[int, float, int]:
    """Send a body of `size` bytes until the server answers; its status, the seconds from
    the first byte to the answer, and the body bytes sent by then."""
    length = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
    head = (b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n" + length + b"\r\n\r\n")  # fmt: skip
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head)
        sent = 0
        body = [PREFIX]
        while sent < size and not _readable(connection):
            piece = body.pop() if body else PIECE
            try:
                connection.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed; the answer is still to be read
            sent += len(piece)
        answer = connection.recv(65536)
    status = int(answer.split(b" ", 2)[1])
    return status, time.monotonic() - started, sent


def _readable(connection: socket.socket) -> bool:
    ready, _, _ = select.select([connection], [], [], 0)
    return bool(ready)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_cap_gets_413_fast_and_never_fills_memory(
    serve_process: Any, tally: Any, chunked: bool
) -> None:
    server = serve_process(LIMNER_MAX_BODY_BYTES=str(CAP))
    before = peak_rss(server.process.pid)
    held = 0
    slowest = 0.0
    for megabytes in SIZES_MB:
        status, seconds, sent = send(server.port, megabytes << 20, chunked)
        assert status == 413, (megabytes, status)
        assert seconds < 2.0, (megabytes, seconds)
        if megabytes >= 100:  # the answer came long before the body was all sent
            assert sent < (megabytes << 20) // 2, (megabytes, sent)
        slowest = max(slowest, seconds)
        held += 1
    growth = peak_rss(server.process.pid) - before
    assert growth < 2 * CAP, f"peak memory grew by {growth >> 20} MiB"
    tally(len(SIZES_MB), held, f"slowest 413 in {slowest:.2f} s; peak RSS +{growth >> 20} MiB")
