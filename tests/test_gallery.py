"""The gallery: every picture the server draws is kept beside the store with its parameters,
listed newest first in pages, fetched and deleted by id, trimmed to LIMNER_GALLERY_KEEP."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import add_fake_draw
from limner.client import Client
from limner.errors import InvalidRequest, NotFound
from limner.store import Store
from limner.store.gallery import Gallery


@pytest.fixture
def sdk(store: Store, server: Any) -> Client:
    add_fake_draw(store, "draw")
    return Client(server.url)


def test_every_drawing_is_kept_with_its_parameters_newest_first(sdk: Client, store: Store) -> None:
    drawn = [sdk.generate_image("draw", f"a fox {n}", width=32, height=32, seed=n)
             for n in range(3)]  # fmt: skip
    assert all(each.picture_id for each in drawn)
    page = sdk.gallery()
    assert [p.id for p in page.pictures] == [each.picture_id for each in reversed(drawn)]
    assert page.next is None
    newest = page.pictures[0]
    assert newest.parameters["prompt"] == "a fox 2" and newest.parameters["seed"] == 2
    kept = sdk.gallery_picture(newest.id)
    assert kept.png == drawn[2].png and kept.parameters["seed"] == 2
    assert (store.root.parent / "gallery" / f"{newest.id}.png").is_file()


def test_pages_go_back_in_time_and_a_deleted_picture_is_gone(sdk: Client) -> None:
    ids = [sdk.generate_image("draw", "a fox", width=32, height=32).picture_id for _ in range(3)]
    first = sdk.gallery(limit=2)
    assert [p.id for p in first.pictures] == [ids[2], ids[1]] and first.next == ids[1]
    older = sdk.gallery(limit=2, before=first.next)
    assert [p.id for p in older.pictures] == [ids[0]] and older.next is None
    sdk.delete_picture(ids[1])
    assert [p.id for p in sdk.gallery().pictures] == [ids[2], ids[0]]
    with pytest.raises(NotFound, match="not found in the gallery"):
        sdk.gallery_picture(ids[1])
    with pytest.raises(NotFound):
        sdk.delete_picture(ids[1])


def test_a_thumbnail_is_a_small_jpeg_of_the_picture_made_once_and_deleted_with_it(
    sdk: Client, store: Store
) -> None:
    from PIL import Image

    drawn = sdk.generate_image("draw", "a fox", width=512, height=128, steps=1)
    picture_id = drawn.picture_id or ""
    listed = sdk.gallery().pictures[0]
    assert listed.thumbnail == f"/api/gallery/{picture_id}/thumbnail"
    small = Image.open(io.BytesIO(sdk.gallery_thumbnail(picture_id)))
    assert small.format == "JPEG" and small.size == (256, 64)
    big = Image.open(io.BytesIO(drawn.png)).convert("RGB").resize((256, 64))
    assert _mean_difference(small, big) < 8  # the same picture, smaller
    kept = store.root.parent / "gallery" / f"{picture_id}.thumb.jpg"
    made = kept.stat().st_mtime_ns
    assert sdk.gallery_thumbnail(picture_id) and kept.stat().st_mtime_ns == made
    sdk.delete_picture(picture_id)
    assert not kept.exists()
    with pytest.raises(NotFound):
        sdk.gallery_thumbnail(picture_id)


def _mean_difference(a: Any, b: Any) -> float:
    import numpy as np

    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean())


def test_other_apis_drawings_are_kept_too(sdk: Client, server: Any) -> None:
    body = {"prompt": "a lighthouse", "width": 32, "height": 32, "steps": 2, "batch_size": 2}
    assert httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=30).status_code == 200
    openai = {"model": "draw", "prompt": "a boat", "size": "32x32"}
    assert httpx.post(f"{server.url}/v1/images/generations", json=openai).status_code == 200
    prompts = [p.parameters["prompt"] for p in sdk.gallery().pictures]
    assert prompts == ["a boat", "a lighthouse", "a lighthouse"]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "x", "20261204-103000123456-XYZ", "%2e%2e"])
def test_an_id_that_is_not_a_gallery_id_is_a_400(sdk: Client, server: Any, bad: str) -> None:
    reply = httpx.get(f"{server.url}/api/gallery/{bad}")
    assert reply.status_code in (400, 404) and "error" in reply.json()
    listed = httpx.get(f"{server.url}/api/gallery", params={"before": bad})
    assert listed.status_code == 400 and "not a gallery id" in listed.json()["error"]
    assert httpx.get(f"{server.url}/api/gallery", params={"limit": "lots"}).status_code == 400


def test_the_gallery_keeps_the_newest_it_may(tmp_path: Path) -> None:
    gallery = Gallery(tmp_path / "gallery", keep=2)
    ids = [gallery.add(b"png %d" % n, {"n": n}) for n in range(4)]
    assert [p.id for p in gallery.pictures()] == [ids[3], ids[2]]
    assert sorted(path.name for path in (tmp_path / "gallery").iterdir()) == sorted(
        f"{each}.{kind}" for each in ids[2:] for kind in ("png", "json")
    )
    assert Gallery(tmp_path / "none", keep=0).add(b"png", {}) is None
    assert not (tmp_path / "none").exists()
    with pytest.raises(InvalidRequest, match="limit must be between 1 and 200"):
        gallery.pictures(limit=0)


def test_a_drawing_still_arrives_when_the_gallery_keeps_nothing(
    store: Store, make_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMNER_GALLERY_KEEP", "0")
    add_fake_draw(store, "draw")
    server = make_server()
    reply = httpx.post(f"{server.url}/api/generate", json={
        "model": "draw", "prompt": "a fox", "width": 32, "height": 32, "stream": False,
    }, timeout=30).json()  # fmt: skip
    assert base64.b64decode(reply["image"]) and "picture_id" not in reply
    assert httpx.get(f"{server.url}/api/gallery").json() == {"pictures": []}
