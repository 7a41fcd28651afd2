"""Pictures of simple shapes in named colours, their captions and questions, and judges.

The toy models learn from these (`see.py`, `draw.py`), and the tests and the demo judge them
with the same vocabulary: `judge_colour` and `judge_shape` read a picture back by pixel
statistics, so a drawn "blue square" can be checked without any model. Only numpy and Pillow.

    >>> spec = random_spec(random.Random(0))
    >>> caption(spec)
    'a blue triangle'
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# The colours the toys know, and one they never see in training (for a LoRA to teach).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (45, 80, 220),
    "yellow": (240, 210, 40),
}
UNSEEN: dict[str, tuple[int, int, int]] = {"orange": (245, 140, 25)}
SHAPES = ("circle", "square", "triangle")
# Plain neutral backgrounds, far from every named colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "grey": (150, 150, 150),
    "black": (20, 20, 20),
}
SIZE = 64  # the toys' picture size

QUESTIONS = {
    "colour": "What colour is the shape?",
    "shape": "What shape is it?",
    "caption": "Describe this picture in one short sentence.",
}


@dataclass(frozen=True)
class Spec:
    """One picture: a shape of a colour on a background, its box in fractions of the side."""

    colour: str
    shape: str
    background: str = "white"
    centre: tuple[float, float] = (0.5, 0.5)
    extent: float = 0.5  # the shape's width and height, as a fraction of the side


def random_spec(
    rng: random.Random, colours: tuple[str, ...] = tuple(COLOURS), shapes: tuple[str, ...] = SHAPES
) -> Spec:
    """A random shape: any colour and shape given, any background, varied size and position."""
    extent = rng.uniform(0.35, 0.7)
    margin = extent / 2 + 0.04
    centre = (rng.uniform(margin, 1 - margin), rng.uniform(margin, 1 - margin))
    return Spec(
        rng.choice(colours), rng.choice(shapes), rng.choice(tuple(BACKGROUNDS)), centre, extent
    )


def draw(spec: Spec, size: int = SIZE, fill: tuple[int, int, int] | None = None) -> Image.Image:
    """The picture of `spec`, `size` pixels square, in RGB; `fill` overrides its colour."""
    picture = Image.new("RGB", (size, size), BACKGROUNDS[spec.background])
    fill = fill or {**COLOURS, **UNSEEN}[spec.colour]
    half = spec.extent * size / 2
    cx, cy = spec.centre[0] * size, spec.centre[1] * size
    box = (cx - half, cy - half, cx + half, cy + half)
    pen = ImageDraw.Draw(picture)
    if spec.shape == "circle":
        pen.ellipse(box, fill=fill)
    elif spec.shape == "square":
        pen.rectangle(box, fill=fill)
    elif spec.shape == "triangle":
        pen.polygon([(box[0], box[3]), (box[2], box[3]), (cx, box[1])], fill=fill)
    else:
        raise ValueError(f"unknown shape {spec.shape!r}")
    return picture


def caption(spec: Spec) -> str:
    return f"a {spec.colour} {spec.shape}"


def answers(spec: Spec) -> dict[str, str]:
    """The answer to each of QUESTIONS for this picture."""
    return {"colour": spec.colour, "shape": spec.shape, "caption": caption(spec)}


# --- Judges --------------------------------------------------------------------------------


def foreground(picture: Image.Image) -> np.ndarray:
    """A mask of the pixels that differ from the picture's background (its border's median)."""
    pixels = np.asarray(picture.convert("RGB"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    mask: np.ndarray = np.linalg.norm(pixels - background, axis=2) > 60
    return mask


def judge_colour(
    picture: Image.Image, colours: dict[str, tuple[int, int, int]] | None = None
) -> str:
    """The named colour nearest the mean of the foreground ("" if there is no foreground)."""
    colours = colours or {**COLOURS, **UNSEEN}
    mask = foreground(picture)
    if mask.sum() < 4:
        return ""
    mean = np.asarray(picture.convert("RGB"), dtype=np.float32)[mask].mean(axis=0)
    return min(colours, key=lambda name: float(np.linalg.norm(mean - np.array(colours[name]))))


def judge_shape(picture: Image.Image) -> str:
    """circle, square or triangle: the ideal shape, drawn to fill the foreground's bounding box,
    that overlaps the foreground best (intersection over union).

    Matching whole outlines, not one number such as the filled share of the box, keeps soft or
    wobbly drawn edges (a square with rounded corners, a triangle with a blunt top) from reading
    as circles."""
    mask = foreground(picture)
    if mask.sum() < 4:
        return ""
    rows, cols = np.nonzero(mask)
    box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    overlaps = {
        shape: float((box & ideal).sum() / (box | ideal).sum())
        for shape, ideal in _ideal_shapes(*box.shape).items()
    }
    return max(overlaps, key=overlaps.__getitem__)


def _ideal_shapes(height: int, width: int) -> dict[str, np.ndarray]:
    """Each of SHAPES drawn as `draw` draws it, filling a box of this size."""
    ideals = {}
    for shape in SHAPES:
        canvas = Image.new("L", (width, height), 0)
        pen, right, bottom = ImageDraw.Draw(canvas), width - 1, height - 1
        if shape == "circle":
            pen.ellipse((0, 0, right, bottom), fill=255)
        elif shape == "square":
            pen.rectangle((0, 0, right, bottom), fill=255)
        else:
            pen.polygon([(0, bottom), (right, bottom), (right / 2, 0)], fill=255)
        ideals[shape] = np.asarray(canvas) > 127
    return ideals
