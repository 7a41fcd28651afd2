"""The judges read pictures of shapes back: every clean picture, and blurred ones (as a model's
soft edges are), come back as the colour and shape they were drawn with."""

from __future__ import annotations

import random

import pytest
from PIL import Image, ImageFilter

from limner.toys.shapes import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    UNSEEN,
    Spec,
    answers,
    caption,
    draw,
    judge_colour,
    judge_shape,
    random_spec,
)

SPECS = [random_spec(random.Random(seed)) for seed in range(300)]


def test_random_specs_cover_every_colour_shape_and_background_but_never_the_unseen_colour() -> None:
    assert {s.colour for s in SPECS} == set(COLOURS)
    assert {s.shape for s in SPECS} == set(SHAPES)
    assert {s.background for s in SPECS} == set(BACKGROUNDS)
    assert not {s.colour for s in SPECS} & set(UNSEEN)


@pytest.mark.parametrize("blur", [0, 1.0])
def test_the_judges_read_back_what_was_drawn(blur: float) -> None:
    wrong = []
    for spec in SPECS:
        picture = draw(spec).filter(ImageFilter.GaussianBlur(blur)) if blur else draw(spec)
        if (judge_colour(picture), judge_shape(picture)) != (spec.colour, spec.shape):
            wrong.append(spec)
    assert wrong == []


def test_the_unseen_colour_is_judged_by_name() -> None:
    assert judge_colour(draw(Spec("orange", "square", "grey"))) == "orange"


def test_a_plain_picture_has_no_colour_and_no_shape() -> None:
    plain = Image.new("RGB", (64, 64), BACKGROUNDS["grey"])
    assert (judge_colour(plain), judge_shape(plain)) == ("", "")


def test_captions_and_answers_name_the_colour_and_the_shape() -> None:
    spec = Spec("blue", "triangle")
    assert caption(spec) == "a blue triangle"
    assert answers(spec) == {"colour": "blue", "shape": "triangle", "caption": "a blue triangle"}
