"""Helpers the tests share: fake and tiny models in a store, pictures, and a real server
on loopback. Fixtures live in conftest.py; these are plain functions and classes."""

from __future__ import annotations

import io
import json
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from PIL import Image

from limner.scheduler import Scheduler
from limner.server.app import create_app
from limner.store import Store
from limner.store.create import create
from limner.types import CreateRequest


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


def picture(
    fmt: str = "PNG", size: tuple[int, int] = (64, 48), color: Any = "red", mode: str = "RGB"
) -> bytes:
    """A flat picture of one colour, encoded: the one picture helper of the tests."""
    return encoded(Image.new(mode, size, color), fmt)


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    """A picture's file bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
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
