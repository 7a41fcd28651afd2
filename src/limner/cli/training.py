"""Presenting LoRA training in the CLI: the progress of `create --train`, the loss curve, and
the training block of `limner show`.

Everything here reads the wire shapes of `/api/create` and `/api/show` and nothing else, so it
works against any server. Only the standard library is imported at load time (Pillow when a
picture is written): `limner --help` must stay fast.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from limner.cli.formats import columns

if TYPE_CHECKING:
    from PIL import ImageDraw

    from limner.types import ProgressResponse

# --- progress -------------------------------------------------------------------------------


class TrainingPrinter:
    """The progress lines of `create --train`: statuses as they come, one line per training step.

    On a terminal the step line is redrawn in place (`training  42% ▕████    ▏ step 210/500
    loss 0.1234  lr 1.0e-04  ETA 1m10s`); otherwise a plain line is written at each tenth of
    the run and at the last step, so logs stay short. Every step's loss is kept in `losses`
    for the curve drawn at the end, and validation pictures are saved to `validation_dir`.
    """

    BAR = 25
    UNKNOWN_TOTAL_EVERY = 50  # without a total, a plain line every this many steps

    def __init__(
        self, out: IO[str], tty: bool | None = None, validation_dir: Path | None = None
    ) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.validation_dir = validation_dir
        self.losses: list[float] = []
        self.validations: list[Path] = []  # the pictures saved, in order
        self.step = 0  # the last training step seen
        self.total: int | None = None  # the run's steps, once a training line said
        self.open = False  # a step line is drawn without its newline yet
        self.logged = -1  # the last tenth of the run written as a plain line

    def show(self, step: ProgressResponse) -> None:
        status = step.status
        if status == "training":
            self._training(step)
            return
        handler = _HANDLERS.get(status)
        line = handler(self, step) if handler else None
        self._say(line if line is not None else status)

    def end(self) -> None:
        """Finish a step line left open, before anything else is written below it."""
        if self.open:
            self.out.write("\n")
            self.out.flush()
            self.open = False

    def _say(self, line: str) -> None:
        self.end()
        self.out.write(f"{line}\n")
        self.out.flush()

    def _training(self, step: ProgressResponse) -> None:
        number = _integer(_field(step, "step")) or _integer(step.completed) or self.step + 1
        self.step, self.total = number, _integer(step.total) or self.total
        loss = _number(_field(step, "loss"))
        if loss is not None:
            self.losses.append(loss)
        lr, eta = _number(_field(step, "learning_rate")), _number(_field(step, "eta"))
        text = step_text(number, self.total, loss, lr, eta)
        if self.tty:
            self._redraw(number, text)
        elif self._worth_logging(number):
            self._say(f"training {_percent(number, self.total):3d}% {text}")

    def _redraw(self, number: int, text: str) -> None:
        """One line rewritten in place; the bar shrinks (or goes) to keep it on one row."""
        percent = _percent(number, self.total)
        width = shutil.get_terminal_size((80, 24)).columns - 1
        head = f"training {percent:3d}% "
        bar = min(self.BAR, width - len(head) - len(text) - 3)
        line = head + (f"▕{progress_bar(percent, bar)}▏ " if bar >= 5 else "") + text
        self.out.write(f"\r{line[:width]}\x1b[K")
        self.out.flush()
        self.open = True

    def _worth_logging(self, number: int) -> bool:
        """A plain line at each tenth of the run and at its last step."""
        if self.total is None:
            mark = number // self.UNKNOWN_TOTAL_EVERY
        else:
            mark = 10 if number >= self.total else number * 10 // max(self.total, 1)
        if mark <= self.logged or (mark == 0 and number != 1):
            return False
        self.logged = mark
        return True

    def _captioning(self, step: ProgressResponse) -> str | None:
        file, caption = _field(step, "file"), _field(step, "caption")
        if file is None or caption is None:
            return None
        return f"caption {file}: {caption}"

    def _checkpoint(self, step: ProgressResponse) -> str | None:
        number = _integer(_field(step, "step"))
        return None if number is None else f"checkpoint at step {number}"

    def _validation(self, step: ProgressResponse) -> str | None:
        number = _integer(_field(step, "step")) or self.step
        said = f"validation at step {number}"
        image = _field(step, "image")
        if self.validation_dir is None or not isinstance(image, str):
            return said
        path = self.validation_dir / f"validation-step-{number:05d}.png"
        try:  # a picture that cannot be saved must not end the run the server is doing
            write_atomic(path, base64.b64decode(image, validate=True))
        except (binascii.Error, ValueError):
            return f"{said}: the picture sent is not base64"
        except OSError as error:
            return f"{said}: cannot save '{path}': {error.strerror or error}"
        self.validations.append(path)
        return f"{said}: {path}"


_HANDLERS: dict[str, Callable[[TrainingPrinter, ProgressResponse], str | None]] = {
    "captioning": TrainingPrinter._captioning,
    "checkpoint": TrainingPrinter._checkpoint,
    "validation": TrainingPrinter._validation,
}


def step_text(
    number: int, total: int | None, loss: float | None, lr: float | None, eta: float | None
) -> str:
    """`step 210/500  loss 0.1234  lr 1.0e-04  ETA 1m10s`, leaving out what is unknown."""
    parts = [f"step {number}/{total}" if total else f"step {number}"]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if lr is not None:
        parts.append(f"lr {lr:.1e}")
    if eta is not None and math.isfinite(eta):
        parts.append(f"ETA {clock(eta)}")
    return "  ".join(parts)


def progress_bar(percent: int, width: int) -> str:
    filled = max(0, min(width, percent * width // 100))
    return "█" * filled + " " * (width - filled)


def clock(seconds: float) -> str:
    """A compact duration for progress lines: `45s`, `1m10s`, `2h05m`."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _percent(number: int, total: int | None) -> int:
    return 0 if not total else max(0, min(100, number * 100 // total))


def _field(step: ProgressResponse, name: str) -> Any:
    """A field of a progress line, declared or extra; None when the line has none."""
    return getattr(step, name, None)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) else None


def write_atomic(path: Path, data: bytes) -> Path:
    """Write through a temporary name in the same folder, so a reader never sees half a file."""
    return _replace_atomically(path, lambda temp: temp.write_bytes(data))


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(name))
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return path


# --- the loss curve -------------------------------------------------------------------------

CURVE_SIZE = (800, 480)
BACKGROUND = (255, 255, 255)
AXIS_COLOUR = (90, 90, 90)
TEXT_COLOUR = (40, 40, 40)
RAW_COLOUR = (170, 200, 235)  # every step's loss, light
AVERAGE_COLOUR = (25, 80, 170)  # its moving average, bold
MARGINS = (80, 44, 24, 44)  # left (the loss labels), top (the title), right, bottom (steps)


def loss_curve_png(
    losses: list[float], path: Path, title: str = "", *, size: tuple[int, int] = CURVE_SIZE
) -> Path:
    """The loss of every step as a PNG, drawn with Pillow alone: the raw curve light and its
    moving average bold, min and max loss on the y axis, steps on the x axis.

    Steps whose loss is NaN or infinite are left out; with none left the axes are drawn empty.
    """
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font()
    left, top, right, bottom = _plot_box(size)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS_COLOUR, width=1)
    if title:
        _text(draw, (size[0] / 2, MARGINS[1] / 2), title, font, "mm")
    points = [(i, float(v)) for i, v in enumerate(losses) if math.isfinite(v)]
    if not points:
        _text(draw, ((left + right) / 2, (top + bottom) / 2), "no loss to plot", font, "mm")
    else:
        _plot(draw, font, points, len(losses), (left, top, right, bottom))
    return _replace_atomically(path, lambda temp: image.save(temp, format="PNG"))


def _plot(
    draw: ImageDraw.ImageDraw,
    font: Any,
    points: list[tuple[int, float]],
    count: int,
    box: tuple[int, int, int, int],
) -> None:
    left, top, right, bottom = box
    low, high = min(v for _, v in points), max(v for _, v in points)
    pad = (high - low) * 0.05 or abs(high) * 0.1 or 0.1  # a flat curve sits mid-height
    y_low, y_high = low - pad, high + pad

    def place(index: int, value: float) -> tuple[float, float]:
        x = (left + right) / 2 if count == 1 else left + (right - left) * index / (count - 1)
        return x, bottom - (bottom - top) * (value - y_low) / (y_high - y_low)

    indexes, values = [i for i, _ in points], [v for _, v in points]
    smooth = moving_average(values)
    _polyline(draw, [place(i, v) for i, v in points], RAW_COLOUR, 1)
    _polyline(draw, [place(i, v) for i, v in zip(indexes, smooth, strict=True)], AVERAGE_COLOUR, 3)
    for value in {low, high}:
        y = place(0, value)[1]
        draw.line([(left - 5, y), (left, y)], fill=AXIS_COLOUR)
        _text(draw, (left - 8, y), _loss_label(value), font, "rm")
    ends = {0: "mt"} if count == 1 else {0: "lt", count - 1: "rt"}  # labels inside the axis
    for index, anchor in ends.items():
        x = place(index, low)[0]
        draw.line([(x, bottom), (x, bottom + 5)], fill=AXIS_COLOUR)
        _text(draw, (x, bottom + 8), f"step {index + 1}", font, anchor)


def moving_average(values: list[float], window: int | None = None) -> list[float]:
    """The mean of each value and as many neighbours on each side (a twentieth of the run in
    all by default, fewer near the ends), so the trend shows through noise without lagging."""
    half = (window or max(1, len(values) // 20)) // 2
    sums = [0.0]
    for value in values:
        sums.append(sums[-1] + value)
    reach = [min(half, i, len(values) - 1 - i) for i in range(len(values))]  # centred
    return [(sums[i + r + 1] - sums[i - r]) / (2 * r + 1) for i, r in enumerate(reach)]


def _polyline(
    draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], colour: Any, width: int
) -> None:
    if len(points) == 1:
        (x, y), r = points[0], width + 2
        draw.ellipse([(x - r, y - r), (x + r, y + r)], fill=colour)
    else:
        draw.line(points, fill=colour, width=width, joint="curve")


def _plot_box(size: tuple[int, int]) -> tuple[int, int, int, int]:
    left, top, right, bottom = MARGINS
    return left, top, size[0] - right, size[1] - bottom


def _loss_label(value: float) -> str:
    return f"{value:.4g}"


def _font() -> Any:
    """Pillow's own font at a readable size (a scalable one since Pillow 10.1)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=13)
    except TypeError:  # Pillow 10.0: the small bitmap font only
        return ImageFont.load_default()


def _text(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: Any, anchor: str
) -> None:
    try:
        draw.text(xy, text, fill=TEXT_COLOUR, font=font, anchor=anchor)
    except ValueError:  # a bitmap font takes no anchor
        draw.text(xy, text, fill=TEXT_COLOUR, font=font)


# --- show -----------------------------------------------------------------------------------

CAPTIONS_SHOWN = 10


def format_training(training: dict[str, Any]) -> str:
    """The `Training` sections of `limner show` for a trained model, in `format_show`'s shape:
    how the run went, its parameters, and the captions it made."""
    sections = [
        ("Training", summary_rows(training)),
        ("Training parameters", value_rows(training.get("parameters"))),
        ("Captions", caption_rows(training.get("captions"))),
        ("Exports", export_rows(training.get("exports"))),
    ]
    blocks = [f"  {title}\n{_indent(columns(rows))}" for title, rows in sections if rows]
    return "\n\n".join(blocks) + "\n"


def summary_rows(training: dict[str, Any]) -> list[list[str]]:
    steps, total = _integer(training.get("steps")), _integer(training.get("total"))
    rows = []
    if training.get("base"):
        rows.append(["base model", str(training["base"])])
    rows.append(["status", _status(training.get("completed"), steps, total)])
    if steps is not None:
        rows.append(["steps", str(steps) if total is None else f"{steps} of {total}"])
    loss = _number(training.get("final_loss"))
    if loss is not None:
        rows.append(["final loss", f"{loss:.4f}"])
    time = _time(_number(training.get("seconds")), _number(training.get("steps_per_second")))
    if time:
        rows.append(["time", time])
    return rows


def _status(completed: Any, steps: int | None, total: int | None) -> str:
    if completed is True or (completed is None and steps is not None and steps == total):
        return "completed"
    if steps is None:
        return "stopped"
    return f"stopped at step {steps}" + (f" of {total}" if total else "")


def _time(seconds: float | None, rate: float | None) -> str:
    text = clock(seconds) if seconds is not None else ""
    if rate is not None:
        text += f" ({rate:.2f} steps/s)" if text else f"{rate:.2f} steps/s"
    return text


def value_rows(values: Any) -> list[list[str]]:
    """A dictionary as key/value rows, in the order the server sent it."""
    if not isinstance(values, dict):
        return []
    return [[str(key), _value(value)] for key, value in values.items() if value is not None]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value if value.strip() else '""'
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def caption_rows(captions: Any) -> list[list[str]]:
    """The first captions, one line each, then how many more there are."""
    if not isinstance(captions, dict):
        return []
    rows = [[str(name), " ".join(str(text).split())] for name, text in captions.items()]
    more = len(rows) - CAPTIONS_SHOWN
    return rows[:CAPTIONS_SHOWN] + ([["...", f"({more} more)"]] if more > 0 else [])


def export_rows(exports: Any) -> list[list[str]]:
    if not isinstance(exports, dict):
        return []
    return [
        [str(name), str(digest).removeprefix("sha256:")[:12]] for name, digest in exports.items()
    ]


def _indent(text: str) -> str:
    return "\n".join(f"    {line}".rstrip() for line in text.splitlines())
