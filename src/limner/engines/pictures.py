"""Decoding the pictures requests and datasets carry: PNG, JPEG and WebP only, every failure
named for the user (which picture, and what is accepted), never a traceback."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator

from PIL import Image, UnidentifiedImageError

from limner import config
from limner.errors import InvalidImage, TooLarge

PICTURE_FORMATS = ("PNG", "JPEG", "WEBP")


def open_picture(data: bytes, what: str) -> Image.Image:
    """Decode one picture to RGB; `what` names it in errors ("picture 2", "the mask")."""
    with _decoding(what), Image.open(io.BytesIO(data), formats=PICTURE_FORMATS) as picture:
        picture.load()
        # Palette transparency must go through RGBA, or Pillow warns and guesses.
        if picture.mode == "P" and "transparency" in picture.info:
            return picture.convert("RGBA").convert("RGB")
        return picture.convert("RGB")


def check_picture(data: bytes, what: str) -> None:
    """Check that a picture decodes (its structure, without decoding every pixel) and that
    its size, read from the header, fits LIMNER_MAX_IMAGE_PIXELS."""
    limit = config.max_image_pixels()
    with _decoding(what), Image.open(io.BytesIO(data), formats=PICTURE_FORMATS) as picture:
        width, height = picture.size
        if width * height > limit:
            raise TooLarge(
                f"{what} is {width}x{height} = {width * height} pixels, over the limit of "
                f"{limit} (LIMNER_MAX_IMAGE_PIXELS); use a smaller picture"
            )
        picture.verify()


@contextlib.contextmanager
def _decoding(what: str) -> Iterator[None]:
    try:
        with warnings.catch_warnings():  # the pixel limit is LIMNER_MAX_IMAGE_PIXELS, checked here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except Image.DecompressionBombError as error:
        raise TooLarge(f"{what} is too large to decode: {error}") from error
    except UnidentifiedImageError as error:
        raise InvalidImage(f"{what} is not a PNG, JPEG or WebP file") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidImage(f"{what} could not be decoded: {error}") from error
