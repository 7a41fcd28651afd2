"""The one pictures module: every form a picture arrives in, the formats and limits, and the
decompression-bomb rule, the same for the server, the engines and the CLI."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from PIL import Image

from limner import pictures
from limner.errors import InvalidImage, InvalidRequest, TooLarge


def encoded(fmt: str = "PNG", size: tuple[int, int] = (32, 24), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "red").save(buffer, format=fmt)
    return buffer.getvalue()


def test_base64_is_strict_and_data_uris_are_read_only_where_asked() -> None:
    png = encoded()
    text = base64.b64encode(png).decode()
    assert pictures.from_base64(text, "picture 1") == png
    assert pictures.from_base64(f"data:image/png;base64,{text}", "init", data_uri=True) == png
    with pytest.raises(InvalidImage, match="picture 1 is not valid base64"):
        pictures.from_base64(f"data:image/png;base64,{text}", "picture 1")
    with pytest.raises(InvalidImage, match="not valid base64"):
        pictures.from_base64(text[:-3] + "!!!", "picture 1")


def test_a_url_is_never_fetched_only_a_data_uri_is_read() -> None:
    text = base64.b64encode(encoded("WEBP")).decode()
    assert pictures.from_url(f"data:image/webp;base64,{text}", "part 1") == encoded("WEBP")
    with pytest.raises(InvalidRequest, match="limner fetches nothing"):
        pictures.from_url("https://example.com/cat.png", "part 1")
    with pytest.raises(InvalidImage, match="data:image/png, jpeg or webp base64 URI"):
        pictures.from_url("cat.png", "part 1")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_are_pictures(fmt: str) -> None:
    data = encoded(fmt)
    assert pictures.check(data, "picture").size == (32, 24)
    assert pictures.open_rgb(data, "picture").mode == "RGB"
    pictures.check_header(data, "picture")
    assert pictures.looks_like_picture(data)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_are_refused_without_another_decoder_parsing_them(fmt: str) -> None:
    data = encoded(fmt, mode="RGB" if fmt != "GIF" else "P")
    for read in (pictures.check, pictures.open_rgb, pictures.check_header):
        with pytest.raises(InvalidImage, match="is not a PNG, JPEG or WebP picture"):
            read(data, "picture 2")
    assert not pictures.looks_like_picture(data)


def test_a_truncated_file_is_refused_as_truncated() -> None:
    with pytest.raises(InvalidImage, match="picture 1 is truncated or corrupt"):
        pictures.check(encoded(size=(300, 300))[:200], "picture 1")


def test_the_pixel_limit_is_read_from_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMNER_MAX_IMAGE_PIXELS", "500")
    for read in (pictures.check, pictures.open_rgb, pictures.check_header):
        with pytest.raises(TooLarge, match="32x24 = 768 pixels, over the limit of 500"):
            read(encoded(), "the mask")


def test_a_thin_strip_is_refused_from_its_header_before_any_processor_scales_it() -> None:
    strip = encoded(size=(100_000, 1))  # a few hundred bytes; 33.6M x 336 px once scaled
    assert len(strip) < 1000
    for read in (pictures.check, pictures.open_rgb, pictures.check_header, pictures.upright):
        with pytest.raises(InvalidImage, match="100000x1, more than 20 times longer"):
            read(strip, "picture 1")
    for shape in ((20, 1), (1, 20), (4096, 512)):
        pictures.check(encoded(size=shape), "picture 1")  # panoramas within the bound pass


def test_pillows_bomb_warning_is_a_bomb_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow warns past MAX_IMAGE_PIXELS and fails past twice that: both are refusals.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak out as a warning either
        for read in (pictures.check, pictures.open_rgb, pictures.check_header):
            with pytest.raises(TooLarge, match="decodes to too many pixels"):
                read(encoded(), "picture 3")


def test_a_request_carries_at_most_the_picture_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMNER_MAX_PICTURES", "2")
    text = base64.b64encode(encoded()).decode()
    assert len(pictures.decode_base64([text, text], "message 1")) == 2
    with pytest.raises(TooLarge, match="carries 3 pictures; at most 2"):
        pictures.decode_base64([text] * 3, "message 1")


def test_a_file_is_told_by_its_first_bytes_not_its_name(tmp_path: Path) -> None:
    real = tmp_path / "photo.txt"
    real.write_bytes(encoded("JPEG"))
    assert pictures.read_file(real) == encoded("JPEG")
    fake = tmp_path / "fake.png"
    fake.write_text("hello")
    with pytest.raises(InvalidImage, match="is not a PNG, JPEG or WebP picture"):
        pictures.read_file(fake)


def test_encoding_a_picture_does_not_load_pillow() -> None:
    code = (
        "import sys; from limner import pictures; pictures.encode(b'x'); "
        "print('PIL' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def mpo(first: str = "red", second: str = "blue") -> bytes:
    """A multi-picture JPEG, as phones and cameras write them."""
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (32, 24), first), Image.new("RGB", (32, 24), second)]
    frames[0].save(buffer, format="MPO", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def turned_jpeg(orientation: int = 6) -> bytes:
    """A 32x24 JPEG, left half red, whose EXIF says the camera was turned."""
    picture = Image.new("RGB", (32, 24), "blue")
    picture.paste("red", (0, 0, 16, 24))
    exif = Image.Exif()
    exif[pictures.ORIENTATION] = orientation
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


def test_an_mpo_is_read_as_its_first_picture() -> None:
    data = mpo()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert pictures.check(data, "picture 1").getpixel((5, 5))[0] > 200  # red, the first
    fixed = Image.open(io.BytesIO(pictures.upright(data, "picture 1")))
    assert fixed.format == "PNG" and fixed.size == (32, 24) and fixed.getpixel((5, 5))[0] > 200
    assert pictures.open_rgb(data, "picture 1").getpixel((5, 5))[0] > 200


def test_a_turned_jpeg_is_seen_upright_and_others_pass_unchanged() -> None:
    data = turned_jpeg(6)  # the camera turned 90 degrees: the picture stands 24x32
    for seen in (pictures.check(data, "p"), pictures.open_rgb(data, "p"),
                 Image.open(io.BytesIO(pictures.upright(data, "p")))):  # fmt: skip
        assert seen.size == (24, 32)
        assert seen.getpixel((12, 5))[0] > 200 and seen.getpixel((12, 28))[2] > 200  # red on top
    plain = encoded("JPEG")
    assert pictures.upright(plain, "p") is plain  # nothing to turn: the bytes as sent
    assert pictures.upright(turned_jpeg(1), "p") == turned_jpeg(1)


def test_the_server_hands_engines_upright_single_pictures(server: object, store: object) -> None:
    import httpx

    from helpers import add_fake, add_fake_draw

    add_fake(store, "fake")  # type: ignore[arg-type]
    add_fake_draw(store, "draw")  # type: ignore[arg-type]
    url = server.url  # type: ignore[attr-defined]
    turned = base64.b64encode(turned_jpeg(6)).decode()
    drawn = httpx.post(f"{url}/api/generate", json={
        "model": "draw", "prompt": "a cat", "images": [turned], "stream": False,
    }).json()  # fmt: skip
    assert Image.open(io.BytesIO(base64.b64decode(drawn["image"]))).size == (24, 32)
    strip = {"role": "user", "content": "hi", "images": [base64.b64encode(encoded(
        size=(100_000, 1))).decode()]}  # fmt: skip
    refused = httpx.post(f"{url}/api/chat", json={"model": "fake", "messages": [strip]})
    assert refused.status_code == 400 and "100000x1" in refused.json()["error"]
    ask = {"role": "user", "content": "hi", "images": [base64.b64encode(mpo()).decode()]}
    seen = httpx.post(f"{url}/api/chat", json={"model": "fake", "messages": [ask], "stream": False})
    assert seen.status_code == 200 and seen.json()["message"]["content"].startswith("I see 1")
