"""`limner demo`: the whole path once, offline, on a fresh machine, in well under a minute.

It starts a private server on a free loopback port with a temporary model store, stores the
toy vision model through the SDK (the same upload path as `limner create --toy see`), asks it
about fresh pictures of shapes (one answer streamed, with its timings) and checks its answers. Then it creates
the tiny Stable Diffusion models (as `limner create --tiny sd|sd-inpaint`), draws a picture,
inpaints half of it and restyles it after a style picture, saving the three PNGs in
./limner-demo/ for the user to look at. It stops the server and removes every temporary
file however it ends.
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

SEE = "toy-see"
PICTURES = 3  # fresh pictures the toy vision model is asked about
DRAW_MODEL, INPAINT_MODEL = "tiny-sd", "tiny-sd-inpaint"
DRAW_PROMPT = "a red circle"
SIDE, STEPS = 64, 8  # the tiny models' own size; few steps keep the demo short
OUTPUT = "limner-demo"  # in the current folder: the pictures outlive the demo
INTRO = """limner demo, fully offline: limner's toy vision model (trained on pictures of coloured
shapes) names the colour and shape of fresh pictures, checked against the truth; then tiny
Stable Diffusion models with random weights draw, inpaint and restyle a picture (noise, not
shapes: they prove every step of drawing works on this machine).
"""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo", help="try limner end to end with a tiny model (offline, seconds)",
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
    from limner.cli.run import print_stream, print_timings
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
    """Draw, inpaint the right half, restyle: one PNG each in `out`, with steps/s."""
    from dataclasses import replace

    from limner.cli.draw import DrawSettings
    from limner.cli.models import upload_folder, write_tiny

    print(f"5. creating the tiny drawing models '{DRAW_MODEL}' and '{INPAINT_MODEL}'...")
    for model, kind in ((DRAW_MODEL, "sd"), (INPAINT_MODEL, "sd-inpaint")):
        upload_folder(sdk, model, write_tiny(kind, root / model), say=_quiet_files)
    plain = DrawSettings(width=SIDE, height=SIDE, steps=STEPS, seed=0)
    print(f'6. drawing "{DRAW_PROMPT}" ({SIDE}x{SIDE}, {STEPS} steps, seed 0; loading first)...')
    first = draw_one(sdk, DRAW_MODEL, DRAW_PROMPT, plain, out / "1-drawn.png")
    print("7. inpainting its right half (the white of a mask) with the inpainting model...")
    mask = half_mask(root / "mask.png")
    inpaint = replace(plain, image=first, mask=mask)
    draw_one(sdk, INPAINT_MODEL, "a blue square", inpaint, out / "2-inpainted.png")
    print("8. restyling it after a striped style picture (IP-Adapter style transfer)...")
    style = draw_stripes(root / "style.png")
    styled = replace(plain, image=first, styles=[style], style_strength=0.8)
    draw_one(sdk, DRAW_MODEL, DRAW_PROMPT, styled, out / "3-restyled.png")
    print("   Tiny models have random weights: the pictures are noise, not circles.\n")


def _answer(sdk: Client, question: str, picture: Path) -> str:
    reply = sdk.generate(SEE, question, images=[picture], options={"temperature": 0})
    return str(getattr(reply, "response", "")).strip()


def _mark(right: bool) -> str:
    return "(right)" if right else "(wrong)"


def draw_one(sdk: Client, model: str, prompt: str, settings: DrawSettings, path: Path) -> Path:
    """One drawing through the same helper as `limner run`, progress bar and all."""
    from limner.cli.draw import ProgressBar, draw, write_png
    from limner.cli.run import Session

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


def draw_stripes(path: Path) -> Path:
    """A style picture: bold blue and yellow diagonal stripes."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (SIDE * 4, SIDE * 4), "yellow")
    pen = ImageDraw.Draw(image)
    for start in range(-SIDE * 4, SIDE * 4, 32):
        pen.line((start, 0, start + SIDE * 4, SIDE * 4), fill="blue", width=12)
    image.save(path)
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
