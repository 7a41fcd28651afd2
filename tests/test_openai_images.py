"""/v1/images/* through the official `openai` package (fake drawing engine at the seam)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from helpers import add_fake, add_fake_draw
from limner.store import Store


@pytest.fixture
def client(store: Store, server: Any) -> openai.OpenAI:
    add_fake_draw(store, "draw")
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def decoded(b64_json: str | None) -> Image.Image:
    assert b64_json is not None
    return Image.open(io.BytesIO(base64.b64decode(b64_json)))


def test_generations_answer_in_openais_shape(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="draw", prompt="a lighthouse", size="48x32", n=2, response_format="b64_json"
    )
    assert result.created > 0 and len(result.data) == 2
    assert all(decoded(item.b64_json).size == (48, 32) for item in result.data)


def test_edits_take_multipart_files_and_transparent_mask_pixels(
    client: openai.OpenAI, tmp_path: Path
) -> None:
    image, mask = tmp_path / "image.png", tmp_path / "mask.png"
    Image.new("RGB", (32, 32), "blue").save(image)
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    clear.paste((0, 0, 0, 0), (0, 0, 16, 32))  # left half transparent: edit it
    clear.save(mask)
    with image.open("rb") as picture, mask.open("rb") as area:
        result = client.images.edit(
            model="draw", image=picture, mask=area, prompt="a door", response_format="b64_json"
        )
    edited = decoded(result.data[0].b64_json).convert("RGB")
    assert edited.getpixel((31, 5)) == (0, 0, 255)  # opaque in the mask: kept
    assert edited.getpixel((2, 5)) != (0, 0, 255)


def test_edits_also_take_json_with_a_data_uri(store: Store, server: Any) -> None:
    add_fake_draw(store, "draw")
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "green").save(buffer, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    reply = httpx.post(
        f"{server.url}/v1/images/edits",
        json={"model": "draw", "prompt": "x", "image": uri, "steps": 2},
    )
    assert reply.status_code == 200 and decoded(reply.json()["data"][0]["b64_json"]).size == (
        16,
        16,
    )


def test_errors_come_in_openais_error_shape(client: openai.OpenAI, store: Store) -> None:
    add_fake(store, "chatty")
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"model": "nothere", "prompt": "x"}, openai.NotFoundError, "not found"),
        (
            {"model": "draw", "prompt": "x", "size": "50x50"},
            openai.BadRequestError,
            "multiples of 8",
        ),
        (
            {"model": "draw", "prompt": "x", "response_format": "url"},
            openai.BadRequestError,
            "b64_json",
        ),
        ({"model": "chatty", "prompt": "x"}, openai.BadRequestError, "does not draw"),
        ({"model": "draw", "prompt": "x", "n": 50}, openai.BadRequestError, "n must be"),
        (
            {"model": "draw", "prompt": "x", "extra_body": {"seed": "5"}},
            openai.BadRequestError,
            "'seed' must be an integer",
        ),
    ]
    for fields, error, text in cases:
        with pytest.raises(error) as caught:
            client.images.generate(**fields)
        body = caught.value.body
        assert (
            isinstance(body, dict)
            and text in body["message"]
            and body["type"] in ("invalid_request_error", "not_found_error")
        )


def test_n_pictures_from_the_last_seed_wrap_round_to_seed_0(client: openai.OpenAI) -> None:
    last = 2**64 - 1
    result = client.images.generate(model="draw", prompt="a lighthouse", size="48x32", n=2,
                                    extra_body={"seed": last})  # fmt: skip
    seeds = [json.loads(decoded(item.b64_json).info["limner"])["seed"] for item in result.data]
    assert seeds == [last, 0]
