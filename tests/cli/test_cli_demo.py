"""`limner demo` end to end: a private server, the tiny LLaVA, a picture, a streamed answer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_answers_and_leaves_nothing_behind(tmp_path: Path) -> None:
    pytest.importorskip("limner.tiny")
    pytest.importorskip("transformers")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("LIMNER_HOST", None)
    result = subprocess.run([sys.executable, "-m", "limner", "demo"], env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "random weights" in out
    for step in (
        "1. starting",
        "2. creating the tiny model",
        "3. drawing",
        "4. asking",
        "5. stopping",
    ):
        assert step in out
    answer = out.split("--- answer (random weights: nonsense) ---\n")[1].split("--- timings ---")[0]
    assert answer.strip()
    assert "total duration:" in out and "eval count:           32 token(s)" in out
    assert list(tmp_path.iterdir()) == []  # the store, the picture and the log are gone
