"""Hostile pictures (docs/reliability.md §6 IMG-01..05, IMG-07..09): bad base64, files that are
not pictures, truncated files, decompression bombs, degenerate sizes, too many pictures and
bad masks. Each gets a 4xx that leaks nothing, checked from the header before any decoding
where it can be, or is served; never a 5xx, never a crashed runner."""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from helpers import picture
from security.hostile import Served, assert_alive, assert_refused, send, served

__all__ = ["served"]  # the module-wide server fixture


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def noise(fmt: str, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    """A picture of random pixels: it compresses badly, so every cut lands in pixel data."""
    rng = random.Random(0)
    image = Image.frombytes(mode, size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * len(mode))))  # fmt: skip
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


INIT = b64(picture(size=(64, 64)))

# Where a picture goes: a function from the base64 text to (path, body).
PLACES: dict[str, Callable[[str], tuple[str, dict[str, Any]]]] = {
    "chat": lambda pic: ("/api/chat", {"model": "chat", "stream": False, "messages": [
        {"role": "user", "content": "what is this?", "images": [pic]}]}),
    "generate": lambda pic: ("/api/generate", {"model": "chat", "prompt": "what is this?",
                                               "images": [pic], "stream": False}),
    "img2img": lambda pic: ("/api/generate", {"model": "draw", "prompt": "a cat", "images": [pic],
                                              "steps": 2, "stream": False}),
    "inpaint": lambda pic: ("/api/generate", {"model": "draw", "prompt": "a cat", "images": [INIT],
                                              "mask": pic, "steps": 2, "stream": False}),
    "style": lambda pic: ("/api/generate", {"model": "draw", "prompt": "a cat", "steps": 2,
                                            "style_images": [pic], "stream": False}),
}  # fmt: skip


def post(served: Served, place: str, encoded: str) -> httpx.Response:
    path, body = PLACES[place](encoded)
    return send(served, "POST", path, body)


# --- IMG-01: invalid base64 ---------------------------------------------------------------

PNG_TEXT = b64(picture())
BAD_BASE64 = {
    "bad alphabet": "!!!!" + PNG_TEXT[4:],
    "bad padding": PNG_TEXT + "=",
    "missing padding": PNG_TEXT.rstrip("=")[:-1],
    "url-safe alphabet": base64.urlsafe_b64encode(b"\xfb\xff" * 300).decode(),
    "embedded newlines": "\n".join(PNG_TEXT[i : i + 76] for i in range(0, len(PNG_TEXT), 76)),
    "a data: URI": "data:image/png;base64," + PNG_TEXT,
    "non-ASCII": "\u00e9" + PNG_TEXT[1:],
    "only padding": "====",
}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("encoding", BAD_BASE64)
def test_invalid_base64_gets_400_invalid_image_encoding(
    served: Served, place: str, encoding: str
) -> None:
    message = assert_refused(post(served, place, BAD_BASE64[encoding]), range(400, 401))
    assert "base64" in message


def test_an_empty_picture_gets_400(served: Served) -> None:
    message = assert_refused(post(served, "chat", ""), range(400, 401))
    assert "picture" in message


# --- IMG-02: payloads that are not pictures -------------------------------------------------


def _gif(frames: int, size: tuple[int, int] = (8, 8)) -> bytes:
    images = [Image.new("P", size, i % 256) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


NOT_PICTURES = {
    "text": b"just some words, not a picture at all",
    "PDF": b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF",
    "GGUF header": b"GGUF\x03\x00\x00\x00" + b"\x00" * 16,
    "HTML": b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
    "random bytes": random.Random(1).randbytes(4096),
    "SVG": b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
    "BMP (not allowed)": picture("BMP"),
    "TIFF (not allowed)": picture("TIFF"),
    "GIF (not allowed)": _gif(1),
}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("payload", NOT_PICTURES)
def test_a_payload_that_is_not_a_png_jpeg_or_webp_gets_400(
    served: Served, place: str, payload: str
) -> None:
    message = assert_refused(post(served, place, b64(NOT_PICTURES[payload])), range(400, 401))
    assert "PNG, JPEG or WebP" in message


# --- IMG-03: truncated pictures -----------------------------------------------------------


@pytest.mark.parametrize("place", ["chat", "img2img"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("kept", [0.10, 0.50, 0.99])
def test_a_truncated_picture_gets_400_and_pillow_stays_strict(
    served: Served, place: str, fmt: str, kept: float
) -> None:
    whole = noise(fmt)
    cut = whole[: int(len(whole) * kept)]
    message = assert_refused(post(served, place, b64(cut)), range(400, 401))
    assert "truncated" in message or "not a picture" in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never flipped for the whole process


def test_the_uncut_noise_pictures_are_accepted(served: Served) -> None:
    for fmt in ("PNG", "JPEG", "WEBP"):
        assert post(served, "chat", b64(noise(fmt))).status_code == 200


# --- IMG-04: decompression bombs ----------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, extra: bytes = b"") -> bytes:
    """A few hundred bytes of PNG whose header declares width x height RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 1024)  # far fewer pixels than declared
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra + _chunk(b"IDAT", rows)
            + _chunk(b"IEND", b""))  # fmt: skip


def _text_bomb(kind: bytes) -> bytes:
    """A PNG with a small chunk that inflates to 256 MB of text or colour profile."""
    inflated = zlib.compress(b"\x00" * (256 << 20), 9)
    payload = b"Comment\x00\x00" + inflated if kind == b"zTXt" else b"icc\x00\x00" + inflated
    return png_declaring(64, 64, _chunk(kind, payload))


BOMBS = {
    "50k x 50k pixels": (png_declaring(50_000, 50_000), 413),
    "1 x 60M strip": (png_declaring(1, 60_000_000), 413),
    "huge zTXt": (_text_bomb(b"zTXt"), 400),
    "huge iCCP": (_text_bomb(b"iCCP"), 400),
    "1000-frame GIF": (_gif(1000), 400),
    "50k x 50k JPEG header": (noise("JPEG").replace(b"\xff\xc0\x00\x11\x08\x00\x40\x00\x40",
                                                    b"\xff\xc0\x00\x11\x08\xc3\x50\xc3\x50"), 413),
}  # fmt: skip


@pytest.mark.parametrize("place", ["chat", "img2img"])
@pytest.mark.parametrize("bomb", BOMBS)
def test_a_decompression_bomb_is_refused_from_its_header_quickly(
    served: Served, place: str, bomb: str
) -> None:
    data, status = BOMBS[bomb]
    started = time.monotonic()
    reply = post(served, place, b64(data))
    elapsed = time.monotonic() - started
    assert_refused(reply, range(status, status + 1) if status == 413 else range(400, 500))
    assert elapsed < 2.0, f"took {elapsed:.1f} s: it was decoded, not refused from its header"
    assert_alive(served.url)


def test_the_jpeg_bomb_really_declares_50k_by_50k() -> None:
    with pytest.raises(Image.DecompressionBombError, match="2500000000 pixels"):
        Image.open(io.BytesIO(BOMBS["50k x 50k JPEG header"][0]))


# --- IMG-05: degenerate sizes ---------------------------------------------------------------


@pytest.mark.parametrize("place", ["chat", "img2img", "style"])
@pytest.mark.parametrize("size", [(1, 1), (1, 4096), (4096, 1), (4097, 8)])
def test_a_degenerate_picture_is_served_or_refused_never_a_crash(
    served: Served, place: str, size: tuple[int, int]
) -> None:
    reply = post(served, place, b64(picture(size=size)))
    if reply.status_code != 200:
        assert_refused(reply)
    else:
        assert reply.json()["done"] is True
    # The runner survived: the next ordinary request is served.
    assert post(served, place, INIT).status_code == 200


# --- IMG-07: how many pictures -------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, "limit", "limit+1", 1000])
def test_pictures_above_the_limit_get_413_before_decoding(
    served: Served, count: int | str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMNER_MAX_PICTURES", "4")
    number = {"limit": 4, "limit+1": 5}.get(str(count), count)
    assert isinstance(number, int)
    body = {"model": "chat", "stream": False, "messages": [
        {"role": "user", "content": "count", "images": [PNG_TEXT] * number}]}  # fmt: skip
    reply = send(served, "POST", "/api/chat", body)
    if number <= 4:
        assert reply.status_code == 200
        assert f"I see {number} picture" in reply.json()["message"]["content"]
    else:
        assert "LIMNER_MAX_PICTURES" in assert_refused(reply, range(413, 414))


# --- IMG-08: bad masks ----------------------------------------------------------------------


def _mask(mode: str, size: tuple[int, int] = (64, 64), fill: Any = 255) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, fill).save(buffer, format="PNG")
    return buffer.getvalue()


def _gradient() -> bytes:
    image = Image.linear_gradient("L").resize((64, 64))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


MASKS = {
    "another size": (_mask("L", (32, 32)), 400),
    "RGBA with alpha": (_mask("RGBA", fill=(255, 255, 255, 0)), 200),
    "16-bit": (_mask("I;16", fill=65535), 200),
    "palette": (_mask("P", fill=1), 200),
    "not binary": (_gradient(), 200),
    "all black": (_mask("L", fill=0), 200),
    "all white": (_mask("L", fill=255), 200),
    "1x1": (_mask("L", (1, 1)), 400),
}


@pytest.mark.parametrize("mask", MASKS)
def test_a_bad_mask_follows_the_documented_rule_or_gets_400(served: Served, mask: str) -> None:
    data, status = MASKS[mask]
    reply = post(served, "inpaint", b64(data))
    if status == 400:
        assert "mask" in assert_refused(reply, range(400, 401))
    else:
        assert reply.status_code == 200, reply.text[:300]
        drawn = Image.open(io.BytesIO(base64.b64decode(reply.json()["image"])))
        assert drawn.size == (64, 64)


def test_a_mask_without_a_picture_gets_400(served: Served) -> None:
    body = {"model": "draw", "prompt": "a cat", "mask": b64(_mask("L")), "stream": False}
    assert "mask" in assert_refused(send(served, "POST", "/api/generate", body), range(400, 401))


# --- the OpenAI edits endpoint takes files too ---------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"not a picture", noise("PNG")[:500], png_declaring(50_000, 50_000)],
    ids=["empty", "text", "truncated", "bomb"],
)  # fmt: skip
def test_openai_edits_refuse_bad_uploads_without_leaking(served: Served, data: bytes) -> None:
    reply = httpx.post(served.url + "/v1/images/edits", timeout=30,
                       data={"model": "draw", "prompt": "a cat"},
                       files={"image": ("x.png", data, "image/png")})  # fmt: skip
    assert_refused(reply)
    assert json.dumps(reply.json()).count("error") >= 1


def test_pillow_keeps_its_own_text_chunk_limits() -> None:
    assert PngImagePlugin.MAX_TEXT_CHUNK <= 1 << 20 and ImageFile.LOAD_TRUNCATED_IMAGES is False
