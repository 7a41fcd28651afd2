"""`limner run` with a drawing model: one-shot drawings, flags, the drawing REPL, `create --tiny sd`.

The server is real; the model is the fake drawing engine (flat pictures after `steps` progress
lines; with an init picture and a mask it keeps the init picture where the mask is black).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
from PIL import Image

from helpers import add_fake, add_fake_draw, ctrl_c_default, picture
from limner import read_parameters
from limner.store import Store

LIMNER = [sys.executable, "-c", "import sys; from limner.cli import main; sys.exit(main())"]
SAVED = re.compile(r"Image saved to: (.+\.png)")
PROMPT = ">>> "


@pytest.fixture
def env(server: Any, store: Store) -> dict[str, str]:
    add_fake_draw(store, "draw")
    add_fake(store, "chat")
    return {**os.environ, "LIMNER_HOST": server.url.removeprefix("http://")}


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """An empty working folder (tmp_path itself holds the model store)."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def limner(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LIMNER, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip


def saved_picture(stdout: str) -> tuple[Path, Image.Image]:
    match = SAVED.search(stdout)
    assert match, stdout
    path = Path(match.group(1))
    return path, Image.open(io.BytesIO(path.read_bytes()))


# --- one-shot drawings ----------------------------------------------------------------------


def test_a_prompt_draws_a_png_named_after_it_in_the_current_folder(
    env: dict[str, str], cwd: Path
) -> None:
    result = limner(env, cwd, "run", "draw", "A red fox,", "in the SNOW!", "--width", "32",
                    "--height", "48", "--steps", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    # No progress bar when stderr is not a terminal: only the seed, to draw it again.
    assert re.fullmatch(r"seed \d+\n", result.stderr)
    path, image = saved_picture(result.stdout)
    assert result.stdout == f"Image saved to: {path}\n"
    assert path.parent == cwd
    assert re.fullmatch(r"a-red-fox-in-the-snow-\d{8}-\d{6}\.png", path.name)
    assert image.size == (32, 48)
    assert read_parameters(path.read_bytes())["steps"] == 3


def test_output_names_a_file_or_a_folder(env: dict[str, str], cwd: Path) -> None:
    result = limner(env, cwd, "run", "draw", "a cat", "--output", "cat.png")
    assert result.stdout == f"Image saved to: {cwd / 'cat.png'}\n"
    assert Image.open(cwd / "cat.png").size == (512, 512)  # the server's default
    (cwd / "pictures").mkdir()
    result = limner(env, cwd, "run", "draw", "a cat", "--output", "pictures")
    path, _ = saved_picture(result.stdout)
    assert path.parent == cwd / "pictures" and path.name.startswith("a-cat-")


def test_seed_and_verbose(env: dict[str, str], cwd: Path) -> None:
    result = limner(env, cwd, "run", "draw", "a cat", "--seed", "42", "--steps", "4", "--verbose")
    path, _ = saved_picture(result.stdout)
    parameters = read_parameters(path.read_bytes())
    assert (parameters["seed"], parameters["prompt"]) == (42, "a cat")
    assert "total duration:" in result.stderr and "steps:                4" in result.stderr


def test_image_and_mask_inpaint(env: dict[str, str], cwd: Path) -> None:
    (cwd / "photo.png").write_bytes(picture(size=(64, 64), color="red"))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))  # repaint the right half
    mask.save(cwd / "mask.png")
    result = limner(env, cwd, "run", "draw", "a blue door", "--image", "photo.png",
                    "--mask", "mask.png")  # fmt: skip
    assert result.returncode == 0, result.stderr
    _, image = saved_picture(result.stdout)
    rgb = image.convert("RGB")
    assert rgb.getpixel((5, 30)) == (255, 0, 0)  # kept
    assert rgb.getpixel((60, 30)) != (255, 0, 0)  # repainted


def test_a_picture_in_the_prompt_is_the_picture_to_redraw(env: dict[str, str], cwd: Path) -> None:
    (cwd / "img.png").write_bytes(picture(size=(40, 24)))
    result = limner(env, cwd, "run", "draw", "redraw img.png as ink", "--strength", "0.5")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == f"Added image '{cwd / 'img.png'}'"
    path, image = saved_picture(result.stdout)
    assert result.stderr.splitlines()[1] == f"seed {read_parameters(path.read_bytes())['seed']}"
    assert image.size == (40, 24)  # the init picture's size
    assert read_parameters(path.read_bytes())["prompt"] == "redraw as ink"
    assert path.name.startswith("redraw-as-ink-")


def test_a_prompt_is_required(env: dict[str, str], cwd: Path) -> None:
    (cwd / "img.png").write_bytes(picture())
    for args in ([], ["img.png"]):
        result = limner(env, cwd, "run", "draw", *args)
        assert result.returncode == 1
        assert result.stderr.splitlines()[-1].startswith(
            "Error: image generation models require a prompt"
        )
    assert list(cwd.iterdir()) == [cwd / "img.png"]


def test_errors_say_what_to_fix(env: dict[str, str], cwd: Path) -> None:
    result = limner(env, cwd, "run", "draw", "a cat", "--image", "ghost.png")
    assert (result.returncode, result.stderr) == (1, "Error: picture 'ghost.png' not found\n")
    result = limner(env, cwd, "run", "draw", "a cat", "--width", "30")
    assert result.returncode == 1
    assert "Error: width and height must be multiples of 8" in result.stderr
    result = limner(env, cwd, "run", "chat", "hello", "--steps", "4")
    assert result.returncode == 1
    assert result.stderr == "Error: --steps: only for drawing models; 'chat' chats\n"
    (cwd / "mask.png").write_bytes(picture())
    result = limner(env, cwd, "run", "draw", "a cat", "--guidance", "500")
    assert result.stderr == "Error: --guidance must be between 0 and 100, got 500.0\n"
    assert list(cwd.iterdir()) == [cwd / "mask.png"]


def test_a_question_to_a_drawing_model_is_drawn_and_says_so(env: dict[str, str], cwd: Path) -> None:
    result = limner(env, cwd, "run", "draw", "what is a fox?", "--seed", "3", "--verbose")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("'draw' draws pictures; it does not answer questions")
    assert "\nseed 3\n" in result.stderr and "prompt:               what is a fox?" in result.stderr
    saved_picture(result.stdout)


def test_a_mask_without_a_picture_to_repaint_is_named_by_its_flags(
    env: dict[str, str], cwd: Path
) -> None:
    (cwd / "mask.png").write_bytes(picture())
    result = limner(env, cwd, "run", "draw", "a cat", "--mask", "mask.png")
    assert result.returncode == 1
    assert result.stderr == ("Error: --mask needs --image (or a picture in the prompt): the "
                             "picture to repaint\n")  # fmt: skip


def test_file_names() -> None:
    from limner.cli.draw import file_stem

    assert file_stem("A Red Fox, in the SNOW!") == "a-red-fox-in-the-snow"
    assert file_stem("  ") == file_stem("猫") == "image"
    long = file_stem("word " * 30)
    assert len(long) <= 50 and not long.endswith("-")


def test_a_drawing_never_replaces_another(tmp_path: Path) -> None:
    from limner.cli.draw import save_unique

    names = [save_unique(b"png", tmp_path, "fox-20250102-153000").name for _ in range(3)]
    assert names == [
        "fox-20250102-153000.png",
        "fox-20250102-153000-2.png",
        "fox-20250102-153000-3.png",
    ]


# --- the REPL -------------------------------------------------------------------------------


@pytest.fixture
def repl(env: dict[str, str], cwd: Path) -> Iterator[pexpect.spawn]:
    child = pexpect.spawn(sys.executable, ["-m", "limner", "run", "draw"], cwd=str(cwd),
                          env={**env, "TERM": "dumb"}, preexec_fn=ctrl_c_default, encoding="utf-8", timeout=30,
                          dimensions=(24, 200))  # fmt: skip
    child.expect_exact(PROMPT)
    yield child
    child.close(force=True)


def ask(child: pexpect.spawn, line: str) -> str:
    child.sendline(line)
    child.expect_exact(PROMPT)
    return str(child.before).replace("\r\n", "\n").removeprefix(line + "\n")


def test_repl_settings_draw_and_bye(repl: pexpect.spawn, cwd: Path) -> None:
    assert ask(repl, "/set width 32") == "Set 'width' to '32'\n"
    assert ask(repl, "/set negative blurry, dark") == "Set 'negative' to 'blurry, dark'\n"
    assert ask(repl, "/set parameter seed 7") == "Set 'seed' to '7'\n"
    assert ask(repl, "/set steps many") == (
        "Couldn't set 'steps': invalid int value [many]. Type /? set for help\n"
    )
    assert "unknown setting 'colour'" in ask(repl, "/set colour red")
    assert ask(repl, "/set width 500") == (  # refused now, not at the next drawing
        "Couldn't set 'width': width and height must be multiples of 8 (at least 8), got 500x0. "
        "Type /? set for help\n"
    )
    shown = ask(repl, "/show")
    assert "width            32\n" in shown and "negative         blurry, dark\n" in shown
    assert "height           the model's (default)\n" in shown  # the fake states no size
    assert "steps            20 (default)\n" in shown
    assert "seed             7\n" in shown and "vae              full (default)\n" in shown
    answer = ask(repl, "a small fox")
    path, image = saved_picture(answer)
    assert path.parent == cwd and path.name.startswith("a-small-fox-")
    assert image.size == (32, 512)
    assert read_parameters(path.read_bytes())["seed"] == 7
    assert ask(repl, "/set width") == "Set 'width' to the default\n"
    assert "/set style <path>" in ask(repl, "/? set")
    assert "Type a prompt to draw it" in ask(repl, "/help")
    repl.sendline("/bye")
    repl.expect(pexpect.EOF)
    repl.close()
    assert repl.exitstatus == 0


def test_repl_picture_paths_are_pictures_to_redraw(repl: pexpect.spawn, cwd: Path) -> None:
    (cwd / "img.png").write_bytes(picture(size=(40, 24)))
    answer = ask(repl, f"{cwd / 'img.png'} as ink")  # a path first is a prompt, not a command
    assert f"Added image '{cwd / 'img.png'}'" in answer
    _, image = saved_picture(answer)
    assert image.size == (40, 24)


def test_ctrl_c_stops_a_drawing_and_the_repl_goes_on(repl: pexpect.spawn) -> None:
    ask(repl, "/set steps 100")
    repl.sendline("a SLOW fox")
    repl.expect_exact("2/100 steps")  # the progress bar, on the terminal's stderr
    started = time.monotonic()
    repl.sendintr()
    repl.expect_exact(PROMPT)
    assert "Image saved" not in str(repl.before) and "stopped; nothing was saved" in str(
        repl.before
    )
    ask(repl, "/set steps 2")
    # The server stopped denoising: the runner is free at once (the rest would take 20 s).
    assert "Image saved to:" in ask(repl, "a quick fox")
    assert time.monotonic() - started < 8


# --- create --tiny sd -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sd", "sd-inpaint"])
def test_create_tiny_sd(env: dict[str, str], cwd: Path, kind: str) -> None:
    result = limner(env, cwd, "create", "tiny-draw", "--tiny", kind)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"writing a tiny {kind} model with random weights\n")
    assert result.stdout.rstrip().endswith("success")
    from limner.client import Client

    info = Client(env["LIMNER_HOST"]).show("tiny-draw")
    assert info.capabilities == ["image"]
    assert info.model_info["stable-diffusion.inpainting_unet"] is (kind == "sd-inpaint")
    assert info.model_info["stable-diffusion.ip_adapter"] is True


@pytest.mark.slow
def test_create_from_a_single_checkpoint_file_then_draw(env: dict[str, str], cwd: Path) -> None:
    from limner import tiny
    from limner.client import Client

    checkpoint = tiny.write_tiny_sd_checkpoint(cwd / "my-model.safetensors", seed=0)
    result = limner(env, cwd, "create", "ckpt", "--from", str(checkpoint))
    assert result.returncode == 0, result.stderr
    assert "copying file my-model.safetensors" in result.stdout
    info = Client(env["LIMNER_HOST"]).show("ckpt")
    assert info.details.format == "sd-checkpoint" and info.capabilities == ["image"]
    drawn = limner(env, cwd, "run", "ckpt", "a small boat", "--steps", "2", "--seed", "1")
    assert drawn.returncode == 0, drawn.stderr
    assert "Image saved to:" in drawn.stdout
