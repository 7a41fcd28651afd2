"""Time per picture through limner's server vs the raw diffusers pipeline, side by side.

    .venv/bin/python bench/diffusion.py              # tiny model, then SD 1.5 at 512x512
    .venv/bin/python bench/diffusion.py --only tiny  # seconds, for a quick look
    .venv/bin/python bench/diffusion.py --only sd15 --ov-python ~/ovd/bin/python

For each model, in one run and on the same machine, with the model's Euler scheduler:
  raw bf16         diffusers' StableDiffusionPipeline in limner's default precision (bf16
                   where the CPU has it; float32 is diffusers' default, ~2x slower)
  raw bf16 + cl    the same with the UNet and VAE in channels_last memory layout
  limner torch     `limner serve` + Client.generate_image, LIMNER_DRAW_ENGINE=torch
  limner openvino  the same with LIMNER_DRAW_ENGINE=openvino, the default on CPUs (UNet and
                   VAE decoder as OpenVINO graphs; converted before the timing, as a cached
                   model is)
  ... + tiny VAE   limner's two paths with `vae="tiny"`: the model's TAESD (diffusers'
                   AutoencoderTiny) decodes instead of the VAE
  openvino via optimum-intel
                   with --ov-python PYTHON (a Python of its own venv with optimum-intel, which
                   pins a transformers and a torch with torchvision that limner's environment
                   does not take): OVStableDiffusionPipeline (bench/ov_direct.py), exported once
                   before the timing, OpenVINO's own defaults
All paths are loaded first, each draws once to warm up, then they take turns for the rounds.
Each prints seconds per UNet step (with guidance: a batch of two), for the decode (from the last
step to the picture) and in all, and the ratio to raw bf16. For SD 1.5, each stage (a UNet call,
the full VAE decode, TAESD) is first timed alone on torch and counted in FLOPs by torch, against
a large matmul timed in the same run (`--only stages`: only that); the paths' steps and decodes
are then given as fractions of that matmul too. `--only openvino-profile`: where OpenVINO's
UNet call spends its time, by kind of layer. `--only torch-options`: fused QKV, torch.compile
and plain-math attention on the torch path's UNet call, in turns. Speed does not depend on weight values, so the
SD 1.5 architecture is built with random weights (~4 GB on disk in a temporary folder).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    EulerDiscreteScheduler,
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
    # Euler, as the issue measured: one UNet call per step on every path (PNDM makes 5 of 4).
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
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


def sd15_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )  # fmt: skip


def matmul_ceiling(runs: int, n: int = 4096) -> float:
    """FLOP/s of one large n x n matmul in limner's default precision, the faster of torch's
    and OpenVINO's (their kernels differ by CPU): what these threads can do."""
    a, b = (torch.randn(n, n, dtype=auto_dtype()) for _ in range(2))
    by_torch = 2 * n**3 / best_of(lambda: torch.matmul(a, b), runs)
    by_openvino = 2 * n**3 / openvino_matmul(n, runs)
    print(f"\n  {auto_dtype()} matmul ({n}^3): torch {by_torch / 1e12:.2f} TFLOP/s, "
          f"OpenVINO {by_openvino / 1e12:.2f} TFLOP/s")  # fmt: skip
    return max(by_torch, by_openvino)


def openvino_matmul(n: int, runs: int) -> float:
    """Seconds for one n x n by n x n matmul on OpenVINO's CPU plugin, in limner's default
    precision (the same hint as its drawing graphs)."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    weights = ops.constant(rng.standard_normal((n, n), dtype=np.float32))
    left = ops.parameter([n, n], ov.Type.f32)
    hint = openvino_hint()
    graph = ov.Model([ops.matmul(left, weights, False, False)], [left])
    compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    values = rng.standard_normal((n, n), dtype=np.float32)
    return best_of(lambda: compiled([values]), runs)


def guided_inputs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded latents and text of one SD 1.5 UNet call with guidance (a batch of two) at
    `size`, in limner's default precision."""
    torch.manual_seed(0)
    side = size // 8
    return (torch.randn(2, 4, side, side, dtype=auto_dtype()),
            torch.randn(2, 77, 768, dtype=auto_dtype()))  # fmt: skip


def time_stages(size: int, runs: int) -> list[tuple[str, float, float]]:
    """(stage, seconds, FLOPs) of one UNet call with classifier-free guidance (a batch of two),
    one full VAE decode and one TAESD decode, as limner's torch path runs them on a CPU (its
    default precision, channels_last). FLOPs are counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    dtype = auto_dtype()
    latents, words = guided_inputs(size)
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


def print_stages(size: int, runs: int) -> Ceiling:
    ceiling = matmul_ceiling(runs)
    print(f"  stages at {size}x{size} on limner's torch path, against that matmul "
          f"at {ceiling / 1e12:.2f} TFLOP/s:")  # fmt: skip
    stages = time_stages(size, runs)
    for label, seconds, flops in stages:
        achieved = flops / seconds
        print(f"  {label:38} {seconds:8.3f} s  {flops / 1e12:6.2f} TFLOP  "
              f"{achieved / 1e12:5.2f} TFLOP/s  {achieved / ceiling:5.0%} of the matmul")  # fmt: skip
    unet, vae, taesd = (flops for _, _, flops in stages)
    return Ceiling(ceiling, unet, vae, taesd)


def print_openvino_profile(size: int) -> None:
    """Where one UNet call with guidance spends its time on OpenVINO, by kind of layer, from the
    CPU plugin's own counters: the SD 1.5 UNet traced and compiled as limner's engine does."""
    import numpy as np
    import openvino as ov

    torch.manual_seed(0)
    unet, side = sd15_unet().eval(), size // 8
    inputs = (torch.randn(2, 4, side, side), torch.tensor(500.0), torch.randn(2, 77, 768))
    with torch.no_grad():
        graph = ov.convert_model(UNetCall(unet), example_input=inputs)
    hint = openvino_hint()
    compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                      "PERF_COUNT": True})  # fmt: skip
    request = compiled.create_infer_request()
    arrays = [np.asarray(tensor) for tensor in inputs]
    request.infer(arrays)  # warm-up
    request.infer(arrays)
    by_kind: dict[str, float] = {}
    for layer in request.profiling_info:
        by_kind[layer.node_type] = by_kind.get(layer.node_type, 0.0) + (
            layer.real_time.total_seconds()
        )
    total = sum(by_kind.values())
    print(f"\n  OpenVINO's UNet call (CFG: batch 2) at {size}x{size}, {hint}, by kind of layer: "
          f"{total:.3f} s")  # fmt: skip
    for kind, seconds in sorted(by_kind.items(), key=lambda item: -item[1])[:6]:
        print(f"  {kind:38} {seconds:8.3f} s  {seconds / total:5.1%}")


def print_torch_options(size: int, runs: int) -> None:
    """What else could speed up the torch path's UNet call (CFG, bf16, channels_last), in turns
    in one process: diffusers' fused QKV projections, torch.compile (inductor) with and without
    freezing the weights, and the plain-math attention that the fused kernel replaces. Prints
    each one's first call (compiling) and its median, and how far its output is from eager's."""
    import copy

    dtype = auto_dtype()
    latents, words = guided_inputs(size)
    diffusers_logging.set_verbosity_error()
    eager = sd15_unet().to(dtype).to(memory_format=torch.channels_last).eval()
    fused = copy.deepcopy(eager)
    fused.fuse_qkv_projections()
    # Two separate lambdas: dynamo keeps its compiled graphs per code object, and would reuse the
    # first graph for a second copy of the same module.
    compiled = torch.compile(lambda: fused(latents, 500, words).sample)
    frozen = torch.compile(lambda: fused(latents, 500, words).sample)

    def frozen_call() -> Any:
        import torch._inductor.config as inductor

        # freezing folds the weights into the graph as constants; it is read when compiling
        with inductor.patch(freezing=True):
            return frozen()

    def math_attention() -> Any:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.MATH]):
            return eager(latents, 500, words).sample

    calls: dict[str, Callable[[], Any]] = {
        "eager (fused attention)": lambda: eager(latents, 500, words).sample,
        "fused QKV": lambda: fused(latents, 500, words).sample,
        "fused QKV + torch.compile": compiled,
        "fused QKV + torch.compile, frozen": frozen_call,
        "plain-math attention": math_attention,
    }
    print(f"\n  the torch path's UNet call (CFG: batch 2) at {size}x{size}, {dtype}, "
          f"median of {runs} in turns:")  # fmt: skip
    with torch.no_grad():
        reference = calls["eager (fused attention)"]().float()
        for label, call in calls.items():
            started = time.perf_counter()
            difference = (call().float() - reference).abs()
            first = time.perf_counter() - started
            print(f"  {label:36} first call {first:6.1f} s, from eager: "
                  f"mean {difference.mean():.4f}, max {difference.max():.4f}")  # fmt: skip
        times: dict[str, list[float]] = {label: [] for label in calls}
        for label in turns(list(calls), runs):
            started = time.perf_counter()
            calls[label]()
            times[label].append(time.perf_counter() - started)
    base = statistics.median(times["eager (fused attention)"])
    for label, seconds in times.items():
        median = statistics.median(seconds)
        print(f"  {label:36} {median:8.3f} s  {median / base:6.3f} of eager")
    print(f"  (eager's output: standard deviation {reference.std():.3f})")


class UNetCall(torch.nn.Module):
    """The UNet's noise prediction alone, as a module to trace."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: Any, timestep: Any, text: Any) -> Any:
        return self.unet(sample, timestep, text, return_dict=False)[0]


@dataclass(frozen=True)
class Drawn:
    """One picture's times: the whole call, one UNet step (the median between two steps' ends)
    and the decode (from the last step's end to the picture: the VAE, plus making the picture)."""

    total: float
    step: float
    decode: float

    @classmethod
    def from_times(cls, started: float, step_ends: Sequence[float], ended: float) -> Drawn:
        between = [later - earlier for earlier, later in itertools.pairwise(step_ends)]
        step = statistics.median(between) if between else step_ends[0] - started
        return cls(ended - started, step, ended - step_ends[-1])

    @classmethod
    def median(cls, drawn: Sequence[Drawn]) -> Drawn:
        return cls(
            *(statistics.median(getattr(d, f) for d in drawn) for f in ("total", "step", "decode"))
        )


class RawDiffusers:
    """diffusers' own StableDiffusionPipeline in one precision, drawing in either memory layout
    (switched between calls, outside the timing)."""

    def __init__(self, folder: Path, dtype: torch.dtype) -> None:
        self.pipe = StableDiffusionPipeline.from_pretrained(
            folder, dtype=dtype, safety_checker=None, requires_safety_checker=False,
            local_files_only=True,
        )  # fmt: skip
        self.pipe.set_progress_bar_config(disable=True)

    def draw(self, size: int, steps: int, channels_last: bool) -> Drawn:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.pipe.unet.to(memory_format=layout)
        self.pipe.vae.to(memory_format=layout)
        step_ends: list[float] = []

        def on_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
            step_ends.append(time.perf_counter())
            return tensors

        started = time.perf_counter()
        self.pipe(PROMPT, width=size, height=size, num_inference_steps=steps,
                  generator=torch.Generator("cpu").manual_seed(1), callback_on_step_end=on_step)  # fmt: skip
        return Drawn.from_times(started, step_ends, time.perf_counter())


class LimnerServer:
    """`limner serve` with one drawing engine and the model stored in it, loaded; each picture
    is drawn through Client.generate_image (HTTP, scheduler, runner, PNG, base64)."""

    def __init__(self, folder: Path, engine: str) -> None:
        self.models = tempfile.TemporaryDirectory(prefix="limner-bench-")
        port = free_port()
        env = {**os.environ, "LIMNER_MODELS": self.models.name,
               "LIMNER_HOST": f"127.0.0.1:{port}", "LIMNER_DRAW_ENGINE": engine}  # fmt: skip
        self.server = subprocess.Popen(
            [sys.executable, "-m", "limner", "serve"], env=env, stderr=subprocess.DEVNULL
        )
        self.client = limner.Client(f"127.0.0.1:{port}")
        while not self.client.is_running():
            time.sleep(0.1)
        files = {str(p.relative_to(folder)): self.client.create_blob(p)
                 for p in folder.rglob("*") if p.is_file()}  # fmt: skip
        self.client.create("bench", files=files)
        self.client.generate("bench", "", keep_alive=-1)  # loaded (and converted) before timing

    def draw(self, size: int, steps: int, vae: str | None = None) -> Drawn:
        step_ends: list[float] = []
        started = time.perf_counter()
        self.client.generate_image("bench", PROMPT, width=size, height=size, steps=steps, seed=1,
                                   vae=vae, progress=lambda done, total: step_ends.append(
                                       time.perf_counter()))  # fmt: skip
        return Drawn.from_times(started, step_ends, time.perf_counter())

    def close(self) -> None:
        self.server.terminate()
        self.server.wait(30)
        self.models.cleanup()


class OptimumIntel:
    """bench/ov_direct.py kept running in optimum-intel's own venv: one picture per line."""

    def __init__(self, python: str, folder: Path, size: int, steps: int) -> None:
        script = Path(__file__).with_name("ov_direct.py")
        self.process = subprocess.Popen(
            [python, str(script), str(folder), "--size", str(size), "--steps", str(steps)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        ready = self._answer()
        print(f"  (optimum-intel: OpenVINO {ready['openvino']}, precision {ready['precision']})")

    def _answer(self) -> dict[str, Any]:
        """The next JSON line it prints (libraries may print other lines first)."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                answer: dict[str, Any] = json.loads(line)
                return answer
        raise RuntimeError(f"bench/ov_direct.py ended with {self.process.wait()}")

    def draw(self) -> Drawn:
        assert self.process.stdin is not None
        self.process.stdin.write("draw\n")
        self.process.stdin.flush()
        times = self._answer()
        return Drawn.from_times(times["started"], times["step_ends"], times["ended"])

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(60)


def in_turns(paths: dict[str, Callable[[], Drawn]], runs: int) -> dict[str, Drawn]:
    """Each path's median over `runs` rounds after one warm-up each; every round the paths take
    turns, starting one further along, so a machine that speeds up or slows down weighs on all."""
    for draw in paths.values():
        draw()
    drawn: dict[str, list[Drawn]] = {label: [] for label in paths}
    for label in turns(list(paths), runs):
        drawn[label].append(paths[label]())
    return {label: Drawn.median(times) for label, times in drawn.items()}


def turns(labels: list[str], runs: int) -> Iterator[str]:
    """`runs` rounds of `labels`, each round starting one further along."""
    for round_ in range(runs):
        yield from labels[round_ % len(labels) :] + labels[: round_ % len(labels)]


def best_of(call: Callable[[], object], runs: int) -> float:
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


def openvino_hint() -> str:
    """OpenVINO's precision hint for limner's default precision, as its drawing graphs get."""
    return "bf16" if auto_dtype() == torch.bfloat16 else "f32"


@dataclass(frozen=True)
class Ceiling:
    """What a 512x512 picture's stages cost (FLOPs counted by torch) and what these threads can
    do (a large matmul in limner's default precision, FLOP/s), from print_stages."""

    matmul: float
    unet_call: float
    vae_decode: float
    taesd_decode: float

    def of(self, flops: float, seconds: float) -> str:
        return f"{flops / seconds / self.matmul:4.0%}"


def bench(
    label: str, folder: Path, size: int, steps: int, runs: int, ov_python: str | None,
    ceiling: Ceiling | None = None,
) -> None:  # fmt: skip
    name = str(auto_dtype()).removeprefix("torch.")
    print(f"\n{label}: {size}x{size}, {steps} steps, median of {runs} rounds after a warm-up")
    raw = RawDiffusers(folder, auto_dtype())
    torch_path, openvino = LimnerServer(folder, "torch"), LimnerServer(folder, "openvino")
    direct = OptimumIntel(ov_python, folder, size, steps) if ov_python else None
    paths: dict[str, Callable[[], Drawn]] = {
        f"raw diffusers {name}": lambda: raw.draw(size, steps, channels_last=False),
        f"raw diffusers {name} + channels_last": lambda: raw.draw(size, steps, channels_last=True),
        "limner torch": lambda: torch_path.draw(size, steps),
        DEFAULT: lambda: openvino.draw(size, steps),
        "limner torch + tiny VAE": lambda: torch_path.draw(size, steps, vae="tiny"),
        TINY: lambda: openvino.draw(size, steps, vae="tiny"),
    }
    if direct:
        paths[DIRECT] = direct.draw
    try:
        timed = in_turns(paths, runs)
    finally:
        for path in (torch_path, openvino, direct):
            if path:
                path.close()
    print_paths(timed, f"raw diffusers {name}", ceiling)


DEFAULT = "limner openvino (the default)"
TINY = "limner openvino + tiny VAE"
DIRECT = "openvino via optimum-intel"


def print_paths(timed: dict[str, Drawn], base: str, ceiling: Ceiling | None) -> None:
    print(f"  {'path':38} {'s/UNet step':>11} {'decode s':>9} {'total s':>8} {'vs ' + base:>20}"
          + ("  step, decode of the matmul" if ceiling else ""))  # fmt: skip
    for label, drawn in timed.items():
        line = (f"  {label:38} {drawn.step:11.3f} {drawn.decode:9.3f} {drawn.total:8.2f} "
                f"{drawn.total / timed[base].total:20.3f}")  # fmt: skip
        if ceiling:
            decode = ceiling.taesd_decode if "tiny" in label else ceiling.vae_decode
            line += (f"  {ceiling.of(ceiling.unet_call, drawn.step)}, "
                     f"{ceiling.of(decode, drawn.decode)}")  # fmt: skip
        print(line)
    if DIRECT in timed:
        ratio = timed[DEFAULT].total / timed[DIRECT].total
        print(f"  limner's default path / openvino via optimum-intel: {ratio:.3f}")
    print(f"  limner's default path with vae=tiny: "
          f"{timed[DEFAULT].total / timed[TINY].total:.2f}x faster")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", choices=["tiny", "sd15", "stages", "openvino-profile", "torch-options"]
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="rounds for the tiny model")
    parser.add_argument("--sd15-runs", type=int, default=2, help="rounds for SD 1.5")
    parser.add_argument("--ov-python", help="a Python with optimum-intel: adds that path")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"limner default precision: {auto_dtype()}")  # fmt: skip
    if args.only == "stages":
        print_stages(512, args.runs)
        return
    if args.only == "openvino-profile":
        print_openvino_profile(512)
        return
    if args.only == "torch-options":
        print_torch_options(512, args.runs)
        return
    with tempfile.TemporaryDirectory(prefix="limner-bench-models-") as work:
        tiny = write_tiny_sd(Path(work) / "tiny", seed=0, ip_adapter=False, tiny_vae=True)
        if args.only in (None, "tiny"):
            bench("tiny SD (SD 1.5 topology, tiny widths)", tiny, 64, args.steps, args.runs,
                  args.ov_python)  # fmt: skip
        if args.only in (None, "sd15"):
            ceiling = print_stages(512, args.sd15_runs)
            print("\nbuilding SD 1.5 with random weights (a minute)...")
            sd15 = write_sd15_random(Path(work) / "sd15", tiny)
            bench("SD 1.5 architecture, random weights", sd15, 512, args.steps, args.sd15_runs,
                  args.ov_python, ceiling)  # fmt: skip


if __name__ == "__main__":
    diffusers_logging.disable_progress_bar()
    main()
