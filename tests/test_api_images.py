"""Drawing on /api/generate: Ollama's experimental shape plus limner's fields (fake engine)."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import httpx
import pytest
from PIL import Image

import limner
from helpers import add_fake, add_fake_draw, picture
from limner.store import Store


@pytest.fixture
def api(store: Store, server: Any, monkeypatch: pytest.MonkeyPatch) -> httpx.Client:
    monkeypatch.setenv("LIMNER_MAX_IMAGE_PIXELS", "4000000")
    add_fake_draw(store, "draw")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def mask_png(size: tuple[int, int], box: tuple[int, int, int, int]) -> bytes:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def test_preview_every_n_steps_puts_a_picture_of_the_work_in_progress_lines(
    api: httpx.Client,
) -> None:
    body = {"model": "draw", "prompt": "a fox", "width": 32, "height": 24, "steps": 5,
            "preview_every": 2}  # fmt: skip
    lines = [json.loads(line) for line in api.post("/api/generate", json=body).text.splitlines()]
    previews = {x["completed"]: x["preview"] for x in lines[:-1] if "preview" in x}
    assert sorted(previews) == [2, 4]  # not the last step: the picture itself follows
    assert all(
        Image.open(io.BytesIO(base64.b64decode(p))).size == (32, 24) for p in previews.values()
    )
    reply = api.post("/api/generate", json={**body, "preview_every": -1})
    assert reply.status_code == 400 and "preview_every" in reply.json()["error"]


def test_progress_lines_then_a_png(api: httpx.Client) -> None:
    reply = api.post(
        "/api/generate",
        json={"model": "draw", "prompt": "a red square", "width": 32, "height": 24, "steps": 3},
    )
    lines = [json.loads(line) for line in reply.text.splitlines()]
    assert [(x["completed"], x["total"]) for x in lines[:-1]] == [(1, 3), (2, 3), (3, 3)]
    assert all(x["done"] is False and x["response"] == "" for x in lines[:-1])
    last = lines[-1]
    assert last["done"] is True and last["done_reason"] == "stop"
    png = Image.open(io.BytesIO(base64.b64decode(last["image"])))
    assert png.format == "PNG" and png.size == (32, 24)
    assert last["parameters"]["model"] == "draw:latest" and len(last["parameters"]["digest"]) == 64


def test_stream_false_returns_only_the_final_object(api: httpx.Client) -> None:
    body = api.post(
        "/api/generate", json={"model": "draw", "prompt": "x", "stream": False, "steps": 2}
    ).json()
    assert body["done"] is True and body["image"] and body["completed"] == body["total"] == 2


def test_the_sdk_returns_png_bytes_with_parameters_and_reports_progress(api: httpx.Client) -> None:
    seen: list[tuple[int, int]] = []
    client = limner.Client(str(api.base_url))
    result = client.generate_image(
        "draw",
        "a cat",
        steps=2,
        seed=7,
        width=16,
        height=16,
        progress=lambda c, t: seen.append((c, t)),
    )
    assert seen == [(1, 2), (2, 2)]
    assert result.pil().size == (16, 16)
    assert result.parameters["seed"] == 7
    assert limner.read_parameters(result.png)["prompt"] == "a cat"


def test_inpainting_sends_the_picture_and_mask(api: httpx.Client) -> None:
    client = limner.Client(str(api.base_url))
    base = picture(size=(32, 32), color="blue")
    result = client.generate_image(
        "draw", "fill", image=base, mask=mask_png((32, 32), (0, 0, 16, 32)), steps=2
    )
    pixels = result.pil().convert("RGB")
    assert pixels.getpixel((31, 0)) == (0, 0, 255)  # black in the mask: kept
    assert pixels.getpixel((0, 0)) != (0, 0, 255)  # white: repainted


# fmt: off
BAD_DRAWINGS = [
    ({"width": 30, "height": 32}, 400, "multiples of 8"),
    ({"width": 8192, "height": 64}, 400, "<= 4096"),
    ({"width": 4096, "height": 4096}, 413, "LIMNER_MAX_IMAGE_PIXELS"),
    ({"steps": 151}, 400, "between 1 and 150"),
    ({"steps": -2}, 400, "between 1 and 150"),
    ({"strength": 1.5}, 400, "strength"),
    ({"images": [b64(picture())], "steps": 2, "strength": 0.2}, 400, "rounds to 0"),
    ({"mask": b64(mask_png((64, 48), (0, 0, 8, 8)))}, 400, "needs the picture"),
    ({"images": [b64(picture())], "mask": b64(mask_png((10, 10), (0, 0, 5, 5)))}, 400, "the mask is 10x10"),
    ({"images": [b64(b"not a picture")]}, 400, "not a picture"),
    ({"images": [b64(picture()), b64(picture())]}, 400, "one init picture"),
    ({"style_images": [b64(picture()[:50])]}, 400, "style picture 1"),
    ({"scheduler": "warp drive"}, 400, "unknown scheduler"),
    ({"seed": "lucky"}, 400, "seed"),
    ({"style_strength": 2}, 400, "style_strength"),
]
# fmt: on


@pytest.mark.parametrize(("fields", "status", "message"), BAD_DRAWINGS)
def test_bad_drawing_requests_are_refused_before_any_work(
    api: httpx.Client, store: Store, fields: dict[str, Any], status: int, message: str
) -> None:
    reply = api.post("/api/generate", json={"model": "draw", "prompt": "x", **fields})
    assert reply.status_code == status and message in reply.json()["error"]
    assert api.get("/api/ps").json()["models"] == []  # nothing was even loaded
    assert (
        api.post(
            "/api/generate", json={"model": "draw", "prompt": "ok", "stream": False, "steps": 1}
        ).status_code
        == 200
    )


def test_a_drawing_model_is_not_a_chat_model_and_back(api: httpx.Client, store: Store) -> None:
    add_fake(store, "chatty")
    reply = api.post(
        "/api/chat", json={"model": "draw", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert reply.status_code == 400 and "/api/generate" in reply.json()["error"]
    reply = api.post(
        "/api/generate", json={"model": "chatty", "prompt": "hi", "width": 64, "stream": False}
    )
    assert reply.status_code == 200 and reply.json()["response"].endswith(
        "hi"
    )  # size fields ignored


def test_disconnecting_stops_the_drawing_and_other_models_stay_reachable(
    store: Store, make_server: Any
) -> None:
    add_fake_draw(store, "slow", token_delay=0.3)
    add_fake(store, "chatty")
    server = make_server()
    with httpx.stream(
        "POST",
        f"{server.url}/api/generate",
        json={"model": "slow", "prompt": "SLOW", "steps": 100},
        timeout=30,
    ) as stream:
        lines = stream.iter_lines()
        assert json.loads(next(lines))["completed"] == 1
        started = time.monotonic()
        assert httpx.get(f"{server.url}/api/ps", timeout=5).status_code == 200
        chat = httpx.post(
            f"{server.url}/api/generate",
            json={"model": "chatty", "prompt": "hi", "stream": False},
            timeout=10,
        )
        assert chat.json()["response"].endswith("hi") and time.monotonic() - started < 5
    started = time.monotonic()
    reply = httpx.post(
        f"{server.url}/api/generate",
        json={"model": "slow", "prompt": "next", "steps": 1, "stream": False},
        timeout=30,
    )
    assert (
        reply.status_code == 200 and time.monotonic() - started < 3
    )  # not the 30 s left of the first


def test_the_official_ollama_client_draws_with_its_image_fields(api: httpx.Client) -> None:
    import ollama

    client = ollama.Client(host=str(api.base_url))
    final = client.generate(model="draw", prompt="a kite", width=24, height=16, steps=2)
    assert final.done and final.image is not None
    assert Image.open(io.BytesIO(base64.b64decode(final.image))).size == (24, 16)
    lines = list(client.generate(model="draw", prompt="a kite", steps=3, stream=True))
    assert [(x.completed, x.total) for x in lines[:-1]] == [(1, 3), (2, 3), (3, 3)]
    assert lines[-1].image is not None


def test_style_pictures_with_an_image_on_a_model_without_ip_adapter_are_refused_unloaded(
    api: httpx.Client, store: Store, server: Any, tmp_path: Any
) -> None:
    from helpers import add_tiny_sd

    add_tiny_sd(store, tmp_path)  # no IP-Adapter
    body = {"model": "sd", "prompt": "a house", "images": [b64(picture())],
            "style_images": [b64(picture())], "stream": False}  # fmt: skip
    reply = api.post("/api/generate", json=body)
    assert reply.status_code == 400 and "has no IP-Adapter" in reply.json()["error"]
    assert server.scheduler.loads == 0
