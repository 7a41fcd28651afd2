"""Pictures: the one module that decodes them and holds their rules.

A picture is a PNG, JPEG or WebP file. It arrives as strict base64 (Ollama), as a `data:`
URI (OpenAI, Automatic1111), as bytes (a training set), as a file (the CLI), or, wherever
base64 or a URI may be, as `sha256:<digest>` of a blob uploaded before with POST
/api/blobs (limner's own: the SDK sends a picture once per conversation). Limits:
LIMNER_MAX_PICTURES per request, counted before any is decoded; LIMNER_MAX_IMAGE_PIXELS per
picture and MAX_ASPECT for its shape, read from the header before any pixel is; and Pillow's
decompression-bomb warning is a bomb like its error, everywhere. Every failure names the
picture and what to send.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import re
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from limner import config
from limner.errors import InvalidImage, InvalidRequest, TooLarge

if TYPE_CHECKING:  # Pillow loads on the first decode: the CLI and the SDK only encode
    from PIL import Image

# Pillow's decoders a picture may reach. An MPO (a JPEG with more pictures after the first, as
# phones and cameras write) opens through the JPEG one, and is read as the JPEG it starts with.
FORMATS = ("PNG", "JPEG", "WEBP")
ORIENTATION = 0x0112  # the EXIF tag that says how the camera was held
SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
REFERENCE = re.compile(r"sha256[:-]([0-9a-f]{64})")
# The uploaded blob a digest names (None: not uploaded), set by the server for each request.
uploaded: ContextVar[Callable[[str], Path | None] | None] = ContextVar("uploaded", default=None)
MAX_FILE_BYTES = 100 * 1000 * 1000  # Ollama's limit for one picture file
# Vision processors scale the short side up to their size and keep the shape, so a thin strip
# (100000x1) becomes gigabytes of pixels; past this many times longer than wide it is refused.
MAX_ASPECT = 20
THUMBNAIL_SIDE = 256  # a gallery tile: small enough that a page of 50 loads at once on a phone
DATA_URI = re.compile(r"data:(?:image/[a-z0-9.+-]+)?;base64,(.*)", re.S | re.I)
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


# --- what arrives: base64, data: URIs, files ------------------------------------------------


def from_base64(text: str, label: str, data_uri: bool = False) -> bytes:
    """The bytes of strict base64 (and, with `data_uri`, of a `data:image/...;base64,` URI),
    or of the uploaded picture a `sha256:` reference names."""
    reference = REFERENCE.fullmatch(text.strip())
    if reference:
        return _uploaded(reference.group(1), label)
    if data_uri:
        match = DATA_URI.fullmatch(text.strip())
        text = match.group(1) if match else text
    try:
        return base64.b64decode(text.strip() if data_uri else text, validate=True)
    except (binascii.Error, ValueError):
        how = "a data: URI or base64" if data_uri else "the file's bytes as standard base64"
        raise InvalidImage(f"{label} is not valid base64; send {how}") from None


def from_url(url: str, label: str) -> bytes:
    """The bytes of a picture given where a URL may be: only `data:` URIs, never a fetch."""
    if url.lower().startswith(("http://", "https://")):
        raise InvalidRequest(
            f"{label}: picture URLs are not supported (limner fetches nothing); send the "
            "picture as a data: URI, data:image/png;base64,..."
        )
    if DATA_URI.fullmatch(url.strip()) is None and not REFERENCE.fullmatch(url.strip()):
        raise InvalidImage(f"{label} must be a data:image/png, jpeg or webp base64 URI")
    return from_base64(url, label, data_uri=True)


def _uploaded(digest: str, label: str) -> bytes:
    """The picture uploaded as blob sha256:`digest`; a 400 if there is none, or if the blob
    is not a picture file (a model's weights are not read as one)."""
    find = uploaded.get()
    path = find(f"sha256:{digest}") if find else None
    if path is None:
        raise InvalidImage(
            f"{label}: no uploaded picture sha256:{digest}; upload it first with "
            f"POST /api/blobs/sha256:{digest}, or send the picture as base64"
        )
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(16)
        if not looks_like_picture(head) or size > MAX_FILE_BYTES:
            raise InvalidImage(f"{label}: blob sha256:{digest} is not a PNG, JPEG or WebP file")
        return head + f.read()


def decode_base64(items: list[str], where: str) -> list[bytes]:
    """A request's base64 pictures, counted against the limit before any is decoded."""
    check_count(len(items))
    return [from_base64(item, f"{where} picture {n}") for n, item in enumerate(items, 1)]


def read_file(path: Path) -> bytes:
    """The bytes of a PNG, JPEG or WebP file, told by its first bytes, before sending it."""
    if path.stat().st_size > MAX_FILE_BYTES:
        raise TooLarge(f"picture '{path}' is larger than {MAX_FILE_BYTES // 1000**2} MB")
    data = path.read_bytes()
    if not looks_like_picture(data):
        raise InvalidImage(f"'{path}' is not a PNG, JPEG or WebP picture")
    return data


def looks_like_picture(data: bytes) -> bool:
    """Whether `data` starts as a PNG, JPEG or WebP file does (no decoding)."""
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- what is checked: format, size, bombs, whole files --------------------------------------


def check_count(count: int) -> None:
    """At most LIMNER_MAX_PICTURES pictures in one request."""
    limit = config.max_pictures()
    if count > limit:
        raise TooLarge(
            f"the request carries {count} pictures; at most {limit} are accepted "
            "(LIMNER_MAX_PICTURES)"
        )


def check(data: bytes, label: str) -> Image.Image:
    """The decoded picture, upright, or InvalidImage / TooLarge: it must be a whole PNG, JPEG
    or WebP within the pixel limit (format and size read from the header before decoding)."""
    with _decoding(data, label):
        image = _opened(data, label)
        image.load()
        return _upright(image)


def upright(data: bytes, label: str) -> bytes:
    """The picture's bytes as every engine should read them, checked as `check` does: a JPEG
    whose EXIF says the camera was turned comes back turned upright, an MPO as its first
    picture (both as PNG); any other picture comes back as it was sent."""
    return checked_upright(data, label)[0]


def checked_upright(data: bytes, label: str) -> tuple[bytes, Image.Image]:
    """`upright`'s bytes and the picture they decode to, from one decoding."""
    with _decoding(data, label):
        image = _opened(data, label)
        image.load()
        if image.format != "MPO" and not _turned(image):
            return data, image
        fixed = _upright(image)
        if fixed.mode not in ("RGB", "RGBA", "L", "LA", "P"):
            fixed = fixed.convert("RGB")  # CMYK and YCbCr JPEGs: PNG holds neither
        buffer = io.BytesIO()
        fixed.save(buffer, format="PNG")
        return buffer.getvalue(), fixed


def _turned(image: Image.Image) -> bool:
    return image.getexif().get(ORIENTATION, 1) not in (0, 1)


def _upright(image: Image.Image) -> Image.Image:
    """The picture as the camera saw it (EXIF orientation applied), first frame only."""
    from PIL import ImageOps

    if not _turned(image):
        return image.copy() if image.format == "MPO" else image
    return ImageOps.exif_transpose(image)


def thumbnail(data: bytes, label: str, side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG of the picture at most `side` pixels on its long side (never enlarged)."""
    image = open_rgb(data, label)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def check_header(data: bytes, label: str) -> None:
    """Format, pixel limit and structure, without decoding every pixel (training sets)."""
    with _decoding(data, label), _opened(data, label) as image:
        image.verify()


def open_rgb(data: bytes, label: str) -> Image.Image:
    """The picture decoded to RGB (engines); palette transparency goes through RGBA, or
    Pillow warns and guesses."""
    with _decoding(data, label), _opened(data, label) as opened:
        opened.load()
        image = _upright(opened)
        if image.mode == "P" and "transparency" in image.info:
            return image.convert("RGBA").convert("RGB")
        return image.convert("RGB")


def _opened(data: bytes, label: str) -> Image.Image:
    from PIL import Image

    with warnings.catch_warnings(record=True) as caught:  # the size check names it first
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # no other decoder parses it
    limit = config.max_image_pixels()
    width, height = image.size
    if width * height > limit:
        raise TooLarge(
            f"{label} is {width}x{height} = {width * height} pixels, over the limit of "
            f"{limit} (LIMNER_MAX_IMAGE_PIXELS); send a smaller picture"
        )
    if max(width, height) > MAX_ASPECT * max(1, min(width, height)):
        raise InvalidImage(
            f"{label} is {width}x{height}, more than {MAX_ASPECT} times longer than it is "
            "wide; crop or pad it nearer to a square"
        )
    if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
        raise Image.DecompressionBombWarning(f"{width}x{height}")
    return image


@contextlib.contextmanager
def _decoding(data: bytes, label: str) -> Iterator[None]:
    """Pillow's failures as errors that say what to send; the bomb warning is a bomb."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooLarge(
            f"{label} decodes to too many pixels (LIMNER_MAX_IMAGE_PIXELS="
            f"{config.max_image_pixels()})"
        ) from None
    except (InvalidImage, TooLarge):
        raise
    except UnidentifiedImageError:
        raise InvalidImage(
            f"{label} is not a PNG, JPEG or WebP picture ({_other_format(data)})"
        ) from None
    except (OSError, SyntaxError, ValueError):
        raise InvalidImage(
            f"{label} is truncated or corrupt; send a whole PNG, JPEG or WebP file"
        ) from None


def _other_format(data: bytes) -> str:
    """What a refused file is, for the message: Pillow's name for it, read from its header."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as other:
            return f"it is {other.format}; send a PNG, JPEG or WebP"
    except Exception:  # any failure here only means the file is no picture at all
        return "it is not a picture at all"
