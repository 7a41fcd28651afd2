"""Drawing end to end: the tiny Stable Diffusion models through a real server and real runners."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

import helpers
import limner
from helpers import ThreadServer, add_model
from limner.scheduler import Scheduler
from limner.store import Store
from limner.tiny import write_tiny_sd

pytestmark = pytest.mark.slow


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def drawing(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ThreadServer, limner.Client]]:
    root = tmp_path_factory.mktemp("draw")
    store = Store(root / "models")
    add_model(store, "sd", folder_files(write_tiny_sd(root / "sd", seed=0)))
    add_model(store, "sd-inpaint", folder_files(write_tiny_sd(root / "sdi", seed=0, inpaint=True)))
    add_model(
        store, "sd-plain", folder_files(write_tiny_sd(root / "sdp", seed=0, ip_adapter=False))
    )
    with ThreadServer(Scheduler(store, keep_alive=300.0)) as server:
        yield server, limner.Client(server.url)


def png(color: str = "blue", size: tuple[int, int] = (64, 64)) -> bytes:
    return helpers.picture(size=size, color=color)


def right_half_mask(size: int = 64) -> bytes:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 2, 0, size, size))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_text_to_image_streams_steps_and_is_reproducible(
    drawing: tuple[ThreadServer, limner.Client],
) -> None:
    _, client = drawing
    seen: list[tuple[int, int]] = []
    first = client.generate_image(
        "sd", "a red circle", steps=4, seed=5, progress=lambda c, t: seen.append((c, t))
    )
    again = client.generate_image("sd", "a red circle", steps=4, seed=5)
    other = client.generate_image("sd", "a red circle", steps=4, seed=6)
    assert (
        seen
        and seen[-1][0] == seen[-1][1]
        and [c for c, _ in seen] == list(range(1, len(seen) + 1))
    )
    assert first.pil().size == (64, 64)  # the tiny model's default size
    assert first.png == again.png and first.png != other.png
    meta = limner.read_parameters(first.png)
    assert meta["seed"] == 5 and meta["model"] == "sd:latest" and meta["steps"] == 4
    assert "Steps: 4" in Image.open(io.BytesIO(first.png)).text["parameters"]  # type: ignore[attr-defined]


def test_image_to_image_runs_steps_times_strength(
    drawing: tuple[ThreadServer, limner.Client],
) -> None:
    _, client = drawing
    totals: list[int] = []
    result = client.generate_image(
        "sd",
        "a forest",
        image=png(),
        strength=0.5,
        steps=8,
        seed=1,
        scheduler="euler",  # PNDM, the model's own, runs one step more
        progress=lambda c, t: totals.append(t),
    )
    assert set(totals) == {4} and result.pil().size == (64, 64)


@pytest.mark.parametrize("model", ["sd-inpaint", "sd"])
def test_inpainting_keeps_every_unmasked_pixel(
    drawing: tuple[ThreadServer, limner.Client], model: str
) -> None:
    _, client = drawing
    source = png("blue")
    result = client.generate_image(
        model, "a door", image=source, mask=right_half_mask(), steps=4, seed=2, strength=1.0
    )
    before, after = pixels(source), pixels(result.png)
    assert np.array_equal(after[:, :32], before[:, :32])  # black in the mask: exactly kept
    assert not np.array_equal(after[:, 32:], before[:, 32:])  # white: repainted


def test_style_pictures_change_the_drawing(drawing: tuple[ThreadServer, limner.Client]) -> None:
    _, client = drawing
    plain = client.generate_image("sd", "a house", steps=3, seed=3)
    styled = client.generate_image(
        "sd", "a house", steps=3, seed=3, style_images=[png("yellow")], style_strength=0.9
    )
    unstyled = client.generate_image(
        "sd", "a house", steps=3, seed=3, style_images=[png("yellow")], style_strength=0.0
    )
    assert styled.png != plain.png and styled.parameters["style"] == "ip-adapter"
    assert np.array_equal(pixels(unstyled.png), pixels(plain.png))
    fallback = client.generate_image(
        "sd-plain", "a house", steps=4, seed=3, style_images=[png("yellow")]
    )
    assert fallback.parameters["style"] == "img2img"


def test_cancelling_after_the_first_step_frees_the_runner(
    drawing: tuple[ThreadServer, limner.Client],
) -> None:
    server, client = drawing
    body = {"model": "sd", "prompt": "slow", "steps": 150, "width": 256, "height": 256}
    with httpx.stream("POST", f"{server.url}/api/generate", json=body, timeout=60) as stream:
        lines = stream.iter_lines()
        first = json.loads(next(lines))
        assert first["completed"] == 1
        step_started = time.monotonic()
        json.loads(next(lines))
        one_step = time.monotonic() - step_started
    started = time.monotonic()
    client.generate_image("sd", "next", steps=1, seed=1, width=64, height=64)
    # The 148 steps left would take ~100x longer; we waited at most about one more step.
    assert time.monotonic() - started < 2 + 3 * one_step


def test_bad_requests_get_400_and_the_server_stays_healthy(
    drawing: tuple[ThreadServer, limner.Client],
) -> None:
    server, client = drawing
    bad = [
        {"width": 60},
        {"steps": 0.5},
        {"steps": 200},
        {"images": ["bm90IGEgcGljdHVyZQ=="]},
        {"scheduler": "nope"},
    ]
    for fields in bad:
        reply = httpx.post(
            f"{server.url}/api/generate", json={"model": "sd", "prompt": "x", **fields}
        )
        assert reply.status_code == 400 and "error" in reply.json()
    assert client.generate_image("sd", "fine", steps=1, seed=1).pil().size == (64, 64)


@pytest.mark.parametrize("scheduler", ["euler", "euler a", "dpm++ 2m karras", "ddim", "lcm"])
def test_every_scheduler_draws(drawing: tuple[ThreadServer, limner.Client], scheduler: str) -> None:
    _, client = drawing
    result = client.generate_image("sd", "x", steps=2, seed=1, scheduler=scheduler)
    assert result.parameters["scheduler"] and result.pil().size == (64, 64)


def test_openai_images_through_the_official_package(
    drawing: tuple[ThreadServer, limner.Client], tmp_path: Path
) -> None:
    server, _ = drawing
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    made = client.images.generate(
        model="sd",
        prompt="a boat",
        size="64x64",
        response_format="b64_json",
        n=2,
        extra_body={"seed": 4, "steps": 2},
    )
    assert len(made.data) == 2 and made.data[0].b64_json != made.data[1].b64_json
    image, mask = tmp_path / "image.png", tmp_path / "mask.png"
    image.write_bytes(png("green"))
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    clear.paste((0, 0, 0, 0), (32, 0, 64, 64))
    clear.save(mask)
    with image.open("rb") as picture, mask.open("rb") as area:
        edited = client.images.edit(
            model="sd-inpaint",
            image=picture,
            mask=area,
            prompt="a window",
            response_format="b64_json",
        )
    assert edited.data[0].b64_json is not None
    after = pixels(base64.b64decode(edited.data[0].b64_json))
    assert np.array_equal(after[:, :32], pixels(png("green"))[:, :32])
