"""Security tests print how many cases they tried and how many held, per file."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

TRIED: Counter[str] = Counter()
HELD: Counter[str] = Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        where = report.nodeid.split("::")[0]
        TRIED[where] += 1
        HELD[where] += report.outcome == "passed"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for where in sorted(TRIED):
        terminalreporter.write_line(f"{where}: {TRIED[where]} cases tried, {HELD[where]} held")
