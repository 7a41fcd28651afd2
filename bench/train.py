"""LoRA-training steps/s through limner's trainer vs the same loop in plain diffusers + peft.

    .venv/bin/python bench/train.py                     # tiny SD, then SD 1.5 at 256x256
    .venv/bin/python bench/train.py --configs tiny      # seconds
    .venv/bin/python bench/train.py --configs sd15 --resolution 512 --steps 1 --rounds 3

For each model, in one process, on the same configuration (seed, rank 4, alpha 4, lr 1e-4,
constant schedule, batch 1, fp32, centre crop, no flip, max_grad_norm 1) and the same pictures:
  limner   `limner.engines.lora.train(...)`, iterated one `TrainProgress` at a time
  plain    the loop of diffusers' examples/text_to_image/train_text_to_image_lora.py, per step:
           vae.encode -> latent sample x scaling_factor, Gaussian noise, uniform random
           timesteps, add_noise, UNet forward, MSE against the noise, backward,
           clip_grad_norm_, AdamW step, LR schedule step, zero_grad. LoRA added with
           `unet.add_adapter(LoraConfig(...))`, VAE and text encoder frozen; text embeddings
           computed once and the pictures resized, cropped and turned into tensors once (a
           competent baseline does its data loading outside the step).
Both run on the same torch threads and draw their randomness in the same order from the same
seed, so they train the same adapter: the largest loss difference is printed as a check that
the two loops do the same work.

Loading is never timed. After `--warmup` steps of each (tiny 10, sd15 1; limner's first step
includes its load), the two paths alternate for `--rounds` rounds of `--steps` steps each, limner first in
even rounds and plain first in odd ones, so the machine's noise hits both; steps/s is the
median over the rounds. Speed does not depend on weight values, so SD 1.5 is its real
architecture (limner's bundled sd15 configs) with random weights (~4 GB in a temporary
folder). Nothing is downloaded. Timings are printed, never asserted. Run it on a quiet machine:
on 2 cores, any other busy process makes OpenMP's two threads wait for each other and both
paths slow down many times over (the load average is printed at the start and the end).
"""

from __future__ import annotations

import argparse
import gc
import io
import itertools
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no torchvision notices

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.utils import logging as diffusers_logging
from peft import LoraConfig
from PIL import Image, ImageDraw
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

from limner.engines.lora import train
from limner.engines.sd_configs import materialise
from limner.engines.training import Example, TrainDone, TrainProgress, TrainRequest
from limner.tiny import write_tiny_sd

if TYPE_CHECKING:
    from limner.types import ProgressResponse

SEED = 0
RANK = 4
LEARNING_RATE = 1e-4
TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
PICTURES = 8
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "white", "black"]
SHAPES = ["circle", "square", "triangle", "ring"]
TARGET = 0.97  # limner steps/s over plain steps/s


@dataclass
class Config:
    name: str
    label: str
    resolution: int
    steps: int  # timed steps per path per round
    warmup: int  # untimed steps per path first


# --- Models and pictures ------------------------------------------------------------------


def write_sd15_random(dest: Path) -> Path:
    """SD 1.5's architecture (UNet 860M, CLIP-L text 123M, VAE 84M), random weights, fp32."""
    materialise("sd15", dest)  # limner's bundled configs + CLIP's tokenizer files
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(dest / "unet"))  # type: ignore[no-untyped-call]
    unet.save_pretrained(dest / "unet", safe_serialization=True)
    del unet
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(dest / "vae"))  # type: ignore[no-untyped-call]
    vae.save_pretrained(dest / "vae", safe_serialization=True)
    del vae
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(dest / "text_encoder"))
    text.save_pretrained(dest / "text_encoder", safe_serialization=True)
    return dest


def synthetic_dataset(resolution: int) -> list[Example]:
    """PICTURES PNGs of coloured shapes, a little larger than `resolution` and not square."""
    width, height = resolution * 5 // 4, resolution * 9 // 8
    examples = []
    for i in range(PICTURES):
        colour, background = COLOURS[i], COLOURS[(i + 3) % len(COLOURS)]
        shape = SHAPES[i % len(SHAPES)]
        picture = Image.new("RGB", (width, height), background)
        draw = ImageDraw.Draw(picture)
        box = (width // 4, height // 4, width * 3 // 4, height * 3 // 4)
        if shape == "circle":
            draw.ellipse(box, fill=colour)
        elif shape == "square":
            draw.rectangle(box, fill=colour)
        elif shape == "triangle":
            draw.polygon([(box[0], box[3]), (box[2], box[3]), (width // 2, box[1])], fill=colour)
        else:
            draw.ellipse(box, outline=colour, width=max(2, resolution // 16))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        caption = f"a {colour} {shape} on a {background} background"
        examples.append(Example(f"{i:02d}-{colour}-{shape}.png", buffer.getvalue(), caption))
    return examples


# --- The two paths ------------------------------------------------------------------------


class LimnerPath:
    """limner's trainer, one optimizer step per `step()` (the first one also loads the model)."""

    name = "limner"

    def __init__(
        self, folder: Path, dataset: list[Example], request: TrainRequest, output: Path
    ) -> None:
        self.run: Iterator[Any] = train(folder, dataset, request, output, lambda: False)
        self.losses: list[float] = []

    def step(self) -> None:
        for item in self.run:
            if isinstance(item, TrainProgress):
                self.losses.append(item.loss)
                return
        raise RuntimeError("limner's trainer ended before its last step")

    def finish(self) -> None:
        """Let the trainer write its LoRA files (untimed) and check that it ends."""
        if not any(isinstance(item, TrainDone) for item in self.run):
            raise RuntimeError("limner's trainer ended without TrainDone")


class PlainPath:
    """train_text_to_image_lora.py's loop in plain diffusers + peft, the data prepared once."""

    name = "plain"

    def __init__(self, folder: Path, dataset: list[Example], resolution: int) -> None:
        dtype = torch.float32
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype)
        self.vae: Any = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype)  # type: ignore[no-untyped-call]
        self.unet: Any = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype)  # type: ignore[no-untyped-call]
        self.noise_scheduler: Any = DDPMScheduler.from_pretrained(folder / "scheduler")  # type: ignore[no-untyped-call]
        for part in (self.unet, self.vae, text_encoder):
            part.requires_grad_(False)

        config = LoraConfig(
            r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=TARGET_MODULES
        )
        with torch.random.fork_rng(devices=[]):  # the Gaussian init uses the global generator
            torch.manual_seed(SEED)
            self.unet.add_adapter(config)
        self.lora = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.lora, lr=LEARNING_RATE)
        self.lr_scheduler = get_scheduler("constant", self.optimizer)
        self.unet.train()

        captions = sorted({e.caption for e in dataset})
        with torch.no_grad():
            ids = tokenizer(
                captions,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            states = text_encoder(ids, return_dict=False)[0]
        self.embeddings = {c: states[i : i + 1] for i, c in enumerate(captions)}
        self.captions = [e.caption for e in dataset]
        self.pixels = [pixels(e.picture, resolution) for e in dataset]
        self.scaling = float(self.vae.config.scaling_factor)
        self.timesteps = int(self.noise_scheduler.config.num_train_timesteps)
        # The same seeded draws, in the same order, as limner: epochs shuffled by `random`,
        # latent sample, noise and timesteps from one CPU generator.
        self.rng = random.Random(SEED)
        self.order: list[int] = []
        self.generator = torch.Generator().manual_seed(SEED)
        self.losses: list[float] = []

    def step(self) -> None:
        if not self.order:
            self.order = list(range(len(self.pixels)))
            self.rng.shuffle(self.order)
        index = self.order.pop()
        text = self.embeddings[self.captions[index]]
        with torch.no_grad():
            posterior = self.vae.encode(self.pixels[index]).latent_dist
            latents = posterior.sample(generator=self.generator) * self.scaling
        noise = torch.randn(latents.shape, generator=self.generator)
        timesteps = torch.randint(0, self.timesteps, (latents.shape[0],), generator=self.generator)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = self.unet(noisy, timesteps, text, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.lora, 1.0)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(float(loss.detach()))

    def finish(self) -> None:
        pass


def pixels(picture: bytes, size: int) -> torch.Tensor:
    """(1, 3, size, size) in [-1, 1]: shorter side to `size` (Lanczos), centre crop."""
    with Image.open(io.BytesIO(picture)) as opened:
        rgb = opened.convert("RGB")
    scale = size / min(rgb.size)
    width, height = max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale))
    rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
    left, top = (width - size) // 2, (height - size) // 2
    rgb = rgb.crop((left, top, left + size, top + size))
    array = np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


# --- Timing -------------------------------------------------------------------------------


@dataclass
class Result:
    config: Config
    timed_steps: int
    limner: float  # steps/s, median over rounds
    plain: float
    served: float  # steps/s through `limner serve` (/api/create train), after the rounds
    rounds_limner: list[float]
    rounds_plain: list[float]
    loss_gap: float  # largest |limner loss - plain loss| over all steps


def timed(step: Callable[[], None], count: int) -> float:
    """Steps/s of `count` calls of `step`."""
    started = time.perf_counter()
    for _ in range(count):
        step()
    return count / (time.perf_counter() - started)


def bench(config: Config, folder: Path, rounds: int, work: Path) -> Result:
    dataset = synthetic_dataset(config.resolution)
    total = config.warmup + rounds * config.steps
    request = TrainRequest(
        resolution=config.resolution,
        steps=total,
        batch_size=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler="constant",
        rank=RANK,
        seed=SEED,
        precision="fp32",
        max_grad_norm=1.0,
    )
    plain = PlainPath(folder, dataset, config.resolution)
    limner = LimnerPath(folder, dataset, request, work / f"lora-{config.name}")
    paths: list[LimnerPath | PlainPath] = [limner, plain]
    for path in paths:  # limner's first step loads its model: untimed
        for _ in range(config.warmup):
            path.step()
    speeds: dict[str, list[float]] = {"limner": [], "plain": []}
    for round_ in range(rounds):
        for path in paths if round_ % 2 == 0 else paths[::-1]:
            speeds[path.name].append(timed(path.step, config.steps))
    limner.finish()
    gap = max(abs(a - b) for a, b in zip(limner.losses, plain.losses, strict=True))
    if not all(math.isfinite(x) for x in limner.losses + plain.losses):
        gap = math.nan  # a non-finite loss: the figures time a diverged run
    del limner, plain, paths
    gc.collect()
    served = served_steps_per_second(folder, dataset, request, config, work)
    return Result(
        config,
        rounds * config.steps,
        statistics.median(speeds["limner"]),
        statistics.median(speeds["plain"]),
        served,
        speeds["limner"],
        speeds["plain"],
        gap,
    )


def served_steps_per_second(
    folder: Path, dataset: list[Example], request: TrainRequest, config: Config, work: Path
) -> float:
    """The same training through a real `limner serve` on loopback: the model and pictures
    uploaded as blobs, `/api/create` with `train`, steps/s from the arrival of the progress
    lines after the warm-up: one over the median time between two (the runner process loads
    the model first: untimed)."""
    from limner.cli.models import folder_files
    from limner.client import Client

    store, port = work / f"store-{config.name}", _free_port()
    env = {**os.environ, "LIMNER_MODELS": str(store), "LIMNER_HOST": f"127.0.0.1:{port}"}
    server = subprocess.Popen([sys.executable, "-m", "limner", "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        sdk = Client(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while not sdk.is_running():
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("limner serve did not start")
            time.sleep(0.2)
        files = {name: sdk.create_blob(path) for name, path in folder_files(folder)}
        sdk.create("base", files=files)
        pictures = work / f"pictures-{config.name}"
        pictures.mkdir(exist_ok=True)
        uploaded = {}
        for example in dataset:
            (pictures / example.name).write_bytes(example.picture)
            (pictures / example.name).with_suffix(".txt").write_text(example.caption)
            uploaded[example.name] = sdk.create_blob(pictures / example.name)
            uploaded[Path(example.name).with_suffix(".txt").name] = sdk.create_blob(
                (pictures / example.name).with_suffix(".txt")
            )
        settings = {k: v for k, v in asdict(request).items() if v is not None}
        arrivals: list[float] = []
        lines = sdk.create(
            "trained", from_="base", train={**settings, "files": uploaded}, stream=True
        )
        for line in cast("Iterator[ProgressResponse]", lines):
            if line.status == "training":
                arrivals.append(time.perf_counter())
        # As the rounds' median drops the slow first rounds, the median step drops slow steps.
        intervals = [b - a for a, b in itertools.pairwise(arrivals[config.warmup - 1 :])]
        return 1 / statistics.median(intervals)
    finally:
        server.terminate()
        server.wait(30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def print_table(results: list[Result], rounds: int) -> None:
    print(f"\nsteps/s, median of {rounds} alternating rounds (target: limner / plain >= {TARGET});")
    print("served: the same run through `limner serve` (runner process, HTTP progress lines)")
    header = (
        f"{'config':<7} {'resolution':>10} {'steps':>6} {'limner steps/s':>15} "
        f"{'plain steps/s':>14} {'ratio':>6}  {'served steps/s':>14} {'ratio':>6}  "
        f"{'max |dloss|':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        res = f"{r.config.resolution}x{r.config.resolution}"
        print(
            f"{r.config.name:<7} {res:>10} {r.timed_steps:>6} {r.limner:>15.3f} "
            f"{r.plain:>14.3f} {r.limner / r.plain:>6.3f}  {r.served:>14.3f} "
            f"{r.served / r.plain:>6.3f}  {r.loss_gap:>11.1e}"
        )
    for r in results:
        each = ", ".join(
            f"{a:.3f}/{b:.3f}" for a, b in zip(r.rounds_limner, r.rounds_plain, strict=True)
        )
        print(f"  {r.config.name} rounds (limner/plain steps/s): {each}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="tiny,sd15", help="comma-separated: tiny, sd15")
    parser.add_argument(
        "--resolution", type=int, default=256, help="SD 1.5's training size (tiny: its 64)"
    )
    parser.add_argument(
        "--steps", type=int, help="timed steps per path per round (default: tiny 20, sd15 1)"
    )
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds")
    parser.add_argument(
        "--warmup", type=int, help="untimed steps per path first (default: tiny 10, sd15 1)"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = set(names) - {"tiny", "sd15"}
    if unknown or not names:
        parser.error(f"--configs takes tiny and/or sd15, not {args.configs!r}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, "
        f"rank {RANK}, lr {LEARNING_RATE}, batch 1, seed {SEED}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="limner-bench-train-") as temporary:
        work = Path(temporary)
        for name in names:
            if name == "tiny":
                config = Config("tiny", "tiny SD (SD 1.5 topology, tiny widths)", 64, 20, 10)
                folder = write_tiny_sd(work / "tiny", seed=SEED, ip_adapter=False)
            else:
                config = Config(
                    "sd15", "SD 1.5 architecture, random weights", args.resolution, 1, 1
                )
                print("\nbuilding SD 1.5 with random weights (a minute)...", flush=True)
                folder = write_sd15_random(work / "sd15")
            if args.steps is not None:
                config.steps = args.steps
            if args.warmup is not None:
                config.warmup = args.warmup
            print(
                f"\n{config.label}: {config.resolution}x{config.resolution}, "
                f"{config.warmup} warm-up step(s), then {args.rounds} rounds of {config.steps}",
                flush=True,
            )
            results.append(bench(config, folder, args.rounds, work))
            gc.collect()
    print_table(results, args.rounds)
    # This benchmark's own two threads make a load of about 2; well above that, another process
    # shared the cores and OpenMP's threads waited for each other: do not trust the figures.
    print(
        "load average at the end (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    )


if __name__ == "__main__":
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    main()
