"""Automatic1111's picture preparation for img2img and inpainting, done before the native
drawing handler sees a request: resize modes, mask reading, blur and inversion, the
"only masked" crop region, the "fill" of the masked area, and the soft paste-back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from limner.errors import InvalidRequest

RESIZE_MODES = {0: "just resize", 1: "crop and resize", 2: "resize and fill", 3: "just resize"}
FILL, ORIGINAL = 0, 1  # A1111's inpainting_fill values done here


def resize(picture: Image.Image, mode: int, width: int, height: int) -> Image.Image:
    """`picture` at width x height by A1111's resize mode."""
    if mode not in RESIZE_MODES:
        raise InvalidRequest(f"resize_mode must be one of {sorted(RESIZE_MODES)}, got {mode}")
    if picture.size == (width, height):
        return picture
    if RESIZE_MODES[mode] == "just resize":
        return picture.resize((width, height), Image.Resampling.LANCZOS)
    if RESIZE_MODES[mode] == "crop and resize":
        return ImageOps.fit(picture, (width, height), Image.Resampling.LANCZOS)
    return _resize_and_fill(picture, width, height)


def _resize_and_fill(picture: Image.Image, width: int, height: int) -> Image.Image:
    """Fit inside, then fill the bands left over by stretching the picture's edge rows or
    columns across them, as A1111 does."""
    scale = min(width / picture.width, height / picture.height)
    inner = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    fitted = picture.resize(inner, Image.Resampling.LANCZOS)
    canvas = Image.new(picture.mode, (width, height))
    left, top = (width - inner[0]) // 2, (height - inner[1]) // 2
    canvas.paste(fitted, (left, top))
    if top > 0:
        canvas.paste(fitted.crop((0, 0, inner[0], 1)).resize((inner[0], top)), (left, 0))
        bottom = height - top - inner[1]
        last_row = fitted.crop((0, inner[1] - 1, inner[0], inner[1]))
        canvas.paste(last_row.resize((inner[0], bottom)), (left, top + inner[1]))
    if left > 0:
        canvas.paste(fitted.crop((0, 0, 1, inner[1])).resize((left, inner[1])), (0, top))
        right = width - left - inner[0]
        last_column = fitted.crop((inner[0] - 1, 0, inner[0], inner[1]))
        canvas.paste(last_column.resize((right, inner[1])), (left + inner[0], top))
    return canvas


def read_mask(mask: Image.Image, invert: bool) -> Image.Image:
    """A greyscale mask, white = repaint: a picture's transparency if it has any (A1111
    masks from a brush layer), else its brightness."""
    if mask.mode in ("RGBA", "LA", "PA") or "transparency" in mask.info:
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            grey = alpha.point(lambda a: 255 if a > 128 else 0)
            return ImageOps.invert(grey) if invert else grey
    grey = mask.convert("L")
    return ImageOps.invert(grey) if invert else grey


def blur(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """A1111's mask blur: a Gaussian of about blur/2.5 pixels' deviation on each axis."""
    if blur_x < 0 or blur_y < 0 or max(blur_x, blur_y) > 64:
        raise InvalidRequest("mask_blur must be between 0 and 64")
    if blur_x == blur_y == 0:
        return mask
    return mask.filter(ImageFilter.GaussianBlur((blur_x / 2.5, blur_y / 2.5)))


def binary(mask: Image.Image) -> Image.Image:
    return mask.point(lambda value: 255 if value >= 128 else 0)


@dataclass
class Region:
    left: int
    top: int
    right: int
    bottom: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.right, self.bottom

    @property
    def size(self) -> tuple[int, int]:
        return self.right - self.left, self.bottom - self.top


def masked_region(mask: Image.Image, padding: int, width: int, height: int) -> Region:
    """The bounding box of the masked pixels, grown by `padding` and then to the aspect
    ratio of width x height, inside the picture ("inpaint only masked")."""
    if padding < 0:
        raise InvalidRequest(f"inpaint_full_res_padding must be 0 or more, got {padding}")
    box = mask.point(lambda value: 255 if value > 0 else 0).getbbox()
    if box is None:
        raise InvalidRequest("the mask is all black: nothing to repaint")
    left, top = max(box[0] - padding, 0), max(box[1] - padding, 0)
    right, bottom = min(box[2] + padding, mask.width), min(box[3] + padding, mask.height)
    region = Region(left, top, right, bottom)
    return _grow_to_ratio(region, width / height, mask.width, mask.height)


def _grow_to_ratio(region: Region, ratio: float, limit_w: int, limit_h: int) -> Region:
    """Widen or heighten the region about its centre until it has `ratio`, within limits."""
    w, h = region.size
    if w / h < ratio:
        want = min(round(h * ratio), limit_w)
        left, right = _spread(region.left, region.right, want, limit_w)
        return Region(left, region.top, right, region.bottom)
    want = min(round(w / ratio), limit_h)
    top, bottom = _spread(region.top, region.bottom, want, limit_h)
    return Region(region.left, top, region.right, bottom)


def _spread(start: int, end: int, want: int, limit: int) -> tuple[int, int]:
    grow = want - (end - start)
    start -= grow // 2
    end += grow - grow // 2
    if start < 0:
        end, start = end - start, 0
    if end > limit:
        start, end = max(start - (end - limit), 0), limit
    return start, end


def fill(picture: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked area painted with the blurred colours around it, so the
    model repaints from the surroundings instead of from what was there."""
    keep = np.asarray(mask) < 128
    rgb = np.asarray(picture.convert("RGB"), dtype=np.float32)
    kept_colours = Image.fromarray(np.where(keep[..., None], rgb, 0).astype(np.uint8))
    kept_weight = Image.fromarray((keep * 255).astype(np.uint8))
    result = np.where(keep[..., None], rgb, 0.0)
    # A normalised blur of the kept colours at shrinking radii: each pass fills the holes
    # with nearer colours than the wider pass before it.
    for radius in (256, 64, 16, 4, 2):
        colours = np.asarray(kept_colours.filter(ImageFilter.GaussianBlur(radius)), np.float32)
        weights = np.asarray(kept_weight.filter(ImageFilter.GaussianBlur(radius)), np.float32)
        found = (weights > 0)[..., None]
        estimate = colours * 255 / np.maximum(weights, 1)[..., None]
        result = np.where(found, estimate, result)
    result = np.where(keep[..., None], rgb, result)
    return Image.fromarray(np.clip(result, 0, 255).astype(np.uint8))


def paste_back(drawn: Image.Image, original: Image.Image, soft_mask: Image.Image) -> Image.Image:
    """The drawn picture where the (blurred) mask is white, the original where it is
    black, blended in between: A1111's overlay of the unmasked original."""
    return Image.composite(drawn.convert("RGB"), original.convert("RGB"), soft_mask)
