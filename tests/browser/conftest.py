"""The web page in a real browser: Debian's Chromium, headless, driven by Playwright's sync API
(never `playwright install`: the browser is the system's). A server on loopback holds the
shipped toys, "see" (a vision chat model) and "draw" (a Stable Diffusion), so what the page
shows can be judged: the colour named, the colour drawn. A screenshot of the page is saved
after every test, in tests/browser/artifacts/ or LIMNER_TEST_ARTIFACTS."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser.pages import CHROMIUM, store_toy
from helpers import ThreadServer
from limner.scheduler import Scheduler
from limner.store import Store

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = Path(os.environ.get("LIMNER_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one module. Not for the session: Playwright's sync API keeps an event loop
    running on the main thread while it is open, and later tests' asyncio.run() would fail."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def toys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    """One server for a module's tests, holding "see" and "draw" (loaded once, then kept)."""
    store = Store(tmp_path_factory.mktemp("browser") / "models")
    store_toy(store, "see", "see")
    store_toy(store, "draw", "draw")
    with ThreadServer(Scheduler(store, keep_alive=300.0)) as server:
        yield server


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page; after the test, its screenshot. Uncaught script errors and Content
    Security Policy violations fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    tab.on("console", lambda message: problems.append(f"console: {message.text}")
           if "Content Security Policy" in message.text else None)  # fmt: skip
    yield tab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    context.close()
    assert problems == []
