"""LoRA training for Stable Diffusion 1.x/2.x: a dataset of the user's pictures in, a LoRA out.

This module knows nothing about HTTP, jobs or the store. `load_dataset` reads a folder or a
.zip of pictures and captions into memory; `train` trains a LoRA on the UNet of a diffusers
model folder and yields typed steps. Heavy imports (torch, diffusers, peft) happen here only.

Datasets (`load_dataset`): PNG, JPEG and WebP pictures (by suffix, at any depth), captioned by
a `metadata.jsonl` line (`{"file_name": ..., "text": ...}`, file_name relative to that file's
folder) or else by a same-stem `.txt` next to the picture, or else by the instance prompt
(DreamBooth style). Other files, hidden files and `__MACOSX/` are ignored; a picture suffix on
a file that does not decode is refused. Nothing outside the dataset is ever read: symlinks, and
zip members or file_names that are absolute or hold `..`, are refused; a zip is read in memory
(never unpacked to disk) within MAX_DATASET_BYTES.

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
import json
import math
import os
import posixpath
import random
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from diffusers.utils.state_dict_utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_kohya,
)
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import save_file

from limner.engines.diffusion import _pick_precision, load_diffusers_pipeline
from limner.engines.pictures import PICTURE_FORMATS, check_picture
from limner.errors import InvalidRequest, TooLarge

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
METADATA = "metadata.jsonl"
MAX_DATASET_BYTES = 2 << 30  # pictures + captions, read into memory
MAX_RESOLUTION = 2048
LR_SCHEDULERS = ("constant", "linear", "cosine", "constant_with_warmup")
TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
VALIDATION_STEPS = 20
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
KOHYA_NAME = "lora_kohya.safetensors"


@dataclass
class Example:
    """One training picture: its path inside the dataset, encoded bytes, and caption."""

    name: str
    picture: bytes
    caption: str


@dataclass
class TrainRequest:
    """How to train. Defaults follow diffusers' LoRA example (rank 4, lr 1e-4, constant)."""

    resolution: int = 0  # 0: the model's default size (512 for SD 1.5)
    center_crop: bool = True  # else a random crop
    random_flip: bool = False
    steps: int = 500  # optimizer steps
    batch_size: int = 1
    gradient_accumulation: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"  # one of LR_SCHEDULERS
    warmup_steps: int = 0
    rank: int = 4
    alpha: float | None = None  # None: rank (LoRA scale 1)
    seed: int = 0
    precision: str = ""  # frozen weights: "" picks bf16 where the device has it, else fp32
    instance_prompt: str = ""  # caption of pictures without their own
    validation_prompt: str = ""  # "": the first picture's caption
    validation_every: int = 0  # 0: no validation pictures
    checkpoint_every: int = 0  # 0: no checkpoints
    max_grad_norm: float = 1.0


@dataclass
class TrainProgress:
    """One optimizer step done; `loss` is its mean over the accumulated batches."""

    step: int
    total: int
    loss: float
    learning_rate: float
    eta_seconds: float


@dataclass
class TrainCheckpoint:
    """A loadable LoRA (diffusers keys) of the weights after `step`."""

    step: int
    path: Path


@dataclass
class TrainValidation:
    """A picture of the validation prompt drawn with the adapter after `step`."""

    step: int
    png: bytes


@dataclass
class TrainDone:
    """Training finished: `path` is the diffusers-format LoRA, `parameters` what was used."""

    steps: int
    final_loss: float
    path: Path
    parameters: dict[str, Any]


TrainStep = TrainProgress | TrainCheckpoint | TrainValidation | TrainDone


# --- Datasets ----------------------------------------------------------------------------


def load_dataset(source: Path, instance_prompt: str = "") -> list[Example]:
    """The captioned pictures of a folder or .zip; `instance_prompt` captions the others."""
    source = Path(source)
    if source.is_file() and zipfile.is_zipfile(source):
        files = _zip_files(source)
    elif source.is_dir():
        files = _folder_files(source)
    else:
        raise InvalidRequest(f"dataset {source.name!r} is neither a folder nor a .zip file")
    return _examples(files, instance_prompt.strip())


def _wanted(name: str) -> bool:
    # Only pictures and captions are read; macOS adds __MACOSX/ and ._ files to zips.
    parts = PurePosixPath(name).parts
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return False
    return name.lower().endswith((*PICTURE_SUFFIXES, ".txt")) or parts[-1] == METADATA


def _folder_files(folder: Path) -> dict[str, bytes]:
    sizes: dict[str, int] = {}
    for root, dirs, names in os.walk(folder):  # symlinked folders are listed, not entered
        for name in dirs + names:
            if Path(root, name).is_symlink():
                relative = Path(root, name).relative_to(folder).as_posix()
                raise InvalidRequest(f"the dataset holds a symbolic link, {relative!r}")
        for name in names:
            relative = Path(root, name).relative_to(folder).as_posix()
            if _wanted(relative):
                sizes[relative] = Path(root, name).stat().st_size
    _check_total(sum(sizes.values()))
    return {name: (folder / name).read_bytes() for name in sorted(sizes)}


def _zip_files(archive_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive_path) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        for info in members:
            _check_member(info)
        wanted = [info for info in members if _wanted(info.filename)]
        _check_total(sum(info.file_size for info in wanted))
        # ZipExtFile stops at the declared size and checks the CRC, so this read is bounded.
        return {info.filename: archive.read(info) for info in wanted}


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    if stat.S_ISLNK(info.external_attr >> 16):
        raise InvalidRequest(f"the zip holds a symbolic link, {name!r}")
    if not _inside(name):
        raise InvalidRequest(f"the zip member {name!r} points outside the dataset")


def _inside(name: str) -> bool:
    """Whether a relative name stays inside its folder on POSIX and on Windows."""
    windows = PureWindowsPath(name)
    return bool(
        name
        and not windows.drive
        and not windows.root
        and not PurePosixPath(name).is_absolute()
        and ".." not in windows.parts
    )


def _check_total(total: int) -> None:
    if total > MAX_DATASET_BYTES:
        raise TooLarge(
            f"the dataset's pictures and captions hold {total} bytes; "
            f"at most {MAX_DATASET_BYTES} are accepted"
        )


def _examples(files: dict[str, bytes], instance_prompt: str) -> list[Example]:
    pictures = [name for name in files if name.lower().endswith(PICTURE_SUFFIXES)]
    if not pictures:
        raise InvalidRequest("the dataset holds no PNG, JPEG or WebP pictures")
    for name in pictures:
        check_picture(files[name], f"picture {name!r}")
    listed = _metadata_captions(files, set(pictures))
    examples, missing = [], []
    for name in sorted(pictures):
        caption = listed.get(name) or _caption_file(files, name) or instance_prompt
        if not caption:
            missing.append(name)
        examples.append(Example(name, files[name], caption))
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if missing[10:] else "")
        raise InvalidRequest(
            f"no caption for {shown}: add a same-stem .txt, a metadata.jsonl line, "
            "or an instance prompt"
        )
    return examples


def _caption_file(files: dict[str, bytes], picture: str) -> str:
    data = files.get(posixpath.splitext(picture)[0] + ".txt")
    return data.decode("utf-8", errors="replace").strip() if data is not None else ""


def _metadata_captions(files: dict[str, bytes], pictures: set[str]) -> dict[str, str]:
    """Captions of every metadata.jsonl, keyed by the picture's name in the dataset."""
    captions: dict[str, str] = {}
    for meta in sorted(name for name in files if PurePosixPath(name).name == METADATA):
        folder = posixpath.dirname(meta)
        text = files[meta].decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                where = f"{meta} line {number}"
                file_name, caption = _metadata_line(line, where)
                name = posixpath.join(folder, file_name) if folder else file_name
                if name not in pictures:
                    raise InvalidRequest(f"{where} names {file_name!r}, which is no picture here")
                captions[name] = caption
    return captions


def _metadata_line(line: str, where: str) -> tuple[str, str]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise InvalidRequest(f"{where} is not JSON: {error}") from error
    file_name = entry.get("file_name") if isinstance(entry, dict) else None
    caption = entry.get("text", "") if isinstance(entry, dict) else None
    if not isinstance(file_name, str) or not isinstance(caption, str):
        raise InvalidRequest(f'{where} needs a string "file_name" and a string "text"')
    if not _inside(file_name) or "\\" in file_name:
        raise InvalidRequest(f"{where}: file_name {file_name!r} points outside the dataset")
    return posixpath.normpath(file_name), caption.strip()


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


def train(
    model_folder: Path,
    dataset: list[Example],
    request: TrainRequest,
    output: Path,
    cancelled: Callable[[], bool],
) -> Iterator[TrainStep]:
    """Train a LoRA of the model in `model_folder` on `dataset`, writing into `output`."""
    _check_request(request, dataset)
    model = _load_model(Path(model_folder), request)
    output = Path(output)
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
    for step in range(1, request.steps + 1):
        if cancelled():
            return
        model.unet.train()
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


def _check_request(request: TrainRequest, dataset: list[Example]) -> None:
    positive = ("steps", "batch_size", "gradient_accumulation", "rank")
    for name in positive:
        if getattr(request, name) < 1:
            raise InvalidRequest(f"{name} must be at least 1, not {getattr(request, name)}")
    for name in ("warmup_steps", "validation_every", "checkpoint_every", "resolution"):
        if getattr(request, name) < 0:
            raise InvalidRequest(f"{name} must not be negative, not {getattr(request, name)}")
    for name in ("learning_rate", "max_grad_norm", "alpha"):
        value = getattr(request, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InvalidRequest(f"{name} must be a positive number, not {value}")
    if request.lr_scheduler not in LR_SCHEDULERS:
        raise InvalidRequest(
            f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, not {request.lr_scheduler!r}"
        )
    if request.resolution % 8 or request.resolution > MAX_RESOLUTION:
        raise InvalidRequest(
            f"resolution must be a multiple of 8 up to {MAX_RESOLUTION}, not {request.resolution}"
        )
    if not dataset:
        raise InvalidRequest("the dataset holds no pictures")


def _load_model(folder: Path, request: TrainRequest) -> _Model:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype, precision = _pick_precision(request.precision, device)
    pipe = load_diffusers_pipeline(folder, dtype)
    if isinstance(pipe, StableDiffusionXLPipeline):
        raise InvalidRequest("LoRA training runs on Stable Diffusion 1.x/2.x models, not SDXL")
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)
    pipe.to(device)
    noise = DDPMScheduler.from_config(pipe.scheduler.config)  # type: ignore[no-untyped-call]
    if noise.config.prediction_type not in ("epsilon", "v_prediction"):
        raise InvalidRequest(f"cannot train prediction type {noise.config.prediction_type!r}")
    default = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    resolution = request.resolution or default
    return _Model(pipe, pipe.unet, noise, device, dtype, precision, resolution)


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
    with Image.open(io.BytesIO(example.picture), formats=PICTURE_FORMATS) as picture:
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
        StableDiffusionPipeline.save_lora_weights(  # type: ignore[no-untyped-call]
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
    model.unet.eval()
    prompt = request.validation_prompt or dataset[0].caption
    image = model.pipe(
        prompt,
        height=model.resolution,
        width=model.resolution,
        num_inference_steps=VALIDATION_STEPS,
        generator=torch.Generator().manual_seed(request.seed),
    ).images[0]
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
