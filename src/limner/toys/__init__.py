"""Toy models that know something: a vision chat model ("see") and a Stable Diffusion
("draw") trained on pictures of coloured shapes (`shapes.py`), shipped with limner, so that
tests and the demo prove meaning offline, not only wiring.

`see.py` and `draw.py` train them (`python -m limner.toys train` regenerates every weight);
their weights live in `weights/see/` (llava-hf layout) and `weights/draw/` (diffusers layout),
which `limner create NAME --toy see|see-gguf|draw` stores as models.
"""

from __future__ import annotations

from pathlib import Path

TOYS = ("see", "draw")


def weights(toy: str) -> Path:
    """The folder of a shipped toy's weights."""
    if toy not in TOYS:
        raise ValueError(f"no toy called {toy!r}; the toys are {', '.join(TOYS)}")
    return Path(__file__).parent / "weights" / toy
