"""One drawing request: its limits and defaults are decided in one place, which the server
asks before any work and the engine asks again, so the two can never disagree."""

from __future__ import annotations

import pytest

from limner.engines import drawing
from limner.engines.drawing import ImageRequest
from limner.errors import InvalidRequest

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"steps": 151}, "steps must be between 1 and 150, got 151"),
        ({"guidance_scale": 100.5}, "guidance_scale must be between 0 and 100, got 100.5"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be between 0 and 100"),
        ({"style_strength": 1.5}, "style_strength must be between 0 and 1, got 1.5"),
        ({"strength": 0.0}, "strength must be above 0 and at most 1, got 0.0"),
        ({"image": PNG, "steps": 3, "strength": 0.2}, "3 x 0.2 rounds to 0 denoising steps"),
        ({"width": 4104}, "width and height must be <= 4096"),
        ({"width": 60, "height": 64}, "multiples of 8 (at least 8), got 60x64"),
        ({"seed": 2**64}, "seed must be -1 (random) or from 0 to 2**64 - 1"),
        ({"seed": -2}, "seed must be -1"),
        ({"preview_every": 151}, "preview_every must be between 0 and 150, got 151"),
        ({"loras": {"/blobs/a": 11.0}}, "the weight of LoRA '/blobs/a' must be between -10.0"),
        ({"mask": PNG}, "a mask needs the picture to repaint"),
        ({"scheduler": "warp drive"}, "unknown scheduler 'warp drive'; use one of: euler,"),
    ],
)
def test_each_limit_is_a_400_that_names_the_field(fields: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        drawing.checked(ImageRequest("a square", **fields))  # type: ignore[arg-type]
    assert says in refused.value.message
    assert refused.value.status == 400


def test_a_request_within_every_limit_comes_back_with_its_scheduler_named_plainly() -> None:
    request = ImageRequest("a square", width=64, height=64, scheduler="  Euler A ", seed=2**64 - 1)
    assert drawing.checked(request) == ImageRequest(
        "a square", width=64, height=64, scheduler="euler a", seed=2**64 - 1
    )


def test_the_defaults_follow_the_kind_of_sampling_that_runs() -> None:
    assert drawing.defaults(ImageRequest("x"), "") == (20, 7.5)
    assert drawing.defaults(ImageRequest("x"), "lcm") == (4, 1.0)  # no classifier-free guidance
    assert drawing.defaults(ImageRequest("x"), "turbo") == (1, 0.0)
    given = ImageRequest("x", steps=9, guidance_scale=0.0)
    assert drawing.defaults(given, "lcm") == (9, 0.0)


def test_the_kind_of_sampling_is_read_from_the_models_scheduler() -> None:
    assert drawing.sampling("LCMScheduler", "leading") == "lcm"
    assert drawing.sampling("EulerDiscreteScheduler", "trailing") == "turbo"  # SD-Turbo
    assert drawing.sampling("EulerAncestralDiscreteScheduler", "trailing") == "turbo"  # SDXL-Turbo
    assert drawing.sampling("EulerDiscreteScheduler", "leading") == ""  # SDXL base
    assert drawing.sampling("PNDMScheduler", None) == ""  # SD 1.5


def test_a_request_without_a_picture_has_its_strength_checked_but_needs_no_steps_from_it() -> None:
    drawing.checked(ImageRequest("x", steps=1, strength=0.1))  # text-to-image: no re-noising
    with pytest.raises(InvalidRequest, match="strength must be above 0"):
        drawing.checked(ImageRequest("x", strength=1.5))
