"""Automatic1111's /sdapi/v1 through the `webuiapi` client package and through requests
shaped as front-ends send them (fake drawing engine at the seam).

Request shapes, from the front-ends' sources: SillyTavern's `generateAutoImage` (the
stable-diffusion extension: sampler_name, scheduler "Automatic", override_settings with
CLIP_stop_at_last_layers and sd_vae, save_images true, enable_hr false, hr_* fields);
Open WebUI's image router (txt2img with prompt, batch_size, width, height, steps, then
POST /sdapi/v1/options {"sd_model_checkpoint"} to switch models, and GET sd-models for the
list); webuiapi's txt2img/img2img (every field of A1111's API models, at A1111's defaults).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import webuiapi
from PIL import Image

from helpers import add_fake_draw
from limner.server import a1111_inpaint
from limner.store import Store
from limner.store.create import create
from limner.types import CreateRequest


@pytest.fixture
def url(store: Store, server: Any) -> str:
    add_fake_draw(store, "draw")
    return str(server.url)


@pytest.fixture
def api(url: str) -> webuiapi.WebUIApi:
    where = urlparse(url)
    return webuiapi.WebUIApi(host=where.hostname, port=where.port, sampler="Euler a", steps=3)


def png(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decoded(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")


def test_webuiapi_txt2img_gets_a1111s_answer_with_a_picture_per_seed(
    api: webuiapi.WebUIApi,
) -> None:
    result = api.txt2img(prompt="a lighthouse", width=48, height=32, batch_size=2, n_iter=2, seed=5)
    assert [picture.size for picture in result.images] == [(48, 32)] * 4
    assert result.info["all_seeds"] == [5, 6, 7, 8]
    assert result.info["sd_model_name"] == "draw"
    assert result.info["sampler_name"] == "Euler a" or result.info["sampler_name"] is None
    assert result.parameters["prompt"] == "a lighthouse"
    assert result.parameters["steps"] == 3
    different = {picture.tobytes() for picture in result.images}
    assert len(different) == 4  # four seeds, four pictures


def test_a_seed_past_the_last_is_refused_before_any_load_and_the_last_wraps(
    url: str, server: Any
) -> None:
    body = {"prompt": "a fox", "width": 32, "height": 32, "steps": 2, "batch_size": 2}
    refused = httpx.post(f"{url}/sdapi/v1/txt2img", json={**body, "seed": 2**64}, timeout=30)
    assert refused.status_code == 400 and "2**64 - 1" in refused.json()["detail"]
    for field, text in (("steps", "5"), ("width", "64"), ("cfg_scale", "7")):
        mistyped = httpx.post(f"{url}/sdapi/v1/txt2img", json={**body, field: text}, timeout=30)
        assert mistyped.status_code == 400 and field in mistyped.json()["detail"]
    assert server.scheduler.loads == 0
    last = 2**64 - 1
    drawn = httpx.post(f"{url}/sdapi/v1/txt2img", json={**body, "seed": last}, timeout=30)
    assert json.loads(drawn.json()["info"])["all_seeds"] == [last, 0]


def test_a_sillytavern_request_draws_and_ignores_what_limner_cannot_keep(url: str) -> None:
    body = {
        "prompt": "a castle on a hill", "negative_prompt": "blurry", "sampler_name": "DPM++ 2M",
        "scheduler": "Karras", "steps": 4, "cfg_scale": 6, "width": 64, "height": 64,
        "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 2,
        "denoising_strength": 0.5, "hr_second_pass_steps": 0, "seed": 11, "n_iter": 1,
        "s_churn": 0.0, "s_min_uncond": 0.0, "s_noise": 1.0, "s_tmax": None, "s_tmin": 0.0,
        "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"},
        "override_settings_restore_afterwards": True, "save_images": True, "send_images": True,
    }  # fmt: skip
    reply = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert decoded(answer["images"][0]).size == (64, 64)
    info = json.loads(answer["info"])
    assert info["seed"] == 11 and info["negative_prompt"] == "blurry"
    assert info["sampler_name"] is None or info["sampler_name"].startswith("DPM++ 2M")


def test_open_webui_switches_models_through_the_options(store: Store, url: str) -> None:
    add_fake_draw(store, "other")
    listed = httpx.get(f"{url}/sdapi/v1/sd-models").json()
    titles = {model["model_name"]: model["title"] for model in listed}
    assert set(titles) == {"draw", "other"}
    assert titles["other"].startswith("other [")
    switched = httpx.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": titles["other"]})
    assert switched.status_code == 200 and switched.json() is None
    assert httpx.get(f"{url}/sdapi/v1/options").json()["sd_model_checkpoint"] == titles["other"]
    body = {"prompt": "a fox", "batch_size": 1, "width": 32, "height": 32, "steps": 2}
    info = json.loads(httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=30).json()["info"])
    assert info["sd_model_name"] == "other"
    body["override_settings"] = {"sd_model_checkpoint": "draw"}  # this request only
    info = json.loads(httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=30).json()["info"])
    assert info["sd_model_name"] == "draw"


def test_samplers_and_schedulers_are_listed_in_a1111s_names(url: str) -> None:
    samplers = httpx.get(f"{url}/sdapi/v1/samplers").json()
    assert {"Euler a", "DPM++ 2M", "DDIM", "UniPC"} <= {each["name"] for each in samplers}
    assert all(set(each) == {"name", "aliases", "options"} for each in samplers)
    schedulers = httpx.get(f"{url}/sdapi/v1/schedulers").json()
    assert {"Automatic", "Karras", "Normal", "Align Your Steps", "Beta"} <= {
        each["label"] for each in schedulers
    }
    assert httpx.get(f"{url}/sdapi/v1/upscalers").json() == []


def test_the_probes_front_ends_make_get_a1111s_shapes(url: str) -> None:
    assert httpx.get(f"{url}/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
    assert httpx.get(f"{url}/sdapi/v1/script-info").json() == []
    assert httpx.get(f"{url}/sdapi/v1/extensions").json() == []
    assert httpx.get(f"{url}/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    ram = httpx.get(f"{url}/sdapi/v1/memory").json()["ram"]
    assert ram["total"] >= ram["used"] > 0
    assert httpx.get(f"{url}/sdapi/v1/cmd-flags").json()["api"] is True


def test_an_sd_backend_client_request_with_scheduler_normal_draws_and_says_what_ran(
    url: str,
) -> None:
    body = {"prompt": "a cat", "steps": 2, "width": 32, "height": 32,
            "sampler_name": "Euler a", "scheduler": "normal"}  # fmt: skip
    reply = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=30).json()
    info = json.loads(reply["info"])
    assert info["extra_generation_params"]["Schedule type"] == "Normal (ran as the sampler spacing)"
    karras = {**body, "sampler_name": "DPM++ 2M", "scheduler": "Karras"}
    info = json.loads(httpx.post(f"{url}/sdapi/v1/txt2img", json=karras, timeout=30).json()["info"])
    assert info["extra_generation_params"]["Schedule type"] == "Karras"


def test_png_info_reads_the_parameters_a_drawing_carries(url: str) -> None:
    body = {"prompt": "a cat", "negative_prompt": "a dog", "steps": 2, "width": 32,
            "height": 32, "seed": 7}  # fmt: skip
    drawn = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=30).json()["images"][0]
    read = httpx.post(f"{url}/sdapi/v1/png-info", json={"image": drawn}).json()
    assert read["parameters"]["Prompt"] == "a cat"
    assert read["parameters"]["Seed"] == "7" and read["parameters"]["Size-1"] == "32"
    # A1111's own text, as the real engine writes it beside limner's JSON.
    from limner.server.a1111 import parse_infotext

    text = "a cat <lora:style:0.7>\nNegative prompt: a dog, blur\nSteps: 20, Sampler: Euler a, Size: 512x768"
    assert parse_infotext(text) == {
        "Prompt": "a cat <lora:style:0.7>", "Negative prompt": "a dog, blur", "Steps": "20",
        "Sampler": "Euler a", "Size": "512x768", "Size-1": "512", "Size-2": "768",
    }  # fmt: skip
    bad = httpx.post(f"{url}/sdapi/v1/png-info", json={"image": ""})
    assert bad.status_code == 400


def test_img2img_inpaints_only_the_masked_square_and_keeps_the_rest(
    api: webuiapi.WebUIApi,
) -> None:
    blue = Image.new("RGB", (64, 64), "blue")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (40, 8, 56, 24))
    result = api.img2img(images=[blue], mask_image=mask, prompt="a red door", width=64,
                         height=64, denoising_strength=0.8, inpainting_fill=1, mask_blur=0,
                         inpaint_full_res=True, inpaint_full_res_padding=0)  # fmt: skip
    picture = result.image.convert("RGB")
    assert picture.size == (64, 64)
    assert picture.getpixel((48, 16)) != (0, 0, 255)  # repainted
    outside = [(x, y) for x in range(64) for y in range(64) if not (40 <= x < 56 and 8 <= y < 24)]
    assert all(picture.getpixel(point) == (0, 0, 255) for point in outside)
    assert result.parameters["init_images"] is None  # not echoed unless asked for


def test_a_blurred_mask_blends_the_edge_and_an_inverted_one_repaints_the_black(url: str) -> None:
    blue = Image.new("RGB", (64, 64), "blue")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    body = {"init_images": [png(blue)], "mask": png(mask), "prompt": "a wall", "steps": 4,
            "width": 64, "height": 64, "inpaint_full_res": False, "inpainting_fill": 1,
            "mask_blur": 8, "denoising_strength": 1.0}  # fmt: skip
    soft = decoded(httpx.post(f"{url}/sdapi/v1/img2img", json=body, timeout=30).json()["images"][0])
    painted = soft.getpixel((63, 32))
    assert soft.getpixel((0, 32)) == (0, 0, 255) and painted != (0, 0, 255)
    edge = soft.getpixel((32, 32))
    assert edge not in ((0, 0, 255), painted)  # between the two: a soft edge
    inverted = decoded(
        httpx.post(
            f"{url}/sdapi/v1/img2img",
            json={**body, "mask_blur": 0, "inpainting_mask_invert": 1},
            timeout=30,
        ).json()["images"][0]
    )
    assert inverted.getpixel((63, 32)) == (0, 0, 255) and inverted.getpixel((0, 32)) != (0, 0, 255)


def test_fill_paints_the_masked_area_from_its_surroundings() -> None:
    picture = Image.new("RGB", (64, 64), "red")
    picture.paste((0, 255, 0), (20, 20, 40, 40))  # what the mask covers
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 44, 44))
    filled = a1111_inpaint.fill(picture, mask)
    r, g, b = filled.getpixel((30, 30))
    assert r > 200 and g < 30 and b < 30  # red from around it, no trace of the green
    assert filled.getpixel((2, 2)) == (255, 0, 0)


def test_resize_modes_crop_or_fill_to_the_size_asked(url: str) -> None:
    wide = Image.new("RGB", (128, 64), "blue")
    wide.paste((255, 0, 0), (0, 0, 32, 64))  # a red band on the left
    body = {"init_images": [png(wide)], "prompt": "x", "steps": 2, "width": 64, "height": 64,
            "denoising_strength": 0.5}  # fmt: skip
    for mode, expected in ((0, (64, 64)), (1, (64, 64)), (2, (64, 64))):
        reply = httpx.post(f"{url}/sdapi/v1/img2img", json={**body, "resize_mode": mode})
        assert reply.status_code == 200, reply.text
        assert decoded(reply.json()["images"][0]).size == expected
    reply = httpx.post(f"{url}/sdapi/v1/img2img", json={**body, "resize_mode": 7})
    assert reply.status_code == 400 and "resize_mode" in reply.json()["detail"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"enable_hr": True}, "enable_hr"),
        ({"restore_faces": True}, "restore_faces"),
        ({"alwayson_scripts": {"ADetailer": {"args": [True]}}}, "alwayson_scripts"),
        ({"sampler_name": "Heun"}, "sampler 'Heun' is not available"),
        ({"scheduler": "Cosine"}, "scheduler 'Cosine' is not available"),
        ({"batch_size": 9, "n_iter": 2}, "batch_size x n_iter"),
        ({"prompt": "<lora:nothing:1> a cat"}, "nothing"),
        ({"override_settings": {"sd_model_checkpoint": "missing"}}, "missing"),
    ],
)
def test_what_limner_cannot_do_is_a_4xx_that_names_it(
    url: str, change: dict[str, Any], named: str
) -> None:
    body = {"prompt": "a cat", "steps": 2, "width": 32, "height": 32, **change}
    reply = httpx.post(f"{url}/sdapi/v1/txt2img", json=body)
    assert 400 <= reply.status_code < 500, reply.text
    assert named in reply.json()["detail"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"init_images": []}, "init_images"),
        ({"init_images": ["not base64!"]}, "base64"),
        ({"mask": "mask"}, "not a picture"),
        ({"inpainting_fill": 2}, "latent noise"),
    ],
)
def test_bad_img2img_requests_are_400s(url: str, change: dict[str, Any], named: str) -> None:
    picture = png(Image.new("RGB", (32, 32), "blue"))
    body = {"init_images": [picture], "prompt": "x", "steps": 2, "width": 32, "height": 32}
    reply = httpx.post(f"{url}/sdapi/v1/img2img", json={**body, **change})
    assert reply.status_code == 400, reply.text
    assert named in reply.json()["detail"]


def test_an_all_black_mask_has_nothing_to_repaint(url: str) -> None:
    picture = png(Image.new("RGB", (32, 32), "blue"))
    black = png(Image.new("L", (32, 32), 0))
    body = {"init_images": [picture], "mask": black, "prompt": "x", "width": 32, "height": 32}
    reply = httpx.post(f"{url}/sdapi/v1/img2img", json=body)
    assert reply.status_code == 400 and "all black" in reply.json()["detail"]


def test_without_a_drawing_model_txt2img_says_to_install_one(store: Store, server: Any) -> None:
    reply = httpx.post(f"{server.url}/sdapi/v1/txt2img", json={"prompt": "a cat"})
    assert reply.status_code == 404 and "no drawing model" in reply.json()["detail"]


def test_progress_follows_a_job_with_previews_and_interrupt_keeps_the_picture(
    store: Store, server: Any
) -> None:
    add_fake_draw(store, "draw", token_delay=0.1)
    url = server.url
    httpx.post(f"{url}/sdapi/v1/options", json={"show_progress_every_n_steps": 1})
    body = {"prompt": "SLOW a tower", "steps": 40, "n_iter": 3, "width": 32, "height": 32,
            "force_task_id": "task(tower)"}  # fmt: skip
    answers: list[httpx.Response] = []
    drawing = threading.Thread(
        target=lambda: answers.append(httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=60))
    )
    drawing.start()
    progress = _wait_for_steps(url, "task(tower)", 3)
    assert 0 < progress["progress"] < 1
    assert progress["state"]["job_count"] == 3 and progress["state"]["sampling_steps"] == 40
    assert decoded(progress["current_image"]).size == (32, 32)  # a preview
    assert progress["current_task"] == "task(tower)"
    assert httpx.post(f"{url}/sdapi/v1/interrupt").status_code == 200
    drawing.join(30)
    [reply] = answers
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["images"]) == 1  # the picture in progress, and no more
    assert json.loads(reply.json()["info"])["interrupted"] is True
    after = httpx.get(f"{url}/sdapi/v1/progress", params={"id_task": "task(tower)"}).json()
    assert after["progress"] == 1.0 and after["state"]["interrupted"] is True
    idle = httpx.get(f"{url}/sdapi/v1/progress").json()
    assert idle["state"]["job_count"] == 0 and idle["current_image"] is None


def _wait_for_steps(url: str, task: str, steps: int) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        progress: dict[str, Any] = httpx.get(
            f"{url}/sdapi/v1/progress", params={"id_task": task}
        ).json()
        if progress["state"]["sampling_step"] >= steps and progress["current_image"]:
            return progress
        time.sleep(0.05)
    raise AssertionError(f"{task} did not reach step {steps}")


def test_lora_tags_name_models_with_a_lora_and_leave_the_prompt(store: Store, url: str) -> None:
    import numpy as np
    from safetensors.numpy import save

    lora = save({"lora_unet_down_blocks_0.lora_down.weight": np.zeros((4, 8), np.float32)})
    digest = store.blobs.write_bytes(lora)[0]
    request = CreateRequest(
        model="style", **{"from": "draw"}, adapters={"style.safetensors": digest}
    )
    list(create(store, request))
    listed = httpx.get(f"{url}/sdapi/v1/loras").json()
    assert listed == [{"name": "style", "alias": "style", "path": "adapters/style.safetensors",
                       "metadata": {}}]  # fmt: skip
    body = {"prompt": "a cat <lora:style:0.7>, sitting", "steps": 2, "width": 32, "height": 32,
            "override_settings": {"sd_model_checkpoint": "draw"}}  # fmt: skip
    reply = httpx.post(f"{url}/sdapi/v1/txt2img", json=body)
    assert reply.status_code == 200, reply.text
    info = json.loads(reply.json()["info"])
    assert info["prompt"] == body["prompt"]  # as A1111 reports it, tags included
    assert info["extra_generation_params"] == {"Lora": "style:0.7", "Schedule type": "Automatic"}
    drawn = Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0])))
    assert json.loads(drawn.text["limner"])["prompt"] == "a cat , sitting"
