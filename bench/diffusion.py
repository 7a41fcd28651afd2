"""Time per picture through limner's server vs the raw diffusers pipeline, side by side.

    .venv/bin/python bench/diffusion.py              # tiny model, then SD 1.5 at 512x512
    .venv/bin/python bench/diffusion.py --only tiny  # seconds, for a quick look

For each model, in one run and on the same machine:
  raw fp32         StableDiffusionPipeline as diffusers loads it by default (float32)
  raw auto         the same pipeline in limner's default precision (bf16 where the CPU has it)
  raw auto + cl    the same with the UNet and VAE in channels_last memory layout
  limner torch     `limner serve` + Client.generate_image, LIMNER_DRAW_ENGINE=torch
  limner openvino  the same with LIMNER_DRAW_ENGINE=openvino (UNet and VAE decoder as
                   OpenVINO graphs; converted before the timing, as a cached model is)
  limner torch + tiny VAE, limner openvino + tiny VAE
                   the same with `vae="tiny"`: the model's TAESD (diffusers' AutoencoderTiny,
                   TAESD's real architecture) decodes instead of the VAE (on torch both ways)
and prints each as a ratio of raw auto; then the VAE decode alone, full VAE vs TAESD, at the
same size (`--only decode`: that stage only, at 512x512, in seconds); then each stage (a UNet
call with guidance, the full VAE decode, TAESD) in seconds, TFLOP (counted by torch) and
TFLOP/s as a fraction of a large matmul timed in the same run (`--only stages`: only that). Speed does not depend on weight values, so the SD 1.5
architecture is built with random weights (~4 GB on disk in a temporary folder).
With --ov-python PYTHON (a Python of its own venv with optimum-intel, which pins a transformers
and a torch with torchvision that limner's environment does not take), one more path:
  openvino via optimum-intel   OVStableDiffusionPipeline (bench/ov_direct.py), exported once
                   before the timing, OpenVINO's own defaults
and limner's default path as a ratio of it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import limner
from limner.engines.diffusion import cpu_has_bf16
from limner.tiny import write_tiny_sd

PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def write_sd15_random(dest: Path, tokenizer_from: Path) -> Path:
    """SD 1.5's exact architecture (UNet 860M, CLIP-L text 123M, VAE 84M) with random weights,
    and TAESD's (2.4M) as its tiny autoencoder in vae_tiny/."""
    torch.manual_seed(0)
    unet = sd15_unet()
    vae = sd15_vae()
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            vocab_size=49408,
            hidden_act="quick_gelu",
            projection_dim=768,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_from / "tokenizer")
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(dest, safe_serialization=True)
    AutoencoderTiny().save_pretrained(dest / "vae_tiny", safe_serialization=True)
    return dest


def sd15_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )  # fmt: skip


def time_decoders(size: int, runs: int) -> dict[str, float]:
    """One picture's latents decoded by SD 1.5's VAE and by TAESD (diffusers' AutoencoderTiny
    with its default config, TAESD's real architecture), as limner runs them on a CPU: its
    default precision, channels_last."""
    torch.manual_seed(0)
    latents = torch.randn(1, 4, size // 8, size // 8, dtype=auto_dtype())
    timed = {}
    diffusers_logging.set_verbosity_error()  # `to()` warns that no module stays in float32
    for label, model in (("full VAE decode", sd15_vae()), ("TAESD decode", AutoencoderTiny())):
        model = model.to(auto_dtype()).to(memory_format=torch.channels_last).eval()

        def once(model: torch.nn.Module = model) -> None:
            with torch.no_grad():
                model.decode(latents)

        timed[label] = best_of(once, runs)
    return timed


def sd15_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )  # fmt: skip


def matmul_ceiling(runs: int, n: int = 4096) -> float:
    """FLOP/s of one large matmul in limner's default precision: what these threads can do."""
    a, b = (torch.randn(n, n, dtype=auto_dtype()) for _ in range(2))
    return 2 * n**3 / best_of(lambda: torch.matmul(a, b), runs)


def time_stages(size: int, runs: int) -> list[tuple[str, float, float]]:
    """(stage, seconds, FLOPs) of one UNet call with classifier-free guidance (a batch of two),
    one full VAE decode and one TAESD decode, as limner's torch path runs them on a CPU (its
    default precision, channels_last). FLOPs are counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    dtype, side = auto_dtype(), size // 8
    latents = torch.randn(2, 4, side, side, dtype=dtype)
    words = torch.randn(2, 77, 768, dtype=dtype)
    diffusers_logging.set_verbosity_error()
    stages: list[tuple[str, Callable[[], object]]] = []
    unet = sd15_unet().to(dtype).to(memory_format=torch.channels_last).eval()
    stages.append(("UNet call (CFG: batch 2)", lambda: unet(latents, 500, words)))
    vae = sd15_vae().to(dtype).to(memory_format=torch.channels_last).eval()
    stages.append(("full VAE decode", lambda: vae.decode(latents[:1])))
    tiny = AutoencoderTiny().to(dtype).to(memory_format=torch.channels_last).eval()
    stages.append(("TAESD decode", lambda: tiny.decode(latents[:1])))
    timed = []
    with torch.no_grad():
        for label, call in stages:
            with FlopCounterMode(display=False) as counter:
                call()
            timed.append((label, best_of(call, runs), float(counter.get_total_flops())))
    return timed


def print_stages(size: int, runs: int) -> None:
    ceiling = matmul_ceiling(runs)
    print(f"\n  stages at {size}x{size} on limner's torch path, against a {auto_dtype()} matmul "
          f"(4096^3) at {ceiling / 1e12:.2f} TFLOP/s on these threads:")  # fmt: skip
    for label, seconds, flops in time_stages(size, runs):
        achieved = flops / seconds
        print(f"  {label:38} {seconds:8.3f} s  {flops / 1e12:6.2f} TFLOP  "
              f"{achieved / 1e12:5.2f} TFLOP/s  {achieved / ceiling:5.0%} of the matmul")  # fmt: skip


def time_raw(
    folder: Path, dtype: torch.dtype, size: int, steps: int, runs: int, channels_last: bool = False
) -> float:
    pipe = StableDiffusionPipeline.from_pretrained(
        folder,
        torch_dtype=dtype,
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)

    def once() -> None:
        generator = torch.Generator("cpu").manual_seed(1)
        pipe(PROMPT, width=size, height=size, num_inference_steps=steps, generator=generator)

    return best_of(once, runs)


def time_limner(
    folder: Path, size: int, steps: int, runs: int, engine: str, vae: str | None = None
) -> float:
    with tempfile.TemporaryDirectory(prefix="limner-bench-") as models:
        port = free_port()
        env = {**os.environ, "LIMNER_MODELS": models, "LIMNER_HOST": f"127.0.0.1:{port}",
               "LIMNER_DRAW_ENGINE": engine}  # fmt: skip
        server = subprocess.Popen(
            [sys.executable, "-m", "limner", "serve"], env=env, stderr=subprocess.DEVNULL
        )
        try:
            client = limner.Client(f"127.0.0.1:{port}")
            while not client.is_running():
                time.sleep(0.1)
            files = {
                str(p.relative_to(folder)): client.create_blob(p)
                for p in folder.rglob("*")
                if p.is_file()
            }
            client.create("bench", files=files)
            client.generate("bench", "", keep_alive=-1)  # load once, outside the timing

            def once() -> None:
                client.generate_image(
                    "bench", PROMPT, width=size, height=size, steps=steps, seed=1, vae=vae
                )

            return best_of(once, runs)
        finally:
            server.terminate()
            server.wait(30)


def time_ov_direct(python: str, folder: Path, size: int, steps: int, runs: int) -> float:
    """bench/ov_direct.py in optimum-intel's own venv: its warm-up and median, in seconds."""
    script = Path(__file__).with_name("ov_direct.py")
    command = [python, str(script), str(folder), "--size", str(size), "--steps", str(steps),
               "--runs", str(runs)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  (optimum-intel: OpenVINO {result['openvino']}, precision {result['precision']})")
    seconds: float = result["seconds"]
    return seconds


def best_of(call: Callable[[], None], runs: int) -> float:
    call()  # warm-up: first-call allocations and kernel choices
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def auto_dtype() -> torch.dtype:
    """limner's default precision on this CPU (engines/diffusion.py picks the same)."""
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def bench(
    label: str, folder: Path, size: int, steps: int, runs: int, ov_python: str | None = None
) -> None:
    auto = auto_dtype()
    print(f"\n{label}: {size}x{size}, {steps} steps, median of {runs} after a warm-up")
    name = str(auto).removeprefix("torch.")
    timed = {
        "raw diffusers fp32": time_raw(folder, torch.float32, size, steps, runs),
        f"raw diffusers {name}": time_raw(folder, auto, size, steps, runs),
        f"raw diffusers {name} + channels_last": time_raw(folder, auto, size, steps, runs, True),
        "limner torch": time_limner(folder, size, steps, runs, "torch"),
        "limner openvino": time_limner(folder, size, steps, runs, "openvino"),
        "limner torch + tiny VAE": time_limner(folder, size, steps, runs, "torch", vae="tiny"),
        # limner's default path (OpenVINO's UNet) with TAESD decoding: "faster again".
        "limner openvino + tiny VAE": time_limner(
            folder, size, steps, runs, "openvino", vae="tiny"
        ),
    }
    if ov_python:
        direct = time_ov_direct(ov_python, folder, size, steps, runs)
        timed["openvino via optimum-intel"] = direct
    base = timed[f"raw diffusers {name}"]
    for label, seconds in timed.items():
        print(f"  {label:38} {seconds:8.3f} s/picture  {seconds / base:6.3f} x raw {name}")
    if ov_python:
        ratio = timed["limner openvino"] / timed["openvino via optimum-intel"]
        print(f"  limner's default path (openvino) / openvino via optimum-intel: {ratio:.3f}")
    print_decoders(size, runs)
    print_stages(size, runs)


def print_decoders(size: int, runs: int) -> None:
    decoders = time_decoders(size, runs)
    full = decoders["full VAE decode"]
    print(f"  VAE decode alone at {size}x{size} (SD 1.5's VAE vs TAESD, random weights):")
    for label, seconds in decoders.items():
        print(f"  {label:38} {seconds:8.3f} s/picture  {full / seconds:6.1f} x faster than full")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["tiny", "sd15", "decode", "stages"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ov-python", help="a Python with optimum-intel: adds that path")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, limner default precision: {auto_dtype()}"
    )
    if args.only == "decode":
        print_decoders(512, args.runs)
        return
    if args.only == "stages":
        print_stages(512, args.runs)
        return
    with tempfile.TemporaryDirectory(prefix="limner-bench-models-") as work:
        tiny = write_tiny_sd(Path(work) / "tiny", seed=0, ip_adapter=False, tiny_vae=True)
        if args.only in (None, "tiny"):
            bench("tiny SD (SD 1.5 topology, tiny widths)", tiny, 64, args.steps, args.runs,
                  args.ov_python)  # fmt: skip
        if args.only in (None, "sd15"):
            print("\nbuilding SD 1.5 with random weights (a minute)...")
            sd15 = write_sd15_random(Path(work) / "sd15", tiny)
            bench("SD 1.5 architecture, random weights", sd15, 512, args.steps,
                  max(1, args.runs - 2), args.ov_python)  # fmt: skip


if __name__ == "__main__":
    diffusers_logging.disable_progress_bar()
    main()
