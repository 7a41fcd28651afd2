"""What the browser tests share: the toys in a store, the page opened, pictures in and out."""

from __future__ import annotations

import base64
import importlib.util
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from helpers import ThreadServer, add_model
from limner.cli.models import folder_files
from limner.store import Store
from limner.toys import weights
from limner.toys.shapes import Spec, draw

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package
LONG = 120_000  # ms: a first request loads its model in a fresh runner process


def require_browser() -> None:
    """Skip the calling test module when Chromium or Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package)", allow_module_level=True)
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed", allow_module_level=True)


def store_toy(store: Store, name: str, toy: str) -> None:
    add_model(store, name, {rel: path.read_bytes() for rel, path in folder_files(weights(toy))})


def open_page(page: Any, server: ThreadServer, tab: str = "chat") -> None:
    """The page at /, set up and with the models listed, on `tab`."""
    page.goto(f"{server.url}/#{tab}")
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#server-error").is_hidden()


def bodies(page: Any, path: str) -> list[Any]:
    """The JSON bodies the page sends to `path` from now on, as they go."""
    sent: list[Any] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith(path) else None)
    return sent


def drawn(page: Any, prefix: str) -> None:
    """Waits for a drawing panel's picture, failing with the page's error if it shows one."""
    page.wait_for_selector(f"#{prefix}-result:visible, #{prefix}-error:visible", timeout=LONG)
    error = page.locator(f"#{prefix}-error")
    assert error.is_hidden(), error.inner_text()


def shape_file(folder: Path, spec: Spec, name: str = "shape.png") -> Path:
    """A toy picture of `spec` as a PNG file, for a file input."""
    path = folder / name
    draw(spec).save(path)
    return path


def shown_picture(page: Any, selector: str) -> Image.Image:
    """The picture an <img> shows, read back from its data: URI."""
    src: str = page.locator(selector).get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    return decoded(src.split(",", 1)[1])


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")
