"""Servers for the reliability tests, run with `limner serve`'s own uvicorn settings
(timeouts, header limits, shutdown). Each file's tally of cases is printed by the root
conftest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from helpers import ThreadServer, free_port
from limner.scheduler import Scheduler
from limner.server.app import uvicorn_options
from limner.store import Store


class ServeThread(ThreadServer):
    """A real uvicorn server in a thread, configured as `limner serve` configures it."""

    def __init__(self, scheduler: Scheduler) -> None:
        super().__init__(scheduler)
        app = self.server.config.app
        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, **uvicorn_options()))
        self.thread = threading.Thread(target=self.server.run, daemon=True)


@pytest.fixture
def serve_thread(store: Store) -> Iterator[Any]:
    """Start `limner serve`-like servers (set LIMNER_* variables first); each stops at the end."""
    started: list[ServeThread] = []

    def start(**settings: Any) -> ServeThread:
        settings.setdefault("keep_alive", 300.0)
        server = ServeThread(Scheduler(store, **settings)).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__()


class ServeProcess:
    """`limner serve` as a real process on a store."""

    def __init__(self, store: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "LIMNER_MODELS": str(store),
                       "LIMNER_HOST": f"127.0.0.1:{self.port}", **env}  # fmt: skip
        self.process = subprocess.Popen([sys.executable, "-m", "limner", "serve"],
                                        env=environment, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/api/version", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        self.process.kill()
        raise RuntimeError("limner serve did not start")

    def children(self) -> list[int]:
        return children(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        assert self.process.stderr is not None
        self.process.stderr.close()


def children(pid: int) -> list[int]:
    """Live processes whose parent is `pid`, from /proc (zombies are not alive)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def serve_process(models_dir: Path) -> Iterator[Any]:
    started: list[ServeProcess] = []

    def start(**env: str) -> ServeProcess:
        server = ServeProcess(models_dir, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
