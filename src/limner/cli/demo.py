"""`limner demo`: the whole path once, offline, on a fresh machine, in a few seconds.

It starts a private server on a free loopback port with a temporary model store, creates
the tiny random-weight LLaVA through the SDK (the same upload path as `limner create`),
draws a test picture, asks about it with streaming, prints the timings, and then stops
the server and removes every file it made, however it ends.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from limner.client import Client

MODEL = "tiny-llava"
QUESTION = "What shape is in this picture?"
INTRO = """limner demo: a tiny LLaVA model answers a question about a picture, fully offline.
Tiny models have random weights, so the answer is nonsense: what the demo proves is that
every step (upload, load, picture, streaming, timings) works on this machine.
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
                ask_about_a_circle(sdk, root)
        finally:
            print("5. stopping the server and removing the temporary folder...")
            stop_server(server)
    print("Done. With a real model (see README.md): limner create bakllava --from ./bakllava-hf")
    return 0


def ask_about_a_circle(sdk: Client, root: Path) -> None:
    from limner.cli.models import upload_folder
    from limner.cli.run import print_stream, print_timings
    from limner.tiny import write_tiny_llava

    print(f"2. creating the tiny model '{MODEL}' (random weights)...")
    folder = write_tiny_llava(root / MODEL, seed=0)
    upload_folder(sdk, MODEL, folder, say=_quiet_layers)
    print("3. drawing a test picture: a red circle on white, 336x336...")
    picture = draw_circle(root / "circle.png")
    print(f'4. asking "{QUESTION}" (loading the model takes a few seconds)...\n')
    chunks = sdk.generate(
        MODEL, QUESTION, images=[picture], options={"num_predict": 32, "seed": 0}, stream=True
    )
    print("--- answer (random weights: nonsense) ---")
    final = print_stream(chunks, lambda chunk: chunk.response, wordwrap=True)
    print("\n--- timings ---")
    if final is not None:
        print_timings(final, sys.stdout)
    print()


def _quiet_layers(line: str) -> None:
    if "layer sha256:" not in line:  # one line per layer says little in a demo
        print(f"   {line}")


def draw_circle(path: Path) -> Path:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (336, 336), "white")
    ImageDraw.Draw(image).ellipse((68, 68, 268, 268), fill="red")
    image.save(path)
    return path


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
