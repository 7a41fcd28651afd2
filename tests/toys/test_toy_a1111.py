"""The shipped toy Stable Diffusion through Automatic1111's API and its `webuiapi` client:
real pictures, judged by their pixels, with previews of real latents and a real interrupt."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image

from helpers import ThreadServer, add_model
from limner.scheduler import Scheduler
from limner.store import Store
from limner.toys import weights
from limner.toys.shapes import Spec, draw, judge_colour, judge_shape

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = Store(tmp_path_factory.mktemp("toy-a1111") / "models")
    folder = weights("draw")
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    add_model(store, "draw", files)
    with ThreadServer(Scheduler(store, keep_alive=300.0)) as server:
        yield server.url


@pytest.fixture
def api(url: str) -> webuiapi.WebUIApi:
    where = urlparse(url)
    return webuiapi.WebUIApi(host=where.hostname, port=where.port, sampler="DDIM", steps=20)


def test_txt2img_draws_what_the_prompt_asks(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(prompt="a blue square", width=64, height=64, cfg_scale=7.5, seed=1,
                         batch_size=2)  # fmt: skip
    assert len(result.images) == 2
    assert all(judge_colour(picture.convert("RGB")) == "blue" for picture in result.images)
    assert "Steps: 20" in result.info["infotexts"][0]  # A1111's text, as in the PNG
    assert result.info["sd_model_name"] == "draw"


def test_inpainting_repaints_the_masked_half_and_keeps_the_other(api: webuiapi.WebUIApi) -> None:
    source = draw(Spec("red", "circle", "white", centre=(0.75, 0.5), extent=0.4))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    result = api.img2img(images=[source], mask_image=mask, prompt="a green square", width=64,
                         height=64, denoising_strength=1.0, mask_blur=0, inpainting_fill=1,
                         inpaint_full_res=False, cfg_scale=7.5, seed=0)  # fmt: skip
    picture = result.image.convert("RGB")
    assert np.array_equal(np.asarray(picture)[:, :32], np.asarray(source)[:, :32])
    assert judge_colour(picture.crop((32, 0, 64, 64))) == "green"


def test_image_to_image_at_low_denoising_keeps_the_picture(api: webuiapi.WebUIApi) -> None:
    source = draw(Spec("yellow", "triangle", "white", centre=(0.45, 0.55), extent=0.5))
    result = api.img2img(images=[source], prompt="a yellow triangle", width=64, height=64,
                         denoising_strength=0.3, cfg_scale=3, seed=7)  # fmt: skip
    picture = result.image.convert("RGB")
    assert (judge_colour(picture), judge_shape(picture)) == ("yellow", "triangle")


def test_progress_shows_the_real_latents_and_interrupt_returns_them_early(url: str) -> None:
    httpx.post(f"{url}/sdapi/v1/options", json={"show_progress_every_n_steps": 1})
    body = {"prompt": "a red circle", "steps": 150, "width": 64, "height": 64,
            "sampler_name": "DDIM", "force_task_id": "task(circle)", "seed": 3}  # fmt: skip
    answers: list[httpx.Response] = []

    def post() -> None:
        answers.append(httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=120))

    drawing = threading.Thread(target=post)
    drawing.start()
    progress = _progress_with_preview(url, "task(circle)")
    assert progress["state"]["sampling_steps"] == 150
    httpx.post(f"{url}/sdapi/v1/interrupt")
    drawing.join(60)
    [reply] = answers
    assert reply.status_code == 200, reply.text
    info = reply.json()["info"]
    assert '"interrupted": true' in info
    final = httpx.get(f"{url}/sdapi/v1/progress", params={"id_task": "task(circle)"}).json()
    assert final["state"]["sampling_step"] < 150  # stopped early, with a picture all the same
    assert len(reply.json()["images"]) == 1


def _progress_with_preview(url: str, task: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress: dict[str, Any] = httpx.get(
            f"{url}/sdapi/v1/progress", params={"id_task": task}
        ).json()
        if progress["current_image"] and progress["state"]["sampling_step"] >= 2:
            return progress
        time.sleep(0.05)
    raise AssertionError("no preview came")
