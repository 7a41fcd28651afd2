"""Shared fixtures: a temporary store for every test, fake models, and real servers on loopback."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"

from limner.scheduler import Scheduler
from limner.server.app import create_app
from limner.store import Store
from limner.store.create import create
from limner.types import CreateRequest


@pytest.fixture(autouse=True)
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty store, and never the user's."""
    root = tmp_path / "models"
    monkeypatch.setenv("LIMNER_MODELS", str(root))
    # The registries and hubs of the tests listen on loopback (tests/security checks the refusal).
    monkeypatch.setenv("LIMNER_PULL_PRIVATE", "1")
    return root


@pytest.fixture
def store(models_dir: Path) -> Store:
    return Store(models_dir)


def add_model(store: Store, name: str, files: dict[str, bytes]) -> None:
    """Store a model from file contents, through the same path /api/create takes."""
    digests = {rel: store.blobs.write_bytes(data)[0] for rel, data in files.items()}
    for _ in create(store, CreateRequest(model=name, files=digests)):
        pass


def add_fake(store: Store, name: str = "fake", **config: Any) -> None:
    """A model served by the scripted fake engine (see limner/engines/fake.py)."""
    add_model(
        store, name, {"config.json": json.dumps({"model_type": "limner-fake", **config}).encode()}
    )


def add_gguf(store: Store, name: str = "tiny-gguf", quantize: str = "f16", **params: Any) -> None:
    """The tiny LLaVA as llama.cpp's GGUF pair, stored as Ollama stores GGUF models."""
    from limner.tiny import write_tiny_llava_gguf

    folder = write_tiny_llava_gguf(store.root / ".tiny-gguf", quantize=quantize)
    files = {p.name: p.read_bytes() for p in sorted(folder.glob("*.gguf"))}
    add_model(store, name, files)
    if params:
        request = CreateRequest(model=name, **{"from": name}, parameters=params)
        for _ in create(store, request):
            pass


def picture(fmt: str = "PNG", size: tuple[int, int] = (64, 48), color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ThreadServer:
    """A real uvicorn server on loopback, in a thread of the test process."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(scheduler.store, scheduler)
        self.server = uvicorn.Server(
            uvicorn.Config(app, port=self.port, log_level="warning", timeout_graceful_shutdown=2)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def make_server(store: Store) -> Iterator[Any]:
    """Start servers with custom scheduler settings; each stops at the end of the test."""
    started: list[ThreadServer] = []

    def start(**settings: Any) -> ThreadServer:
        settings.setdefault("keep_alive", 300.0)
        server = ThreadServer(Scheduler(store, **settings)).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__()


@pytest.fixture
def server(make_server: Any) -> Any:
    return make_server()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def add_fake_draw(store: Store, name: str = "draw", **config: Any) -> None:
    """A drawing model served by the fake engine: flat pictures after `steps` progress lines."""
    model = {"model_type": "limner-fake-draw", **config}
    add_model(store, name, {"config.json": json.dumps(model).encode()})


def add_tiny_sd(store: Store, tmp_path: Path, name: str = "sd") -> None:
    """limner's tiny random Stable Diffusion (diffusers folder, no IP-Adapter) as `name`."""
    from limner.cli.models import folder_files
    from limner.tiny import write_tiny_sd

    folder = write_tiny_sd(tmp_path / name, seed=0, ip_adapter=False)
    add_model(store, name, {rel: path.read_bytes() for rel, path in folder_files(folder)})


def ctrl_c_default() -> None:
    """For pexpect children: Ctrl+C interrupts even when the tests were started from a shell
    that ignores SIGINT (a background job), whose ignoring every child would inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --- Security and reliability tests print how many cases they tried and held, per file ---

# The store's rows of the matrix (ST-01..07, ST-09) are pinned by the store and pull tests.
TALLIED = tuple(f"{root}{part}" for root in ("tests/", "")
                for part in ("security/", "reliability/", "test_registry.py", "test_store.py",
                             "test_hub.py", "test_train_api.py"))  # fmt: skip
TRIED: Counter[str] = Counter()
HELD: Counter[str] = Counter()
CASES_TRIED: Counter[str] = Counter()
CASES_HELD: Counter[str] = Counter()
NOTES: dict[str, list[str]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    where = report.nodeid.split("::")[0]
    if not where.startswith(TALLIED):
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        TRIED[where] += 1
        HELD[where] += report.outcome == "passed"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for where in sorted(TRIED):
        inner = (f"; {CASES_TRIED[where]} requests or connections tried, {CASES_HELD[where]} held"
                 if CASES_TRIED[where] else "")  # fmt: skip
        terminalreporter.write_line(
            f"{where}: {TRIED[where]} cases tried, {HELD[where]} held{inner}"
        )
        for note in NOTES.get(where, []):
            terminalreporter.write_line(f"    {note}")


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Any:
    """`tally(tried, held, note)`: a test's inner cases (requests, connections) and a measured
    number, added to its file's summary line."""
    where = request.node.nodeid.split("::")[0]

    def add(tried: int, held: int, note: str = "") -> None:
        CASES_TRIED[where] += tried
        CASES_HELD[where] += held
        if note:
            NOTES.setdefault(where, []).append(f"{request.node.name}: {note}")

    return add
