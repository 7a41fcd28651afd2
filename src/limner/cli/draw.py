"""Drawing with `limner run`: the flags, the settings, the progress bar and the saved PNG.

A model whose capabilities include "image" draws instead of chatting. Each prompt becomes one
PNG, saved in the current folder under a name made from the prompt and the time, as Ollama
names its drawings (`a-red-fox-in-the-snow-20250102-153000.png`), and never over an existing
file. This module imports only the standard library at load time: `limner --help` must stay
fast and must not need PIL.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from limner.cli.session import Session
    from limner.client import Client, GeneratedImage

NEEDS_PROMPT = (
    "image generation models require a prompt, e.g. "
    "limner run MODEL \"a red fox in the snow\"; without one, run it in a terminal for the REPL"
)  # fmt: skip


# (flag, type, metavar, help) of the drawing flags of `limner run`.
FLAGS: tuple[tuple[str, type, str | None, str], ...] = (
    ("--width", int, None, "picture width in pixels, a multiple of 8"),
    ("--height", int, None, "picture height in pixels, a multiple of 8"),
    ("--steps", int, None, "denoising steps, 1-150 (default: the model's; 1 for Turbo)"),
    ("--seed", int, None, "random seed, for the same picture again"),
    ("--negative", str, "TEXT", "what the picture should not show"),
    ("--guidance", float, "X", "how closely to follow the prompt (default 7.5)"),
    ("--scheduler", str, "NAME", 'sampler: "euler a", "dpm++ 2m karras", "ddim", "lcm", ...'),
    ("--image", str, "PATH", "a picture to redraw (image-to-image)"),
    ("--mask", str, "PATH", "with --image, inpaint: white repaints, black keeps"),
    ("--strength", float, "X", "how much of --image to change, 0-1 (default 0.75)"),
    ("--style", str, "PATH", "a style picture to follow (repeatable)"),
    ("--style-strength", float, "X", "how strongly the style pictures count, 0-1 (default 0.6)"),
    ("--vae", str, "NAME", '"tiny": the model\'s tiny autoencoder (TAESD) decodes, faster'),
    ("--output", str, "PATH", "where to save the PNG: a file, or a folder for the made-up name"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("drawing models (capability 'image')")
    for flag, kind, metavar, text in FLAGS:
        action = "append" if flag == "--style" else "store"
        group.add_argument(flag, type=kind, metavar=metavar, help=text, action=action)


# --- settings -----------------------------------------------------------------------------


@dataclass
class DrawSettings:
    """What every drawing of a session sends; None means the model's or the server's default."""

    width: int | None = None
    height: int | None = None
    steps: int | None = None
    seed: int | None = None
    negative: str | None = None
    guidance: float | None = None
    scheduler: str | None = None
    strength: float | None = None
    style_strength: float | None = None
    image: Path | None = None
    mask: Path | None = None
    styles: list[Path] = field(default_factory=list)
    vae: str | None = None

    def given(self) -> list[str]:
        """The settings that differ from the defaults, as their flags."""
        return [
            f"--{name}" for name in SETTINGS if getattr(self, _attribute(name)) not in (None, [])
        ]

    def rows(self, model_info: dict[str, Any] | None = None) -> list[tuple[str, str]]:
        """(setting, value) for /show: what was set, else what the model or server will use
        (read from the model's /api/show facts), marked `(default)`."""
        defaults = model_defaults(model_info or {}, self.image is not None)
        rows = []
        for name in SETTINGS:
            value = getattr(self, _attribute(name))
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            if value in (None, ""):
                value = f"{defaults.get(name, 'none')} (default)" if name in defaults else "none"
            rows.append((name, str(value)))
        return rows

    def check(self) -> None:
        """The settings as the server will check them, now: ValueError in the CLI's words."""
        from limner.engines import drawing
        from limner.errors import InvalidRequest

        # A picture in the prompt may be the one to redraw: a mask alone is no error here.
        image = b"" if self.image or self.mask else None
        request = drawing.ImageRequest(
            "", width=self.width or 0, height=self.height or 0, steps=self.steps or 0,
            guidance_scale=self.guidance, seed=-1 if self.seed is None else self.seed,
            scheduler=self.scheduler or "", image=image, mask=b"" if self.mask else None,
            strength=drawing.DEFAULT_STRENGTH if self.strength is None else self.strength,
            style_strength=drawing.DEFAULT_STYLE_STRENGTH if self.style_strength is None
            else self.style_strength, vae=self.vae or "",
        )  # fmt: skip
        try:
            drawing.checked(request)
        except InvalidRequest as error:
            raise ValueError(in_flags(str(error))) from None

    def set(self, name: str, text: str) -> None:
        """Parse, check and set one setting by its REPL name; ValueError says why not (and
        the setting keeps its value)."""
        kind = SETTINGS.get(name)
        if kind is None:
            raise ValueError(f"unknown setting '{name}'")
        value = _parse(kind, text)
        before = getattr(self, _attribute(name))
        if name == "style":
            self.styles.append(value)
        else:
            setattr(self, _attribute(name), value)
        try:
            self.check()
        except ValueError:
            setattr(self, _attribute(name), before if name != "style" else self.styles[:-1])
            raise

    def reset(self, name: str) -> None:
        if name not in SETTINGS:
            raise ValueError(f"unknown setting '{name}'")
        setattr(self, _attribute(name), [] if name == "style" else None)


# REPL names (as the flags) and their types; `style` adds one picture each time.
SETTINGS: dict[str, type] = {
    "width": int, "height": int, "steps": int, "seed": int, "negative": str, "guidance": float,
    "scheduler": str, "strength": float, "image": Path, "mask": Path, "style": Path,
    "style-strength": float, "vae": str,
}  # fmt: skip


# The request's words for what the CLI calls by its flags, for messages a user reads here.
FLAG_WORDS = (("a mask needs the picture to repaint in images[0]",
               "--mask needs --image (or a picture in the prompt): the picture to repaint"),
              ("images[0]", "--image"), ("guidance_scale", "--guidance"),
              ("style_strength", "--style-strength"), ("negative_prompt", "--negative"),
              ("init picture", "--image picture"), ("style_images", "--style"))  # fmt: skip


def in_flags(message: str) -> str:
    """A request's error in the CLI's words: `--image`, not `images[0]`."""
    for wire, flag in FLAG_WORDS:
        message = message.replace(wire, flag)
    return message


def model_defaults(model_info: dict[str, Any], redraws: bool) -> dict[str, str]:
    """What a drawing model uses for the settings left unset, from its /api/show facts."""
    from limner.engines import drawing

    family = str(model_info.get("general.architecture", ""))
    size = model_info.get(f"{family}.default_size")
    side = "the picture's" if redraws else str(size) if size else "the model's"
    scheduler = model_info.get(f"{family}.scheduler")
    return {
        "width": side, "height": side,
        "steps": str(model_info.get(f"{family}.default_steps", drawing.DEFAULT_STEPS)),
        "seed": "random",
        "guidance": f"{model_info.get(f'{family}.default_guidance_scale', drawing.DEFAULT_GUIDANCE):g}",
        "scheduler": f"the model's ({scheduler})" if scheduler else "the model's",
        "strength": f"{drawing.DEFAULT_STRENGTH:g}",
        "style-strength": f"{drawing.DEFAULT_STYLE_STRENGTH:g}",
        "vae": "full",
    }  # fmt: skip


def _attribute(name: str) -> str:
    return "styles" if name == "style" else name.replace("-", "_")


def _parse(kind: type, text: str) -> Any:
    if kind is str:
        return text
    if kind is Path:
        return picture_path(text)
    try:
        return int(text) if kind is int else float(text)
    except ValueError:
        raise ValueError(f"invalid {kind.__name__} value [{text}]") from None


def picture_path(text: str) -> Path:
    """A picture file named by a flag or /set: it must exist now, not at drawing time."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError(f"picture '{text}' not found")
    return path.absolute()


def settings_from_args(args: argparse.Namespace) -> DrawSettings:
    from limner.errors import InvalidRequest

    try:
        settings = DrawSettings(
            width=args.width, height=args.height, steps=args.steps, seed=args.seed,
            negative=args.negative, guidance=args.guidance, scheduler=args.scheduler,
            strength=args.strength, style_strength=args.style_strength,
            image=picture_path(args.image) if args.image else None,
            mask=picture_path(args.mask) if args.mask else None,
            styles=[picture_path(p) for p in args.style or []], vae=args.vae,
        )  # fmt: skip
        settings.check()
    except ValueError as error:
        raise InvalidRequest(str(error)) from None
    return settings


# --- one drawing ----------------------------------------------------------------------------


def draw_once(
    sdk: Client, session: Session, settings: DrawSettings, prompt: str, output: str | None
) -> int:
    """`limner run SD "prompt"`: draw, save, print the path; a prompt is required."""
    from limner.errors import InvalidRequest

    text, init = take_pictures(prompt, settings.image)
    if not text:
        raise InvalidRequest(NEEDS_PROMPT)
    if text.rstrip().endswith("?"):
        print(f"'{session.model}' draws pictures; it does not answer questions: drawing the "
              "prompt as a picture", file=sys.stderr)  # fmt: skip
    target = Path(output).expanduser() if output else None
    try:
        saved, image, bar = draw_and_save(sdk, session, settings, text, init, target)
    except KeyboardInterrupt:
        print("stopped; nothing was saved", file=sys.stderr)
        return 130
    report_saved(saved, image, session.verbose)
    if session.verbose:
        print_draw_timings(bar, sys.stderr)
    return 0


def report_saved(saved: Path, image: GeneratedImage, verbose: bool) -> None:
    """Where the picture went and its seed (to draw it again); with --verbose, everything
    that drew it."""
    print(f"Image saved to: {saved}", flush=True)
    show_picture(saved)
    parameters = image.parameters
    if "seed" in parameters:
        print(f"seed {parameters['seed']}", file=sys.stderr)
    if verbose:
        for key, value in parameters.items():
            if key not in ("seed", "digest"):
                print(f"{key + ':':<22}{value}", file=sys.stderr)


def take_pictures(prompt: str, image: Path | None) -> tuple[str, Path | None]:
    """Picture paths out of the prompt: the first is the picture to redraw, unless --image."""
    from limner.cli.pictures import find_pictures

    found = find_pictures(prompt, Path.cwd())
    for name in found.missing:
        print(f"Picture '{name}' not found; sending the text without it", file=sys.stderr)
    init = image
    for path in found.paths:
        if init is None:
            init = path
            print(f"Added image '{path}'", file=sys.stderr)
        else:
            print(f"Picture '{path}' left out: a drawing redraws one picture "
                  "(style pictures go in --style or /set style)", file=sys.stderr)  # fmt: skip
    return found.text.strip(), init


def draw_and_save(
    sdk: Client, session: Session, settings: DrawSettings, prompt: str, init: Path | None,
    target: Path | None, replace: bool = True,
) -> tuple[Path, GeneratedImage, ProgressBar]:  # fmt: skip
    """Draw with a progress bar on a terminal's stderr, then save: in the current folder or
    the `target` folder under a new name, or as the `target` file (`replace`: over an
    existing one, as asked; else numbered, for the REPL's many drawings)."""
    from limner.cli.session import waiting_for
    from limner.errors import LimnerError

    terminal = sys.stderr if sys.stderr.isatty() else None
    bar = ProgressBar(terminal, waiting_for(sdk, session.model))
    try:
        image = draw(sdk, session, settings, prompt, init, bar)
    except LimnerError as error:  # the server's words for fields, in the CLI's: flags
        error.message = in_flags(error.message)
        raise
    finally:
        bar.close()  # also on Ctrl+C, so the next line starts clean
    if target is None or target.is_dir():
        base = f"{file_stem(prompt)}-{datetime.now():%Y%m%d-%H%M%S}"
        return save_unique(image.png, target or Path.cwd(), base), image, bar
    if replace:
        return write_png(image.png, target), image, bar
    saved = save_unique(image.png, target.parent, target.stem, target.suffix or ".png")
    return saved, image, bar


def draw(
    sdk: Client, session: Session, settings: DrawSettings, prompt: str, init: Path | None,
    progress: ProgressBar,
) -> GeneratedImage:  # fmt: skip
    """One request. A Ctrl+C raised while waiting for a line ends the SDK's stream, which
    closes the connection: the server sees it and stops denoising."""
    from limner.cli.pictures import read_picture

    s = settings
    return sdk.generate_image(
        session.model, prompt, width=s.width, height=s.height, steps=s.steps, seed=s.seed,
        negative_prompt=s.negative, guidance_scale=s.guidance, scheduler=s.scheduler,
        strength=s.strength, image=read_picture(init) if init else None,
        mask=read_picture(s.mask) if s.mask else None,
        style_images=[read_picture(p) for p in s.styles] or None, style_strength=s.style_strength,
        vae=s.vae, keep_alive=session.keep_alive, progress=progress,
    )  # fmt: skip


# --- file names -----------------------------------------------------------------------------


def file_stem(prompt: str) -> str:
    """The prompt as a file name: lower case, ASCII letters and digits joined by `-`, 50 at most."""
    stem = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return stem[:50].rstrip("-") or "image"


def save_unique(png: bytes, folder: Path, base: str, suffix: str = ".png") -> Path:
    """`<base>.png` in `folder`, or `<base>-2.png`, `-3`... when that name is taken (two
    drawings in one second), so a drawing never replaces another."""
    number = 1
    while True:
        name = f"{base}{suffix}" if number == 1 else f"{base}-{number}{suffix}"
        try:
            return write_png(png, folder / name, exclusive=True)
        except FileExistsError:
            number += 1


def write_png(png: bytes, path: Path, exclusive: bool = False) -> Path:
    """Write the file (exclusive: only if new, atomically); an absolute path to print."""
    from limner.errors import LimnerError

    try:
        with open(path, "xb" if exclusive else "wb") as out:
            out.write(png)
    except FileExistsError:
        raise
    except OSError as error:
        raise LimnerError(f"cannot save the picture to '{path}': {error.strerror}") from None
    return path.absolute()


# --- progress -------------------------------------------------------------------------------


class ProgressBar:
    """`progress(completed, total)` for the SDK: a one-line `\\r` bar on a terminal (stderr),
    and the denoising rate either way (for --verbose and the demo)."""

    WIDTH = 30

    def __init__(self, out: IO[str] | None, waiting: str = "") -> None:
        from limner.cli.session import Spinner

        self.out = out
        self.started = time.monotonic()
        self.first: tuple[int, float] | None = None  # (completed, time) of the first step
        self.last: tuple[int, float] | None = None
        self.shown = 0  # characters on the bar's line, to wipe it
        # Until the first step: a spinner (and `loading MODEL` while the model loads).
        self.spinner = Spinner(waiting, out) if out is not None else None

    def __call__(self, completed: int, total: int) -> None:
        if self.spinner is not None:
            self.spinner.stop()
        now = time.monotonic()
        self.first = self.first or (completed, now)
        self.last = (completed, now)
        if self.out is not None:
            self._show(completed, total)

    def _show(self, completed: int, total: int) -> None:
        assert self.out is not None
        filled = self.WIDTH * completed // max(total, 1)
        arrow = ">" if filled < self.WIDTH else ""
        line = f"[{'=' * filled}{arrow}{' ' * (self.WIDTH - filled - len(arrow))}] {completed}/{total} steps"
        rate = self.rate()
        if rate:
            line += f"  {rate:.1f} steps/s, {(total - completed) / rate:.0f}s left"
        self.out.write("\r" + line.ljust(self.shown))
        self.out.flush()
        self.shown = len(line)

    def rate(self) -> float | None:
        """Steps per second from the first step to the last: the model's loading left out."""
        if self.first is None or self.last is None or self.last[1] <= self.first[1]:
            return None
        return (self.last[0] - self.first[0]) / (self.last[1] - self.first[1])

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def close(self) -> None:
        if self.spinner is not None:
            self.spinner.stop()
        if self.out is not None and self.shown:
            self.out.write("\r" + " " * self.shown + "\r")
            self.out.flush()
            self.shown = 0


def print_draw_timings(bar: ProgressBar, out: IO[str]) -> None:
    """--verbose for drawings, in the shape of Ollama's timing lines."""
    from limner.cli.session import go_duration

    print(f"total duration:       {go_duration(int(bar.elapsed() * 1e9))}", file=out)
    if bar.last is not None:
        print(f"steps:                {bar.last[0]}", file=out)
    rate = bar.rate()
    if rate is not None:
        print(f"denoising rate:       {rate:.2f} steps/s", file=out)
    out.flush()


def show_picture(saved: Path) -> None:
    """The saved picture, inline on terminals that can show one (see `inline`)."""
    from limner.cli import inline

    inline.show(saved.read_bytes(), sys.stdout)
