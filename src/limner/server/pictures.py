"""Pictures arriving on the wire: strict base64, then checked before any model sees them.

Checks happen in the server process with Pillow: the format must be PNG, JPEG or WebP, the
pixel count (read from the header, before decoding) must fit LIMNER_MAX_IMAGE_PIXELS, and
the whole picture must decode, so a truncated file or a decompression bomb is a 4xx here,
never a crash in a runner.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image

from limner import config
from limner.errors import InvalidImage, TooLarge

FORMATS = {"PNG", "JPEG", "WEBP"}


def decode_base64(items: list[str], where: str) -> list[bytes]:
    check_count(len(items))
    pictures = []
    for number, item in enumerate(items, 1):
        try:
            pictures.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise InvalidImage(
                f"{where} picture {number} is not valid base64; send the file's bytes as "
                "standard base64, without a 'data:' prefix"
            ) from None
    return pictures


def check_count(count: int) -> None:
    """At most LIMNER_MAX_PICTURES pictures in one request, counted before any is decoded."""
    limit = config.max_pictures()
    if count > limit:
        raise TooLarge(
            f"the request carries {count} pictures; at most {limit} are accepted "
            "(LIMNER_MAX_PICTURES)"
        )


def check(data: bytes, label: str) -> Image.Image:
    """The decoded picture; InvalidImage or TooLarge unless `data` is a whole PNG, JPEG or
    WebP picture (format and pixel count read from the header before anything is decoded)."""
    limit = config.max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise InvalidImage(f"{label} is {image.format}; send a PNG, JPEG or WebP picture")
            width, height = image.size
            if width * height > limit:
                raise TooLarge(
                    f"{label} is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{limit} (LIMNER_MAX_IMAGE_PIXELS); send a smaller picture"
                )
            image.load()
            return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooLarge(
            f"{label} decodes to too many pixels (LIMNER_MAX_IMAGE_PIXELS={limit})"
        ) from None
    except (InvalidImage, TooLarge):
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        reason = (
            "truncated or corrupt"
            if "truncated" in str(exc) or image_opened(data)
            else "not a picture"
        )
        raise InvalidImage(f"{label} is {reason}; send a whole PNG, JPEG or WebP file") from None


def image_opened(data: bytes) -> bool:
    try:
        Image.open(io.BytesIO(data))
    except Exception:
        return False
    return True
