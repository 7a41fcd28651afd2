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
