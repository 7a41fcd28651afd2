"""What the hostile-input tests share: one server per file over a store buried deep in its
own folder, the pass criteria of docs/reliability.md §6 (P1, P2, P3, P4), and a folder snapshot.

The store sits five folders below the snapshotted root, so a name or digest that climbed
out of the store would still land inside the snapshot and be seen.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import ThreadServer, add_fake, add_fake_draw
from limner.scheduler import Scheduler
from limner.store import Store

# An absolute path that is not one of the API's own routes, a heap address, a traceback.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?!api/|v1/)[\w.@-]+/[\w.@-]+")
LEAKS = [ABSOLUTE_PATH, re.compile(r"0x[0-9a-fA-F]{6,}"), re.compile(r"Traceback|File \"")]


@dataclass
class Served:
    url: str
    root: Path  # everything a request may touch lives below here
    store: Store
    server: ThreadServer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server with a fake chat model `chat` and a fake drawing model `draw`."""
    root = tmp_path_factory.mktemp("hostile")
    store = Store(root / "a" / "b" / "c" / "d" / "models")
    add_fake(store, "chat", token_delay=0.0)
    add_fake_draw(store, "draw")
    with ThreadServer(Scheduler(store, keep_alive=300.0)) as server:
        yield Served(server.url, root, store, server)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below `root`, with size and modification time."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
    }


def leaks(text: str) -> list[str]:
    """What an error body gives away: paths, addresses, tracebacks (P4)."""
    return [found.group(0) for pattern in LEAKS if (found := pattern.search(text))]


def assert_refused(reply: httpx.Response, statuses: range = range(400, 500)) -> str:
    """A 4xx with a JSON `{"error": ...}` body that leaks nothing (P1, P4); the message."""
    assert reply.status_code in statuses, (reply.status_code, reply.text[:300])
    assert reply.headers["content-type"].startswith("application/json"), reply.text[:300]
    error = reply.json()["error"]
    message = error["message"] if isinstance(error, dict) else error  # OpenAI's shape
    assert isinstance(message, str) and message
    assert not leaks(reply.text), leaks(reply.text)
    return message


def assert_alive(url: str) -> None:
    """P2: the server answers /api/version at once."""
    assert httpx.get(url + "/api/version", timeout=1).status_code == 200


def send(served: Served, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    """One request; raw bytes go as they are, anything else as JSON."""
    payload = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.request(method, served.url + path, timeout=60, **payload, **kwargs)
