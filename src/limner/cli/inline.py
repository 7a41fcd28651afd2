"""Pictures shown in the terminal itself, after `limner run` draws one.

Three protocols, picked from the environment (terminals answer no reliable query without a
raw-mode round trip): kitty's graphics protocol (kitty, Ghostty), iTerm2's inline images (iTerm2,
WezTerm) and sixel (foot, mlterm, xterm -ti vt340, and terminals named *sixel*).
`LIMNER_PICTURES=kitty|iterm|sixel|off` overrides the guess. Only a terminal on stdout gets
escapes; elsewhere (a pipe, a file, an unknown terminal) the saved file's path is all there is.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from typing import IO

import numpy as np
from PIL import Image

PROTOCOLS = ("kitty", "iterm", "sixel")
MIN_SIDE = 256  # small pictures (the toys' 64x64) are enlarged to at least this, pixel for pixel
MAX_SIDE = 1024  # ... but never past this
KITTY_CHUNK = 4096  # the protocol's largest base64 payload per escape
SIXEL_COLOURS = 255


def protocol(environ: Mapping[str, str] | None = None) -> str | None:
    """The picture protocol of the terminal described by `environ`, or None."""
    env = os.environ if environ is None else environ
    chosen = env.get("LIMNER_PICTURES", "").strip().lower()
    if chosen in PROTOCOLS:
        return chosen
    if chosen in ("off", "none", "0"):
        return None
    term, program = env.get("TERM", ""), env.get("TERM_PROGRAM", "")
    if "KITTY_WINDOW_ID" in env or term in ("xterm-kitty", "xterm-ghostty"):
        return "kitty"
    if program in ("iTerm.app", "WezTerm") or "ITERM_SESSION_ID" in env:
        return "iterm"
    if "sixel" in term or term.startswith(("foot", "mlterm")):
        return "sixel"
    return None


def show(png: bytes, out: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """Write the picture to `out` if it is a terminal that can show it; say whether it did."""
    chosen = protocol(environ)
    if chosen is None or not out.isatty():
        return False
    out.write(escape(png, chosen) + "\n")
    out.flush()
    return True


def escape(png: bytes, chosen: str) -> str:
    """The escape sequence that shows `png` with protocol `chosen`."""
    picture = _enlarged(Image.open(io.BytesIO(png)))
    if chosen == "sixel":
        return sixel(picture)
    data = _png(picture)
    if chosen == "kitty":
        return kitty(data)
    if chosen == "iterm":
        return iterm(data)
    raise ValueError(f"unknown picture protocol {chosen!r}; use one of {', '.join(PROTOCOLS)}")


def kitty(png: bytes) -> str:
    """kitty's graphics protocol: transmit and display a PNG (f=100), in chunks; m=1 says more
    follow."""
    payload = base64.b64encode(png).decode("ascii")
    chunks = [payload[i : i + KITTY_CHUNK] for i in range(0, len(payload), KITTY_CHUNK)]
    parts = []
    for number, chunk in enumerate(chunks):
        more = int(number < len(chunks) - 1)
        keys = f"a=T,f=100,m={more}" if number == 0 else f"m={more}"
        parts.append(f"\x1b_G{keys};{chunk}\x1b\\")
    return "".join(parts)


def iterm(png: bytes) -> str:
    """iTerm2's inline image: one OSC 1337 with the file's size and its base64 bytes."""
    payload = base64.b64encode(png).decode("ascii")
    return f"\x1b]1337;File=inline=1;size={len(png)};preserveAspectRatio=1:{payload}\x07"


def sixel(picture: Image.Image) -> str:
    """DEC sixel: the picture in at most 255 colours, six rows a band, runs compressed."""
    indexed = picture.convert("RGB").quantize(colors=SIXEL_COLOURS)
    width, height = indexed.size
    palette = indexed.getpalette() or []
    pixels = np.asarray(indexed)  # height x width palette indices
    used = np.unique(pixels).tolist()
    # Raster attributes (1:1 pixels, the size), then each colour in percent of 100.
    parts = [f'\x1bP0;1;0q"1;1;{width};{height}']
    for index in used:
        red, green, blue = (round(c * 100 / 255) for c in palette[index * 3 : index * 3 + 3])
        parts.append(f"#{index};2;{red};{green};{blue}")
    weights = (1 << np.arange(6))[:, None]  # a sixel's bit for each of its six rows
    for top in range(0, height, 6):
        band = pixels[top : top + 6]
        lines = []
        for index in np.unique(band).tolist():  # only the colours this band uses
            bits = ((band == index) * weights[: len(band)]).sum(axis=0).tolist()
            lines.append(f"#{index}" + _runs(bits))
        parts.append("$".join(lines) + "-")  # $: back to the band's start; -: next band
    return "".join(parts) + "\x1b\\"


def _runs(bits: list[int]) -> str:
    """One colour's line of a band, repeats written as !count."""
    out, x = [], 0
    while x < len(bits):
        end = x
        while end < len(bits) and bits[end] == bits[x]:
            end += 1
        char, count = chr(63 + bits[x]), end - x
        out.append(f"!{count}{char}" if count > 3 else char * count)
        x = end
    return "".join(out)


def _enlarged(picture: Image.Image) -> Image.Image:
    factor = min(-(-MIN_SIDE // min(picture.size)), MAX_SIDE // max(picture.size))
    if factor <= 1:
        return picture
    return picture.resize(
        (picture.width * factor, picture.height * factor), Image.Resampling.NEAREST
    )


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
