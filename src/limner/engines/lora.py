"""LoRA training for Stable Diffusion 1.x/2.x: a dataset of the user's pictures in, a LoRA out.

This module knows nothing about HTTP, jobs or the store; the request, the dataset and the
steps are defined torch-free in `engines/training.py`. `Trainer` is a runner's engine (the
base model loaded once, frozen, its own LoRAs fused); `train()` does the same for a diffusers
folder in one call. Heavy imports (torch, diffusers, peft) happen here only.

Training (`train`) follows diffusers' examples/text_to_image/train_text_to_image_lora.py: all
base weights frozen (cast to the chosen precision), `unet.add_adapter(LoraConfig(...))` on the
attention projections with LoRA weights in fp32, latents x scaling_factor, Gaussian noise at
uniform random timesteps, an epsilon or v-prediction target per the model's scheduler config,
MSE loss, gradient clipping, AdamW on the LoRA weights only, diffusers' LR schedules and
gradient accumulation (`steps` counts optimizer steps). Everything random comes from
`request.seed`, so the same seed on the same machine and dtype gives the same loss curve:
bit-identical on one torch thread, within float rounding (~1e-7) on more, where some CPU
kernels sum in a varying order (measured).
Text embeddings are computed once per caption (the text encoder is frozen).

Steps yielded: `TrainProgress` after every step, `TrainCheckpoint` every `checkpoint_every`
steps (`output/checkpoint-<step>/pytorch_lora_weights.safetensors`), `TrainValidation` every
`validation_every` steps (a PNG drawn with the adapter at a fixed seed), and `TrainDone` at the
end, after `output/pytorch_lora_weights.safetensors` (diffusers keys) and
`output/lora_kohya.safetensors` (`lora_unet_*` keys, for Automatic1111 and ComfyUI) are
written. `cancelled()` is polled before every step; a cancelled run ends without `TrainDone`
and leaves the checkpoints already written. Every weights file is written under a temporary
name and renamed, so a crash never leaves a half-written file under a final name.

Torch work runs on the thread that iterates the generator; iterate it from one thread.
"""

from __future__ import annotations

import io
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.state_dict_utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_kohya,
)
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import save_file

from limner.engines import LoadOptions
from limner.engines.diffusion import (
    LORA_FOLDER,
    PipelineLoader,
    _fuse_loras,
    _load_single_file,
    _pick_precision,
    _single_checkpoint,
    load_diffusers_pipeline,
    pipeline_bytes,
)
from limner.engines.training import (
    Example,
    TrainCheckpoint,
    TrainDone,
    TrainProgress,
    TrainRequest,
    TrainStep,
    TrainValidation,
    check_request,
)
from limner.errors import InvalidRequest
from limner.pictures import FORMATS
from limner.store.formats import safetensors_header, sd_checkpoint_type

TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
VALIDATION_STEPS = 20
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
KOHYA_NAME = "lora_kohya.safetensors"


# --- Training ----------------------------------------------------------------------------


@dataclass
class _Model:
    """The frozen parts of the pipeline and what training needs to know about them."""

    pipe: Any
    unet: Any
    noise: Any  # DDPMScheduler from the model's scheduler config
    device: str
    dtype: torch.dtype
    precision: str
    resolution: int


class Trainer:
    """A training runner's engine: the base model, frozen, loaded once; one `train()` per load.

    The model's own LoRAs are fused first (at `options.adapter_scale`), so a new adapter
    learns on top of the pictures the model draws today.
    """

    def __init__(
        self, folder: Path, options: LoadOptions, loader: PipelineLoader = load_diffusers_pipeline
    ) -> None:
        diffusers_logging.disable_progress_bar()  # a runner's log is no terminal
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.on_gpu = self.device == "cuda"
        self.dtype, self.precision = _pick_precision(options.precision, self.device)
        pipe = loader(Path(folder), self.dtype)
        if isinstance(pipe, StableDiffusionXLPipeline):
            raise InvalidRequest("LoRA training runs on Stable Diffusion 1.x/2.x models, not SDXL")
        self.noise = DDPMScheduler.from_config(pipe.scheduler.config)  # type: ignore[no-untyped-call]
        prediction = self.noise.config.prediction_type
        if prediction not in ("epsilon", "v_prediction"):
            raise InvalidRequest(f"cannot train prediction type {prediction!r}")
        self.base_loras = _fuse_loras(
            pipe, Path(folder) / LORA_FOLDER, options.adapter_scale, options.adapter_weights
        )
        pipe.set_progress_bar_config(disable=True)
        for part in (pipe.unet, pipe.vae, pipe.text_encoder):
            part.requires_grad_(False)
        pipe.to(self.device)
        self.pipe = pipe
        self.default_size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        self._trained = False

    def memory_bytes(self) -> int:
        return pipeline_bytes(self.pipe)

    def train(
        self,
        dataset: list[Example],
        request: TrainRequest,
        output: Path,
        cancelled: Callable[[], bool],
    ) -> Iterator[TrainStep]:
        """Train a LoRA on `dataset`, writing checkpoints and the result into `output`."""
        check_request(request)
        if not dataset:
            raise InvalidRequest("the dataset holds no pictures")
        if self._trained:  # the adapter stays attached to the UNet: a new job needs a new load
            raise RuntimeError("this trainer has trained already; load the model again")
        self._trained = True
        model = _Model(
            self.pipe, self.pipe.unet, self.noise, self.device, self.dtype, self.precision,
            request.resolution or self.default_size,
        )  # fmt: skip
        yield from _train(model, dataset, request, Path(output), cancelled)


def load_trainer(folder: Path, options: LoadOptions) -> Trainer:
    """The trainer of a diffusers folder."""
    return Trainer(Path(folder), options)


def load_checkpoint_trainer(folder: Path, options: LoadOptions) -> Trainer:
    """The trainer of a single-file checkpoint (LDM layout), with the bundled config."""
    path = _single_checkpoint(Path(folder))
    kind = sd_checkpoint_type(safetensors_header(path), repr(path.name))
    return Trainer(Path(folder), options, loader=partial(_load_single_file, path, kind))


def train(
    model_folder: Path,
    dataset: list[Example],
    request: TrainRequest,
    output: Path,
    cancelled: Callable[[], bool],
) -> Iterator[TrainStep]:
    """Train a LoRA of the diffusers model in `model_folder` on `dataset`, into `output`."""
    check_request(request)
    trainer = Trainer(Path(model_folder), LoadOptions(precision=request.precision))
    yield from trainer.train(dataset, request, output, cancelled)


def _train(
    model: _Model,
    dataset: list[Example],
    request: TrainRequest,
    output: Path,
    cancelled: Callable[[], bool],
) -> Iterator[TrainStep]:
    output.mkdir(parents=True, exist_ok=True)
    lora = _add_lora(model.unet, request)
    optimizer = torch.optim.AdamW(lora, lr=request.learning_rate)
    schedule = get_scheduler(
        request.lr_scheduler,
        optimizer,
        num_warmup_steps=request.warmup_steps,
        num_training_steps=request.steps,
    )
    batches = _Batches(dataset, request, model)
    generator = torch.Generator().manual_seed(request.seed)
    started, loss = time.monotonic(), math.nan
    # Once, not per step: train() walks every module (~2,000 with the LoRA; 10% of a tiny step).
    model.unet.train()
    for step in range(1, request.steps + 1):
        if cancelled():
            return
        loss = _optimizer_step(model, batches, request, generator, lora, optimizer)
        schedule.step()
        eta = (time.monotonic() - started) / step * (request.steps - step)
        yield TrainProgress(step, request.steps, loss, float(schedule.get_last_lr()[0]), eta)
        if request.checkpoint_every and step % request.checkpoint_every == 0:
            yield TrainCheckpoint(step, _save_diffusers(model.unet, output / f"checkpoint-{step}"))
        if request.validation_every and step % request.validation_every == 0:
            yield TrainValidation(step, _validation_png(model, request, dataset))
    path = _save_diffusers(model.unet, output)
    _save_kohya(model.unet, output / KOHYA_NAME, request)
    yield TrainDone(request.steps, loss, path, _parameters(request, model, dataset, lora))


def _add_lora(unet: Any, request: TrainRequest) -> list[torch.nn.Parameter]:
    """Attach the adapter and return its (fp32, trainable) weights."""
    config = LoraConfig(
        r=request.rank,
        # peft types alpha as int but scales by alpha / r, so a float alpha works.
        lora_alpha=request.alpha if request.alpha is not None else request.rank,  # type: ignore[arg-type]
        init_lora_weights="gaussian",
        target_modules=TARGET_MODULES,
    )
    # The Gaussian init draws from torch's global generator: seed it without leaking the state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(request.seed)
        unet.add_adapter(config)
    # fp32 LoRA weights on bf16/fp16 frozen ones, as diffusers' mixed-precision training does.
    cast_training_params(unet, dtype=torch.float32)
    return [p for p in unet.parameters() if p.requires_grad]


class _Batches:
    """Seeded batches of (pixels in [-1, 1], text embeddings), epoch after shuffled epoch."""

    def __init__(self, dataset: list[Example], request: TrainRequest, model: _Model) -> None:
        self.request, self.model = request, model
        self.rng = random.Random(request.seed)
        self.pictures = [_resized(e, model.resolution) for e in dataset]
        self.embeddings = _embed_captions(model, sorted({e.caption for e in dataset}))
        self.captions = [e.caption for e in dataset]
        self.order: list[int] = []

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        indices = [self._next_index() for _ in range(self.request.batch_size)]
        pixels = torch.stack([self._pixels(i) for i in indices])
        text = torch.cat([self.embeddings[self.captions[i]] for i in indices])
        device, dtype = self.model.device, self.model.dtype
        return pixels.to(device, dtype), text

    def _next_index(self) -> int:
        if not self.order:
            self.order = list(range(len(self.pictures)))
            self.rng.shuffle(self.order)
        return self.order.pop()

    def _pixels(self, index: int) -> torch.Tensor:
        picture, size = self.pictures[index], self.model.resolution
        left, top = (picture.width - size) // 2, (picture.height - size) // 2
        if not self.request.center_crop:
            left = self.rng.randint(0, picture.width - size)
            top = self.rng.randint(0, picture.height - size)
        picture = picture.crop((left, top, left + size, top + size))
        if self.request.random_flip and self.rng.random() < 0.5:
            picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(picture, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1)


def _resized(example: Example, size: int) -> Image.Image:
    """The picture in RGB with its shorter side `size` (Lanczos, as diffusers' example)."""
    with Image.open(io.BytesIO(example.picture), formats=FORMATS) as picture:
        rgb = picture.convert("RGB")
    scale = size / min(rgb.size)
    width, height = max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale))
    return rgb.resize((width, height), Image.Resampling.LANCZOS)


@torch.no_grad()
def _embed_captions(model: _Model, captions: list[str]) -> dict[str, torch.Tensor]:
    tokenizer, encoder = model.pipe.tokenizer, model.pipe.text_encoder
    ids = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(model.device)
    states = encoder(ids, return_dict=False)[0]
    return {caption: states[i : i + 1] for i, caption in enumerate(captions)}


def _optimizer_step(
    model: _Model,
    batches: _Batches,
    request: TrainRequest,
    generator: torch.Generator,
    lora: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
) -> float:
    """One optimizer step over `gradient_accumulation` batches; returns their mean loss."""
    total = 0.0
    for _ in range(request.gradient_accumulation):
        loss = _batch_loss(model, *batches.next(), generator) / request.gradient_accumulation
        loss.backward()  # type: ignore[no-untyped-call]
        total += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(lora, request.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def _batch_loss(
    model: _Model, pixels: torch.Tensor, text: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    vae, noise_scheduler = model.pipe.vae, model.noise
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        latents = posterior.sample(generator=generator) * vae.config.scaling_factor
    # Noise and timesteps are drawn on the CPU generator, so CUDA runs are seeded the same way.
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    count = noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, count, (latents.shape[0],), generator=generator)
    timesteps = timesteps.to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    prediction = model.unet(noisy, timesteps, text, return_dict=False)[0]
    return F.mse_loss(prediction.float(), target.float(), reduction="mean")


def _lora_state(unet: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(unet).items()}


def _save_diffusers(unet: Any, folder: Path) -> Path:
    """Write `folder/pytorch_lora_weights.safetensors` (diffusers keys) atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder))
    try:
        layers = convert_state_dict_to_diffusers(_lora_state(unet))  # type: ignore[no-untyped-call]
        # The adapter's config travels in the file's metadata: without it, loaders assume
        # alpha = rank, and a LoRA trained with another alpha would load at the wrong scale.
        StableDiffusionPipeline.save_lora_weights(
            staging,
            unet_lora_layers=layers,
            weight_name=WEIGHTS_NAME,
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        )
        os.replace(staging / WEIGHTS_NAME, folder / WEIGHTS_NAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / WEIGHTS_NAME


def _save_kohya(unet: Any, path: Path, request: TrainRequest) -> None:
    """Write the LoRA with kohya-ss keys (`lora_unet_*.lora_down/lora_up/alpha`) atomically."""
    # diffusers' converter wants the `unet.` prefix, and sets alpha to the rank: fix both.
    peft_state = {f"unet.{k}": v for k, v in _lora_state(unet).items()}
    alpha = float(request.alpha if request.alpha is not None else request.rank)
    state = {
        key: torch.tensor(alpha) if key.endswith(".alpha") else value.contiguous()
        for key, value in convert_state_dict_to_kohya(peft_state).items()  # type: ignore[no-untyped-call]
    }
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(request.rank),
        "ss_network_alpha": str(alpha),
    }
    temporary = path.with_name(f".{path.name}.tmp")
    save_file(state, str(temporary), metadata=metadata)
    os.replace(temporary, path)


@torch.no_grad()
def _validation_png(model: _Model, request: TrainRequest, dataset: list[Example]) -> bytes:
    prompt = request.validation_prompt or dataset[0].caption
    model.unet.eval()
    try:
        image = model.pipe(
            prompt,
            height=model.resolution,
            width=model.resolution,
            num_inference_steps=VALIDATION_STEPS,
            generator=torch.Generator().manual_seed(request.seed),
        ).images[0]
    finally:
        model.unet.train()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _parameters(
    request: TrainRequest, model: _Model, dataset: list[Example], lora: list[torch.nn.Parameter]
) -> dict[str, Any]:
    """The request as run: defaults resolved, plus the sizes a user asks about."""
    used = asdict(request)
    used.update(
        resolution=model.resolution,
        alpha=request.alpha if request.alpha is not None else float(request.rank),
        precision=model.precision,
        pictures=len(dataset),
        trainable_parameters=sum(p.numel() for p in lora),
        prediction_type=model.noise.config.prediction_type,
    )
    return used
