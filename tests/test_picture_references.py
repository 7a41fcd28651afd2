"""Pictures by reference: a picture uploaded once with POST /api/blobs is named by its digest
wherever base64 may go (chat, generate, drawing, OpenAI's image_url, Automatic1111), the SDK
does this by itself when the server says it can, and uploaded pictures no model uses are
removed once idle for LIMNER_PICTURE_KEEP."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import time
from typing import Any

import httpx
import ollama
import openai
from PIL import Image

from helpers import add_fake, add_fake_draw, add_model, picture
from limner import Client
from limner.store import Store


def upload(url: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.post(f"{url}/api/blobs/{digest}", content=data).status_code == 201
    return digest


def noise(side: int = 600) -> bytes:
    """A PNG of about a megabyte that does not compress."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def test_every_path_takes_a_digest_where_a_picture_goes(server: Any, store: Store) -> None:
    add_fake(store, "fake")
    add_fake_draw(store, "draw")
    digest = upload(server.url, picture())
    ask = {"role": "user", "content": "hi", "images": [digest]}
    reply = httpx.post(
        f"{server.url}/api/chat", json={"model": "fake", "messages": [ask], "stream": False}
    )
    assert reply.json()["message"]["content"].startswith("I see 1 picture(s).")

    answer = httpx.post(
        f"{server.url}/api/generate",
        json={
            "model": "fake",
            "prompt": "hi",
            "images": [digest],
            "stream": False,
        },
    ).json()  # fmt: skip  (the ollama package checks that a picture is base64: not through it)
    assert answer["response"].startswith("I see 1 picture(s).")

    drawn = httpx.post(f"{server.url}/api/generate", json={
        "model": "draw", "prompt": "a cat", "images": [digest], "stream": False, "width": 64, "height": 48,
    }).json()  # fmt: skip
    assert Image.open(io.BytesIO(base64.b64decode(drawn["image"]))).size == (64, 48)

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    parts: Any = [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": digest}},
    ]
    completion = client.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": parts}]
    )
    assert (completion.choices[0].message.content or "").startswith("I see 1 picture(s).")

    a1111 = httpx.post(f"{server.url}/sdapi/v1/img2img", json={
        "init_images": [digest], "prompt": "a cat", "width": 64, "height": 48, "steps": 2,
        "override_settings": {"sd_model_checkpoint": "draw"},
    })  # fmt: skip
    assert a1111.status_code == 200, a1111.text


def test_a_digest_that_names_no_uploaded_picture_is_a_400(server: Any, store: Store) -> None:
    add_fake(store, "fake")
    unknown = "sha256:" + "0" * 64
    not_a_picture = upload(server.url, b"these bytes are not a picture file")
    said = {}
    for digest in (unknown, not_a_picture):
        ask = {"role": "user", "content": "hi", "images": [digest]}
        reply = httpx.post(f"{server.url}/api/chat", json={"model": "fake", "messages": [ask]})
        assert reply.status_code == 400
        said[digest] = reply.json()["error"]
    assert (
        f"no uploaded picture {unknown}; upload it first with POST /api/blobs/{unknown}"
        in said[unknown]
    )
    assert f"blob {not_a_picture} is not a PNG, JPEG or WebP file" in said[not_a_picture]


def test_the_sdk_sends_a_picture_once_in_a_five_turn_chat(server: Any, store: Store) -> None:
    add_fake(store, "fake")
    sent: list[int] = []

    def count(request: httpx.Request) -> None:
        sent.append(len(request.read()))

    photo = noise()
    assert len(photo) > 1_000_000
    client = Client(server.url, event_hooks={"request": [count]})
    messages: list[dict[str, Any]] = []
    for turn in range(5):
        messages.append({"role": "user", "content": f"turn {turn}", "images": [photo]})
        reply = client.chat("fake", messages)
        assert reply.message.content.startswith(f"I see {turn + 1} picture(s).")  # type: ignore[union-attr]
        messages.append(reply.message.model_dump(exclude_none=True))  # type: ignore[union-attr]
    assert len(photo) < sum(sent) < len(photo) + 20_000  # once, and 5 small bodies
    # Base64 in every turn, as the server's own clients without references send it, would be:
    assert sum(len(base64.b64encode(photo)) * n for n in range(1, 6)) > 15 * len(photo)


def test_the_server_says_it_takes_references(server: Any) -> None:
    assert "picture-references" in httpx.get(f"{server.url}/api/version").json()["features"]


def test_idle_uploaded_pictures_go_and_everything_else_stays(store: Store) -> None:
    old, fresh, used = picture(color="red"), picture(color="blue"), picture(color="green")
    digests = {name: store.blobs.write_bytes(data)[0] for name, data in
               [("old", old), ("fresh", fresh), ("used", used), ("file", b"model weights")]}  # fmt: skip
    fake = json.dumps({"model_type": "limner-fake"}).encode()
    add_model(store, "keeps", {"config.json": fake, "picture.png": used})
    long_ago = time.time() - 3600
    for name in ("old", "used", "file"):
        os.utime(store.blobs.path(digests[name]), (long_ago, long_ago))
    assert store.uploaded_picture(digests["fresh"]) is not None  # named by a request just now
    assert store.prune_idle_pictures(idle_seconds=600) == [digests["old"]]
    assert all(store.blobs.exists(digests[n]) for n in ("fresh", "used", "file"))
    assert store.uploaded_picture(digests["old"]) is None


def test_the_official_client_still_sends_base64(server: Any, store: Store) -> None:
    add_fake(store, "fake")
    reply = ollama.Client(host=server.url).chat(
        model="fake", messages=[{"role": "user", "content": "hi", "images": [picture()]}]
    )
    assert reply.message.content.startswith("I see 1 picture(s).")
