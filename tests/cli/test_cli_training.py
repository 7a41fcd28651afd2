"""How the CLI presents LoRA training: the progress printer, the loss curve and `show`'s block.

Pure functions over the wire shapes of `/api/create` and `/api/show`; no server is needed.
"""

from __future__ import annotations

import base64
import io
import math
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from limner.cli.training import (
    AVERAGE_COLOUR,
    CURVE_SIZE,
    TrainingPrinter,
    clock,
    format_training,
    loss_curve_png,
    moving_average,
)
from limner.types import ProgressResponse


def line(**fields: Any) -> ProgressResponse:
    return ProgressResponse.model_validate(fields)


def training(step: int, total: int = 500, **extra: Any) -> ProgressResponse:
    fields = {"loss": 0.1234, "learning_rate": 1e-4, "eta": 70.0, **extra}
    return line(status="training", step=step, total=total, completed=step, **fields)


def run(printer: TrainingPrinter, *steps: ProgressResponse) -> str:
    for step in steps:
        printer.show(step)
    printer.end()
    assert isinstance(printer.out, io.StringIO)
    return printer.out.getvalue()


def png_base64(colour: tuple[int, int, int] = (255, 0, 0)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")


# --- the printer on a terminal --------------------------------------------------------------


def test_a_terminal_redraws_one_step_line_in_place() -> None:
    out = run(TrainingPrinter(io.StringIO(), tty=True), training(209), training(210))
    first, second = out.removesuffix("\n").split("\r")[1:]
    assert second == (
        "training  42% ▕██████████               ▏ step 210/500  loss 0.1234  lr 1.0e-04  "
        "ETA 1m10s\x1b[K"
    )
    assert first.endswith("step 209/500  loss 0.1234  lr 1.0e-04  ETA 1m10s\x1b[K")
    assert out.endswith("\n") and out.count("\n") == 1


def test_statuses_close_the_step_line_and_print_as_they_come() -> None:
    out = run(
        TrainingPrinter(io.StringIO(), tty=True),
        line(status="reading 8 pictures"),
        line(status="captioning", file="a.png", caption="a red circle", completed=1, total=3),
        line(status="loading sd-tiny for training"),
        training(50),
        line(status="checkpoint", step=50),
        training(51),
        line(status="writing manifest"),
        line(status="success"),
    )
    plain = [re.sub(r".*\r", "", row) for row in out.split("\n")[:-1]]
    assert plain[:3] == ["reading 8 pictures", "caption a.png: a red circle",
                         "loading sd-tiny for training"]  # fmt: skip
    assert plain[3].startswith("training  10% ▕") and "step 50/500" in plain[3]
    assert plain[4] == "checkpoint at step 50"
    assert "step 51/500" in plain[5]
    assert plain[6:] == ["writing manifest", "success"]


def test_a_narrow_terminal_drops_the_bar_and_keeps_one_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    out = run(TrainingPrinter(io.StringIO(), tty=True), training(210))
    drawn = out.strip("\r\n").removesuffix("\x1b[K")
    assert drawn == "training  42% step 210/500  loss 0.1234  lr 1.0e-"
    assert "▕" not in drawn and len(drawn) <= 49


def test_unknown_values_are_left_out_of_the_step_line() -> None:
    out = run(TrainingPrinter(io.StringIO(), tty=True), line(status="training", step=7))
    assert out == "\rtraining   0% ▕                         ▏ step 7\x1b[K\n"


# --- the printer in a log -------------------------------------------------------------------


def test_a_log_gets_a_plain_line_at_each_tenth_and_at_the_last_step() -> None:
    out = run(TrainingPrinter(io.StringIO(), tty=False), *(training(s) for s in range(1, 501)))
    assert "\r" not in out and "▕" not in out
    rows = out.splitlines()
    assert [int(re.findall(r"step (\d+)/", row)[0]) for row in rows] == [
        1, 50, 100, 150, 200, 250, 300, 350, 400, 450, 500,
    ]  # fmt: skip
    assert rows[-1] == "training 100% step 500/500  loss 0.1234  lr 1.0e-04  ETA 1m10s"


def test_a_log_of_a_short_run_or_one_without_a_total_stays_readable() -> None:
    short = run(TrainingPrinter(io.StringIO(), tty=False), *(training(s, 3) for s in (1, 2, 3)))
    assert len(short.splitlines()) == 3
    steps = (line(status="training", step=s, loss=0.5) for s in range(1, 121))
    untold = run(TrainingPrinter(io.StringIO(), tty=False), *steps)
    assert re.findall(r"step (\d+)", untold) == ["1", "50", "100"]


# --- what the printer keeps -----------------------------------------------------------------


def test_every_steps_loss_is_kept_for_the_curve() -> None:
    printer = TrainingPrinter(io.StringIO(), tty=False)
    run(
        printer,
        training(1, 4, loss=0.4),
        training(2, 4, loss=0.3),
        line(status="checkpoint", step=2),
        line(status="training", step=3, total=4),  # a line without a loss
        training(4, 4, loss=0.1),
    )
    assert printer.losses == [0.4, 0.3, 0.1]
    assert (printer.step, printer.total) == (4, 4)


def test_validation_pictures_are_saved_and_their_path_printed(tmp_path: Path) -> None:
    folder = tmp_path / "validation"
    printer = TrainingPrinter(io.StringIO(), tty=False, validation_dir=folder)
    out = run(printer, line(status="validation", step=50, image=png_base64()))
    saved = folder / "validation-step-00050.png"
    assert out == f"validation at step 50: {saved}\n"
    assert printer.validations == [saved]
    with Image.open(saved) as picture:
        assert picture.getpixel((0, 0)) == (255, 0, 0)
    assert [p.name for p in folder.iterdir()] == [saved.name]  # no temporary file left


def test_validation_without_a_folder_saves_nothing(tmp_path: Path) -> None:
    printer = TrainingPrinter(io.StringIO(), tty=False)
    out = run(printer, line(status="validation", step=50, image=png_base64()))
    assert out == "validation at step 50\n"
    assert printer.validations == []


def test_a_picture_that_cannot_be_saved_does_not_stop_the_run(tmp_path: Path) -> None:
    printer = TrainingPrinter(io.StringIO(), tty=False, validation_dir=tmp_path)
    out = run(
        printer,
        line(status="validation", step=50, image="not base64!"),
        training(51),
    )
    assert out.splitlines()[0] == "validation at step 50: the picture sent is not base64"
    assert printer.losses == [0.1234]


def test_lines_missing_their_fields_print_their_status() -> None:
    out = run(
        TrainingPrinter(io.StringIO(), tty=False),
        line(status="captioning"),
        line(status="checkpoint"),
        line(status="something new", extra=1),
    )
    assert out.splitlines() == ["captioning", "checkpoint", "something new"]


# --- the loss curve -------------------------------------------------------------------------


def curve_rows(path: Path) -> tuple[float, float]:
    """The mean height (row) of the bold curve's pixels in the left and right fifths."""
    with Image.open(path) as picture:
        rgb = picture.convert("RGB")
        width, height = rgb.size
        pixels = rgb.load()
        assert pixels is not None
        found: dict[str, list[int]] = {"left": [], "right": []}
        for x in [*range(width // 5), *range(width * 4 // 5, width)]:
            for y in range(height):
                if pixels[x, y] == AVERAGE_COLOUR:
                    found["left" if x < width // 2 else "right"].append(y)
    assert found["left"] and found["right"]
    return sum(found["left"]) / len(found["left"]), sum(found["right"]) / len(found["right"])


def test_the_curve_is_a_png_of_the_expected_size(tmp_path: Path) -> None:
    path = loss_curve_png([0.3, 0.2, 0.25, 0.1], tmp_path / "loss.png", title="my-style")
    assert path == tmp_path / "loss.png"
    with Image.open(path) as picture:
        assert (picture.format, picture.size) == ("PNG", CURVE_SIZE)
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]  # written through a temp name


def test_a_falling_loss_is_drawn_high_on_the_left_and_a_rising_one_low(tmp_path: Path) -> None:
    falling = [1.0 / (1 + step / 20) for step in range(200)]
    left, right = curve_rows(loss_curve_png(falling, tmp_path / "falling.png"))
    assert left < right  # rows count down the picture: higher up is a smaller row
    left, right = curve_rows(loss_curve_png(falling[::-1], tmp_path / "rising.png"))
    assert left > right


def test_one_point_and_constant_losses_still_draw(tmp_path: Path) -> None:
    for name, losses in (("one", [0.2]), ("flat", [0.2] * 50), ("zero", [0.0] * 3)):
        with Image.open(loss_curve_png(losses, tmp_path / f"{name}.png")) as picture:
            colours = {colour for _, colour in picture.convert("RGB").getcolors(1 << 20) or []}
        assert AVERAGE_COLOUR in colours, name


def test_nan_and_infinite_losses_are_left_out(tmp_path: Path) -> None:
    noisy = [1.0, math.nan, 0.8, math.inf, 0.6, -math.inf, 0.4] * 10
    clean = [1.0, 0.8, 0.6, 0.4] * 10
    assert curve_rows(loss_curve_png(noisy, tmp_path / "noisy.png"))
    with Image.open(loss_curve_png([math.nan], tmp_path / "none.png")) as picture:
        assert picture.size == CURVE_SIZE  # only the axes and a note
    assert len(moving_average(clean)) == len(clean)


def test_thousands_of_steps_draw_at_the_size_asked(tmp_path: Path) -> None:
    losses = [0.5 / (1 + step / 500) + 0.05 * math.sin(step) for step in range(20_000)]
    path = loss_curve_png(losses, tmp_path / "long.png", "long run", size=(400, 240))
    with Image.open(path) as picture:
        assert picture.size == (400, 240)
    left, right = curve_rows(path)
    assert left < right


def test_the_moving_average_follows_the_trend_without_lagging() -> None:
    assert moving_average([1, 2, 3, 4, 5], 3) == [1, 2, 3, 4, 5]
    assert moving_average([0, 3, 0, 3, 0], 3) == [0, 1, 2, 1, 0]
    assert moving_average([]) == []


def test_durations_are_compact() -> None:
    assert [clock(s) for s in (0.4, 45, 70, 3599, 3600 + 5 * 60)] == [
        "0s", "45s", "1m10s", "59m59s", "1h05m",
    ]  # fmt: skip


# --- show -----------------------------------------------------------------------------------

TRAINED = {
    "base": "sd-tiny",
    "completed": True,
    "steps": 500,
    "total": 500,
    "final_loss": 0.08,
    "losses": [0.2, 0.19],
    "seconds": 123.4,
    "steps_per_second": 4.05,
    "parameters": {
        "steps": 500,
        "rank": 4,
        "alpha": 4.0,
        "learning_rate": 0.0001,
        "lr_scheduler": "constant",
        "trainable_parameters": 797184,
        "instance_prompt": "",
    },
    "captions": {"a.png": "a red circle"},
    "exports": {"lora_kohya.safetensors": "sha256:0123456789abcdef"},
}


def test_show_tells_how_a_run_went() -> None:
    text = format_training(TRAINED)
    assert text.startswith(
        "  Training\n"
        "    base model    sd-tiny\n"
        "    status        completed\n"
        "    steps         500 of 500\n"
        "    final loss    0.0800\n"
        "    time          2m03s (4.05 steps/s)\n"
    )
    assert "  Captions\n    a.png    a red circle\n" in text
    assert "  Exports\n    lora_kohya.safetensors    0123456789ab\n" in text
    assert "0.2, 0.19" not in text  # the losses are for the curve, not for reading


def test_show_lists_the_parameters_as_aligned_rows() -> None:
    block = format_training(TRAINED).split("\n\n")[1].splitlines()
    assert block[0] == "  Training parameters"
    assert block[1:] == [
        "    steps                   500",
        "    rank                    4",
        "    alpha                   4",
        "    learning_rate           0.0001",
        "    lr_scheduler            constant",
        "    trainable_parameters    797184",
        '    instance_prompt         ""',
    ]


def test_show_says_where_a_stopped_run_stopped() -> None:
    stopped = {**TRAINED, "completed": False, "steps": 120}
    assert "status        stopped at step 120 of 500\n" in format_training(stopped)


def test_show_leaves_out_what_it_was_not_told() -> None:
    assert format_training({"steps": 3, "total": 3}) == (
        "  Training\n    status    completed\n    steps     3 of 3\n"
    )


def test_show_shortens_long_caption_lists() -> None:
    captions = {f"{n:03d}.png": f"picture\n number {n}" for n in range(25)}
    text = format_training({**TRAINED, "captions": captions})
    assert "    000.png    picture number 0\n" in text
    assert "009.png" in text and "010.png" not in text
    assert "    ...        (15 more)\n" in text
