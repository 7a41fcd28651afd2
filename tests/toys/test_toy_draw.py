"""The shipped toy Stable Diffusion draws what it is asked for: through a real server and
limner's SDK, every colour x shape prompt comes out in its colour (and mostly its shape), the
right half of a picture repaints as asked, and image-to-image at low strength keeps a picture.
Pictures are judged by pixel statistics (`shapes.judge_colour`, `shapes.judge_shape`)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

import helpers
import limner
from helpers import ThreadServer, add_model
from limner.scheduler import Scheduler
from limner.store import Store
from limner.toys import weights
from limner.toys.shapes import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    Spec,
    caption,
    draw,
    judge_colour,
    judge_shape,
)

pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2)  # pictures per prompt
MIN_COLOUR = 0.9  # the share of pictures in the requested colour
# Image-to-image at strength 0.3 keeps 34/36 pictures at guidance 3 (measured); the toy bends
# its shapes at higher guidance (30/36 at 7.5), so the test asks for a moderate one.
IMAGE_TO_IMAGE_GUIDANCE, MIN_KEPT = 3.0, 0.85
MIN_SHAPE = 0.8  # ... and in its shape (measured: 32/36 here, 40/48 by `draw.evaluate`)


# On torch these run only in `make test-full`: test_openvino_draw.py already pins that both
# engines draw the same pictures, and the default engine on a CPU is OpenVINO.
@pytest.fixture(scope="module", params=[pytest.param("torch", marks=pytest.mark.full), "openvino"])
def client(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[limner.Client]:
    """A server holding the toy as shipped, as the model "draw", drawing on each engine."""
    store = Store(tmp_path_factory.mktemp("toy-draw") / "models")
    folder = weights("draw")
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    add_model(store, "draw", files)
    with (
        pytest.MonkeyPatch.context() as patch,
        ThreadServer(Scheduler(store, keep_alive=300.0)) as server,
    ):
        patch.setenv("LIMNER_DRAW_ENGINE", request.param)
        yield limner.Client(server.url)


png = helpers.encoded  # a picture's PNG bytes


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def right_half_mask() -> bytes:
    mask = Image.new("L", (64, 64), 0)  # black keeps
    mask.paste(255, (32, 0, 64, 64))  # white repaints
    return png(mask)


def test_every_prompt_draws_its_colour_and_mostly_its_shape(client: limner.Client) -> None:
    colours = shapes = 0
    prompts = [Spec(colour, shape) for colour in COLOURS for shape in SHAPES]
    for spec in prompts:
        for seed in SEEDS:
            # The model's own defaults (20 DDIM steps, guidance 7.5): what users get.
            picture = opened(
                client.generate_image("draw", caption(spec), width=64, height=64, seed=seed).png
            )
            colours += judge_colour(picture) == spec.colour
            shapes += judge_shape(picture) == spec.shape
    count = len(prompts) * len(SEEDS)
    print(f"toy draw: colour {colours}/{count}, shape {shapes}/{count}")
    assert colours / count >= MIN_COLOUR
    assert shapes / count >= MIN_SHAPE


def test_inpainting_the_right_half_repaints_it_and_keeps_the_left(client: limner.Client) -> None:
    # A red circle on the right; the prompt asks for a green square there instead.
    source = draw(Spec("red", "circle", "white", centre=(0.75, 0.5), extent=0.4))
    for seed in SEEDS:
        result = opened(
            client.generate_image(
                "draw",
                "a green square",
                image=png(source),
                mask=right_half_mask(),
                strength=1.0,
                seed=seed,
            ).png
        )
        before, after = np.asarray(source), np.asarray(result)
        assert np.array_equal(after[:, :32], before[:, :32])
        assert judge_colour(result.crop((32, 0, 64, 64))) == "green"


def test_image_to_image_at_low_strength_keeps_the_shape_and_colour(client: limner.Client) -> None:
    kept = 0
    sources = [Spec(c, s, b, centre=(0.45, 0.55), extent=0.5)
               for c in COLOURS for s in SHAPES for b in BACKGROUNDS]  # fmt: skip
    for source in sources:
        result = opened(
            client.generate_image(
                "draw", caption(source), image=png(draw(source)), strength=0.3, seed=7,
                guidance_scale=IMAGE_TO_IMAGE_GUIDANCE,
            ).png
        )  # fmt: skip
        kept += (judge_colour(result), judge_shape(result)) == (source.colour, source.shape)
    print(f"toy image-to-image: {kept}/{len(sources)} keep their colour and shape")
    assert kept / len(sources) >= MIN_KEPT
