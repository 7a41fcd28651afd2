"""`limner demo` end to end: a private server, the toy vision model naming colours and shapes,
and the toy Stable Diffusion drawing, inpainting and redrawing into ./limner-demo/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from limner import read_parameters


@pytest.mark.slow
def test_demo_answers_draws_and_leaves_only_its_pictures(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    scratch, work = tmp_path / "tmp", tmp_path / "work"
    scratch.mkdir()
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    env.pop("LIMNER_HOST", None)
    result = subprocess.run([sys.executable, "-m", "limner", "demo"], env=env, cwd=work,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in ("1. starting", "2. storing the toy vision model", "3. drawing", "4. asking",
                 "5. storing the toy drawing model", "6. drawing", "7. inpainting",
                 "8. redrawing", "9. stopping"):  # fmt: skip
        assert step in out
    answer = out.split("--- answer about picture 1")[1].split("--- timings ---")[0]
    assert re.search(r"\ba (red|green|blue|yellow) (circle|square|triangle)\b", answer)
    assert "total duration:" in out
    # The toys know their shapes: the answers and the pictures are judged right.
    assert out.count("(right)") >= 7 and out.count("(wrong)") <= 2, out
    names = ["1-drawn.png", "2-inpainted.png", "3-redrawn.png"]
    assert sorted(p.name for p in (work / "limner-demo").iterdir()) == names
    for name in names:
        path = work / "limner-demo" / name
        assert f"saved {path} (64x64" in out
        assert Image.open(path).size == (64, 64)
        assert read_parameters(path.read_bytes())  # drawn by limner, parameters in the PNG
    assert re.search(r"steps/s\)", out)
    assert list(scratch.iterdir()) == []  # the store, the pictures it sent and the log are gone
