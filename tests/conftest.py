"""Shared fixtures: a temporary store for every test, fake models, and real servers on loopback."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from helpers import ThreadServer
from limner.scheduler import Scheduler
from limner.store import Store


@pytest.fixture(scope="session", autouse=True)
def draw_on_torch() -> Iterator[None]:
    """Drawing models draw on torch unless a test asks for OpenVINO (test_openvino_draw.py and
    the toy's drawing tests run both): converting every tiny model's graphs would add minutes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIMNER_DRAW_ENGINE", "torch")
        yield


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
