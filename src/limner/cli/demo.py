"""`limner demo`: the whole path once, offline, on a fresh machine, in about a minute.

It starts a private server on a free loopback port with a temporary model store and stores
limner's toy models through the SDK (the same upload path as `limner create --toy`): a vision
chat model and a Stable Diffusion trained on pictures of coloured shapes. The chat model names
the colour and the shape of fresh pictures (streaming one answer, with its timings); the drawing
model draws a shape, inpaints half of it and redraws a user's picture by image-to-image, and every picture
is checked by pixel statistics and saved in ./limner-demo/. It stops the server and removes
every temporary file however it ends.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from limner.cli.draw import DrawSettings
    from limner.client import Client

SEE, DRAW = "toy-see", "toy-draw"
PICTURES = 3  # fresh pictures the chat model is asked about
DRAW_PROMPT, INPAINT_PROMPT = "a blue square", "a green square"
# A picture "of the user's", redrawn at low strength; the toy bends shapes at high guidance.
OWN_PICTURE, OWN_STRENGTH, OWN_GUIDANCE = ("yellow", "triangle", "grey"), 0.3, 3.0
SIDE, STEPS = 64, 20  # the toys' own size and default steps
OUTPUT = "limner-demo"  # in the current folder: the pictures outlive the demo
INTRO = """limner demo: a toy vision model answers questions about pictures of coloured shapes,
and a toy Stable Diffusion draws, inpaints and redraws them, fully offline. The toys are tiny
models limner ships, trained on such pictures (python -m limner.toys train): their answers and
pictures are checked here by pixel statistics.
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo", help="try limner end to end with its toy models (offline, about a minute)",
        description=INTRO, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from limner.client import Client

    print(INTRO)
    with tempfile.TemporaryDirectory(prefix="limner-demo-") as tmp:
        root = Path(tmp)
        host = f"127.0.0.1:{free_port()}"
        print(f"1. starting a private server on {host} (models in {root / 'models'})...")
        server = start_server(root, host)
        try:
            with Client(host) as sdk:
                wait_until_running(sdk, server, root / "server.log")
                ask_about_shapes(sdk, root)
                draw_pictures(sdk, root, picture_folder(root))
        finally:
            print("9. stopping the server and removing the temporary folder...")
            stop_server(server)
    print("Done. With real models (see README.md): limner create bakllava --from ./bakllava-hf")
    print('and limner create sd15 --from ./stable-diffusion-v1-5; limner run sd15 "a red fox"')
    return 0


def ask_about_shapes(sdk: Client, root: Path) -> None:
    from limner.cli.models import upload_folder
    from limner.cli.session import print_stream, print_timings
    from limner.toys import shapes, weights

    print(f"2. storing the toy vision model '{SEE}'...")
    upload_folder(sdk, SEE, weights("see"), say=_quiet_layers)
    specs = [shapes.random_spec(random.Random(seed)) for seed in range(PICTURES)]
    print(f"3. drawing {PICTURES} fresh pictures of shapes (64x64) to ask about...")
    paths = []
    for number, spec in enumerate(specs, 1):
        paths.append(root / f"question-{number}.png")
        shapes.draw(spec).save(paths[-1])
    print(f'4. asking "{shapes.QUESTIONS["caption"]}" (loading the model first)...\n')
    chunks = sdk.generate(SEE, shapes.QUESTIONS["caption"], images=[paths[0]],
                          options={"temperature": 0}, stream=True)  # fmt: skip
    print(f"--- answer about picture 1 ({shapes.caption(specs[0])} on {specs[0].background}) ---")
    final = print_stream(chunks, lambda chunk: chunk.response, wordwrap=True)
    print("\n--- timings ---")
    if final is not None:
        print_timings(final, sys.stdout)
    print()
    for number, (spec, path) in enumerate(zip(specs, paths, strict=True), 1):
        said = {kind: _answer(sdk, shapes.QUESTIONS[kind], path) for kind in ("colour", "shape")}
        truth = shapes.answers(spec)
        marks = ", ".join(
            f"{kind} {said[kind]!r} {_mark(said[kind] == truth[kind])}" for kind in said
        )
        print(f"   picture {number} ({shapes.caption(spec)}): {marks}")
    print()


def draw_pictures(sdk: Client, root: Path, out: Path) -> None:
    """Draw, inpaint the right half, redraw a picture by image-to-image: a PNG each in `out`."""
    from dataclasses import replace

    from PIL import Image

    from limner.cli.draw import DrawSettings
    from limner.cli.models import upload_folder
    from limner.toys import shapes, weights

    print(f"5. storing the toy drawing model '{DRAW}'...")
    upload_folder(sdk, DRAW, weights("draw"), say=_quiet_files)
    plain = DrawSettings(width=SIDE, height=SIDE, steps=STEPS, seed=0)
    print(f'6. drawing "{DRAW_PROMPT}" ({SIDE}x{SIDE}, {STEPS} steps, seed 0; loading first)...')
    first = draw_one(sdk, DRAW, DRAW_PROMPT, plain, out / "1-drawn.png")
    with Image.open(first) as picture:
        judged = f"{shapes.judge_colour(picture)} {shapes.judge_shape(picture)}"
    print(f"   judged by its pixels: a {judged} {_mark(judged == DRAW_PROMPT[2:])}")
    print(f'7. inpainting its right half (the white of a mask) with "{INPAINT_PROMPT}"...')
    mask = half_mask(root / "mask.png")
    inpainted = draw_one(sdk, DRAW, INPAINT_PROMPT, replace(plain, image=first, mask=mask),
                         out / "2-inpainted.png")  # fmt: skip
    with Image.open(inpainted) as picture:
        right = picture.crop((SIDE // 2, 0, SIDE, SIDE))
        colour = shapes.judge_colour(right)
    print(f"   the right half is now {colour or 'background'} {_mark(colour == 'green')}")
    own = shapes.Spec(*OWN_PICTURE, centre=(0.45, 0.55))
    shapes.draw(own).save(root / "own.png")
    print(f'8. redrawing a picture of {shapes.caption(own)} by image-to-image (strength '
          f'{OWN_STRENGTH}, guidance {OWN_GUIDANCE})...')  # fmt: skip
    redraw = replace(plain, image=root / "own.png", strength=OWN_STRENGTH, guidance=OWN_GUIDANCE)
    redrawn = draw_one(sdk, DRAW, shapes.caption(own), redraw, out / "3-redrawn.png")
    with Image.open(redrawn) as picture:
        judged = f"{shapes.judge_colour(picture)} {shapes.judge_shape(picture)}"
    print(f"   judged by its pixels: a {judged} {_mark(judged == shapes.caption(own)[2:])}\n")


def _answer(sdk: Client, question: str, picture: Path) -> str:
    reply = sdk.generate(SEE, question, images=[picture], options={"temperature": 0})
    return str(getattr(reply, "response", "")).strip()


def _mark(right: bool) -> str:
    return "(right)" if right else "(wrong)"


def draw_one(sdk: Client, model: str, prompt: str, settings: DrawSettings, path: Path) -> Path:
    """One drawing through the same helper as `limner run`, progress bar and all."""
    from limner.cli.draw import ProgressBar, draw, write_png
    from limner.cli.session import Session

    bar = ProgressBar(sys.stderr if sys.stderr.isatty() else None)
    try:
        image = draw(sdk, Session(model=model), settings, prompt, settings.image, bar)
    finally:
        bar.close()
    saved = write_png(image.png, path)
    width, height = image.pil().size
    rate = bar.rate()
    speed = f", {rate:.1f} steps/s" if rate is not None else ""
    print(f"   saved {saved} ({width}x{height}{speed})")
    return saved


def picture_folder(root: Path) -> Path:
    """./limner-demo/ to look at afterwards; the temporary folder where that cannot be made."""
    folder = Path.cwd() / OUTPUT
    try:
        folder.mkdir(exist_ok=True)
    except OSError as error:
        print(
            f"(cannot make {folder}: {error.strerror}; the pictures go with the temporary folder)"
        )
        return root
    print(f"(the pictures will be saved in {folder}{os.sep})")
    return folder


def half_mask(path: Path) -> Path:
    """Black (keep) on the left half, white (repaint) on the right."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", (SIDE, SIDE), 0)
    ImageDraw.Draw(mask).rectangle((SIDE // 2, 0, SIDE - 1, SIDE - 1), fill=255)
    mask.save(path)
    return path


def _quiet_files(line: str) -> None:
    if not line.startswith("copying file"):  # a diffusers folder has 16: their names say little
        _quiet_layers(line)


def _quiet_layers(line: str) -> None:
    if "layer sha256:" not in line:  # one line per layer says little in a demo
        print(f"   {line}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(root: Path, host: str) -> subprocess.Popen[bytes]:
    scratch = root / "tmp"  # the runners' and torch's temporary files go away with the demo's
    scratch.mkdir()
    env = {**os.environ, "LIMNER_MODELS": str(root / "models"), "LIMNER_HOST": host}
    env |= {"TMPDIR": str(scratch), "TEMP": str(scratch), "TMP": str(scratch)}
    env.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
    with open(root / "server.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "limner", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip


def wait_until_running(
    sdk: Client, server: subprocess.Popen[bytes], log: Path, timeout: float = 30
) -> None:
    from limner.errors import LimnerError

    deadline = time.monotonic() + timeout
    while not sdk.is_running():
        if server.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise LimnerError(f"the demo's server did not start:\n{tail}")
        time.sleep(0.1)


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
