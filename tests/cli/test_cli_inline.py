"""Drawn pictures shown in the terminal: the protocol is guessed from the environment, each
escape carries the picture itself (decoded back here, pixel for pixel), and only a terminal gets
escapes; `limner run` shows its drawing on a kitty terminal and prints only the path elsewhere."""

from __future__ import annotations

import base64
import io
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pexpect
import pytest
from PIL import Image

import helpers
from helpers import add_fake_draw, ctrl_c_default
from limner.cli import inline
from limner.store import Store
from limner.toys.shapes import Spec, draw

png = helpers.encoded  # a picture's PNG bytes


SHAPE = draw(Spec("red", "triangle", "grey"))  # 64x64, two colours
NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"TERM": "xterm-kitty"}, "kitty"),
        ({"TERM": "xterm-256color", "KITTY_WINDOW_ID": "1"}, "kitty"),
        ({"TERM": "xterm-ghostty"}, "kitty"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "iTerm.app"}, "iterm"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"}, "iterm"),
        ({"TERM": "foot"}, "sixel"),
        ({"TERM": "mlterm"}, "sixel"),
        ({"TERM": "xterm-sixel"}, "sixel"),
        ({"TERM": "xterm-256color"}, None),
        ({"TERM": "dumb"}, None),
        ({}, None),
        ({"TERM": "xterm-256color", "LIMNER_PICTURES": "sixel"}, "sixel"),
        ({"TERM": "xterm-kitty", "LIMNER_PICTURES": "off"}, None),
    ],
)
def test_the_protocol_is_guessed_from_the_environment(
    environ: dict[str, str], expected: str | None
) -> None:
    assert inline.protocol(environ) == expected


def test_kitty_gets_the_png_in_chunks_it_accepts() -> None:
    sequence = inline.escape(png(NOISE), "kitty")  # noise: a PNG too big for one chunk
    escapes = re.findall(r"\x1b_G([^;]*);([^\x1b]*)\x1b\\", sequence)
    assert "".join(f"\x1b_G{k};{p}\x1b\\" for k, p in escapes) == sequence
    assert len(escapes) > 1 and escapes[0][0] == "a=T,f=100,m=1"
    assert [keys for keys, _ in escapes[1:]] == ["m=1"] * (len(escapes) - 2) + ["m=0"]
    assert all(len(payload) <= inline.KITTY_CHUNK for _, payload in escapes)
    shown = Image.open(io.BytesIO(base64.b64decode("".join(p for _, p in escapes))))
    assert shown.size == (256, 256)  # 64x64 enlarged four times, pixel for pixel
    assert np.array_equal(np.asarray(shown.convert("RGB"))[::4, ::4], np.asarray(NOISE))


def test_iterm_gets_the_png_with_its_size() -> None:
    sequence = inline.escape(png(SHAPE), "iterm")
    match = re.fullmatch(r"\x1b\]1337;File=inline=1;size=(\d+);preserveAspectRatio=1:(.+)\x07",
                         sequence)  # fmt: skip
    assert match
    data = base64.b64decode(match.group(2))
    assert int(match.group(1)) == len(data)
    assert Image.open(io.BytesIO(data)).size == (256, 256)


def decode_sixel(sequence: str) -> np.ndarray:
    """A small sixel reader (raster attributes, RGB colours, repeats, $ and -), for checking."""
    body = re.fullmatch(r"\x1bP0;1;0q(.*)\x1b\\", sequence, re.S)
    assert body
    header = re.match(r'"1;1;(\d+);(\d+)', body.group(1))
    assert header
    width, height = int(header.group(1)), int(header.group(2))
    pixels = np.zeros((height, width, 3), dtype=np.int64)
    colours: dict[int, tuple[int, ...]] = {}
    colour, x, top = 0, 0, 0
    tokens = re.finditer(r"#(\d+)(?:;2;(\d+);(\d+);(\d+))?|!(\d+)(.)|([?-~])|(\$)|(-)",
                         body.group(1)[header.end():])  # fmt: skip
    for token in tokens:
        index, red, green, blue, count, repeated, single, back, down = token.groups()
        if index is not None:
            colour = int(index)
            if red is not None:
                colours[colour] = tuple(round(int(c) * 255 / 100) for c in (red, green, blue))
        elif back:
            x = 0
        elif down:
            x, top = 0, top + 6
        else:
            char, times = (repeated, int(count)) if count else (single, 1)
            for bit in range(6):
                if (ord(char) - 63) >> bit & 1 and top + bit < height:
                    pixels[top + bit, x : x + times] = colours[colour]
            x += times
    return pixels


def test_sixel_carries_every_pixel_in_its_colour() -> None:
    shown = decode_sixel(inline.escape(png(SHAPE), "sixel"))
    assert shown.shape == (256, 256, 3)
    # Colours go through percent, so each channel may be off by the rounding (under 2 of 255).
    assert np.abs(shown[::4, ::4] - np.asarray(SHAPE, dtype=np.int64)).max() <= 2


def test_only_a_terminal_that_can_show_pictures_gets_escapes(tmp_path: Path) -> None:
    assert not inline.show(png(SHAPE), io.StringIO(), {"TERM": "xterm-kitty"})

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    plain, kitty = Terminal(), Terminal()
    assert not inline.show(png(SHAPE), plain, {"TERM": "xterm-256color"})
    assert plain.getvalue() == ""
    assert inline.show(png(SHAPE), kitty, {"TERM": "xterm-kitty"})
    assert kitty.getvalue().startswith("\x1b_Ga=T,f=100")


def test_limner_run_shows_its_drawing_on_a_kitty_terminal(
    server: Any, store: Store, tmp_path: Path
) -> None:
    add_fake_draw(store, "draw")
    env = {**os.environ, "LIMNER_HOST": server.url.removeprefix("http://"), "TERM": "xterm-kitty"}
    child = pexpect.spawn(sys.executable, ["-m", "limner", "run", "draw", "a red fox",
                          "--steps", "2"], cwd=str(tmp_path), env=env, preexec_fn=ctrl_c_default, encoding="utf-8",
                          timeout=60)  # fmt: skip
    child.expect(r"Image saved to: (.+\.png)\r\n")
    saved = Path(str(child.match.group(1)))
    child.expect("\x1b_Ga=T,f=100")
    child.expect(pexpect.EOF)
    assert saved.exists()
