"""Stable Diffusion 1.x/2.x and SDXL on diffusers: text-to-image, image-to-image, inpainting and
style transfer from one loaded copy of the weights.

This module knows nothing about HTTP: it receives a folder in the diffusers layout (`load`) or
a folder holding one single-file checkpoint (`load_checkpoint`), and yields `Progress` after
every denoising step, then one `ImageResult` (a PNG whose text chunks carry the parameters).
Heavy imports (torch, diffusers, transformers) happen here only.

Folder layout (what `limner.tiny.write_tiny_sd` writes, and what `save_pretrained` writes):

    model_index.json            `_class_name` picks the family: StableDiffusion{,Img2Img,Inpaint}Pipeline
                                or StableDiffusionXL{,Img2Img,Inpaint}Pipeline
    unet/ vae/ text_encoder/ tokenizer/ scheduler/   (+ text_encoder_2/ tokenizer_2/ for SDXL)
    feature_extractor/          optional; CLIP preprocessing for the IP-Adapter's image encoder
    image_encoder/              optional; CLIP vision tower, listed in model_index.json
    ip_adapter/ip-adapter.safetensors   optional IP-Adapter (`image_proj.*`, `ip_adapter.N.to_k_ip/
                                to_v_ip`); its encoder is image_encoder/ above or, as in the
                                h94/IP-Adapter repo, ip_adapter/image_encoder/
    vae_tiny/                   optional tiny autoencoder (TAESD/TAESDXL: diffusers' AutoencoderTiny,
                                config.json + diffusion_pytorch_model.safetensors, as in
                                madebyollin/taesd); not in model_index.json

Single-file checkpoints (`load_checkpoint`, model_format "sd-checkpoint"): one `.safetensors`
file in the original LDM layout, as Automatic1111 and Civitai distribute them (`.ckpt` pickles
are never read). Its family -- SD 1.x, SD 2.x (768, v-prediction), SDXL, each optionally with
the 9-channel inpainting UNet -- is read from the tensor shapes in its header
(`limner.store.formats.sd_checkpoint_type`), and diffusers' `from_single_file` loads it with
limner's bundled config folder of that family (`limner.engines.sd_configs`, copied to a
temporary folder that is removed after loading), so nothing is fetched from the Hub. After
loading it is the same engine as a diffusers folder, except that single files carry no
IP-Adapter: style pictures always use the image-to-image fallback. SD 2.x checkpoints load as
768-pixel v-prediction models (stable-diffusion-2-1); the 512-pixel epsilon SD 2.x-base has the
same shapes and cannot be told apart from the file.

Modes follow from the request: no picture -> text-to-image; `image` -> image-to-image at
`strength`; `image` + `mask` -> inpainting (white repaints). A 9-channel (inpainting) UNet draws
every mode through the inpainting pipeline (text-to-image and image-to-image with an all-white
mask); a 4-channel UNet inpaints by blending latents (diffusers' legacy path). In both cases the
unmasked pixels of the input are pasted back, so they come out exactly unchanged (without that,
the VAE round trip changes them). `style_images` use the model's IP-Adapter at `style_strength`;
a call without them runs the adapter at scale 0, which equals the model without the adapter.
A model with no IP-Adapter falls back to image-to-image from the first style picture at strength
1 - style_strength (at least one step); that cannot combine with an `image`.

Defaults: size = UNet sample_size x VAE scale factor (512 for SD 1.5, 768 for SD 2.x-v, 1024 for
SDXL), or the input picture's size rounded down to a multiple of 8 (the picture is resized to
the size drawn). Steps 20, guidance 7.5; with "lcm" 4 steps and guidance 1.0 (no classifier-
free guidance); a distilled few-step model (its own scheduler Euler over trailing timesteps, as
SD-Turbo and SDXL-Turbo ship) 1 step and guidance 0 (`drawing.sampling`). Schedulers are built
fresh for every call from the model's scheduler config.

Tiny autoencoder: a model with `vae_tiny/` loads it beside its VAE (same dtype, channels_last on
a CPU; its latent channels must be the VAE's). A request with `vae="tiny"` decodes the final
latents with it instead of the VAE: the pipeline returns latents (output_type "latent") and the
engine decodes them, on the same torch thread. TAESD reads the latents as the UNet sees them
(its scaling factor is 1), and at 512x512 costs 0.14 TFLOP against the SD 1.5 VAE's 2.51.
Only decoding changes: image-to-image and inpainting still encode their picture with the full
VAE, so what the model starts from is exact (TAESD's encoder is lossier, and encoding is one
pass where decoding is the step a user waits on). Previews (`preview_every`) always decode
with the tiny autoencoder when the model has one. `vae="tiny"` on a model without one is an
InvalidRequest that says how to add one. On OpenVINO the tiny decode stays on torch: the
graphs hold the full VAE only (see openvino_draw.py).

Progress: `total` is the pipeline's own count of timesteps, which is `int(steps x strength)` for
image-to-image and inpainting, and steps + 1 for PNDM (its first step evaluates twice). The
pipeline runs in a worker thread; its step callback polls `cancelled()` and raises to stop within
one step, skipping the VAE decode; the generator then ends without an `ImageResult`. Calls are
serialised by a lock.

Seeds: -1 (any negative) picks a random seed, which the result reports. Noise comes from a CPU
`torch.Generator`, so a request and seed give identical PNG bytes on the same machine and dtype.

Precision (`LoadOptions.precision`, load time): "" picks bf16 on CUDA (fp16 where the GPU lacks bf16)
and on CPUs whose /proc/cpuinfo flags list avx512_bf16 or amx_bf16, else fp32; "fp32", "bf16"
and "fp16" force one.

Memory: `estimate_peak_bytes(width, height)` is a rough upper bound of the activations of one
call, the larger of the UNet part and the VAE decode (see the method). When it exceeds the memory
available (MemAvailable from /proc/meminfo; free memory from `torch.cuda.mem_get_info` on CUDA),
that call runs with `vae.enable_tiling()` and sliced attention (`unet.set_attention_slice("auto")`
-- skipped when an IP-Adapter is loaded, because sliced processors replace its processors), and
a tiny autoencoder tiles too; all are switched off again afterwards.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import math
import queue
import random
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from diffusers import (
    AutoencoderTiny,
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UniPCMultistepScheduler,
)
from diffusers.utils import logging as diffusers_logging
from PIL import Image, PngImagePlugin
from transformers.utils import logging as transformers_logging

from limner import config
from limner.engines import (
    SCHEDULERS,
    ImageRequest,
    ImageResult,
    ImageStep,
    LoadOptions,
    Progress,
    drawing,
    sd_configs,
)
from limner.errors import InsufficientMemory, InvalidRequest, UnsafeWeights
from limner.pictures import open_rgb
from limner.store.formats import (
    PICKLE,
    SAFETENSORS,
    TINY_VAE_FOLDER,
    safetensors_header,
    sd_checkpoint_type,
    sniff,
)

log = logging.getLogger("limner.diffusion")

IP_ADAPTER_FOLDER = "ip_adapter"
LORA_FOLDER = "adapters"  # a model's LoRA files (the store's adapter layers)
EXPORTS_FOLDER = "exports"  # files kept with a model for other tools (a kohya copy of a LoRA)
SIDE_FOLDERS = (LORA_FOLDER, EXPORTS_FOLDER, IP_ADAPTER_FOLDER, TINY_VAE_FOLDER)
IP_ADAPTER_FILE = "ip-adapter.safetensors"  # preferred when ip_adapter/ holds several

SD_CLASSES = {
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
}
XL_CLASSES = {
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
}

# Request name -> (diffusers class, from_config overrides, Automatic1111's sampler name).
# Overrides undo settings a model's own config may carry (Karras sigmas, clipping).
SCHEDULER_TABLE: dict[str, tuple[type[Any], dict[str, Any], str]] = {
    "euler": (EulerDiscreteScheduler, {"use_karras_sigmas": False}, "Euler"),
    "euler a": (EulerAncestralDiscreteScheduler, {}, "Euler a"),
    "dpm++ 2m": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False},
        "DPM++ 2M",
    ),
    "dpm++ 2m karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
        "DPM++ 2M Karras",
    ),
    "ddim": (DDIMScheduler, {"clip_sample": False}, "DDIM"),
    "lcm": (LCMScheduler, {}, "LCM"),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}, "PLMS"),
    "unipc": (UniPCMultistepScheduler, {}, "UniPC"),
}
assert set(SCHEDULER_TABLE) == set(SCHEDULERS), "the engine contract and this table disagree"


# Loads the base pipeline of a model folder at a dtype, on the engine's torch thread.
PipelineLoader = Callable[[Path, torch.dtype], Any]


def load(folder: Path, options: LoadOptions) -> DiffusionEngine:
    """Load the pipeline in `folder` (and its IP-Adapter, if any) at `options.precision`."""
    return DiffusionEngine(Path(folder), options)


def load_checkpoint(folder: Path, options: LoadOptions) -> DiffusionEngine:
    """Load the single-file checkpoint in `folder` (its one `.safetensors` file, any name) with
    the bundled config of its family, at `options.precision`. No IP-Adapter."""
    folder = Path(folder)
    path = _single_checkpoint(folder)
    kind = sd_checkpoint_type(safetensors_header(path), repr(path.name))  # before any torch work
    return DiffusionEngine(folder, options, loader=partial(_load_single_file, path, kind))


def _single_checkpoint(folder: Path) -> Path:
    # The model's LoRAs and exported files live in their own folders beside the checkpoint.
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    candidates = [
        p
        for p in files
        if p.name.endswith(".safetensors") and p.relative_to(folder).parts[0] not in SIDE_FOLDERS
    ]
    if len(candidates) != 1:
        raise InvalidRequest(
            f"a single-file checkpoint folder holds exactly one .safetensors file; {folder} "
            f"holds {len(candidates)} ({', '.join(p.name for p in candidates) or 'none'})"
        )
    path = candidates[0]
    kind = sniff(path)
    if kind == PICKLE:
        raise UnsafeWeights(
            f"{path.name} holds pickle weights, which can run code when loaded; "
            "convert it to safetensors first"
        )
    if kind != SAFETENSORS:
        raise InvalidRequest(f"{path.name} is not a safetensors file")
    return path


def _load_single_file(path: Path, kind: str, folder: Path, dtype: torch.dtype) -> Any:
    """`from_single_file` with the bundled config of `kind`, offline; the config is removed
    again once the pipeline is built (everything it names is read while loading)."""
    xl = kind.startswith("sdxl")
    cls: Any = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    extra: dict[str, Any] = (
        {"add_watermarker": False}  # as for folders: no invisible-watermark
        if xl
        else {"safety_checker": None, "requires_safety_checker": False}
    )
    with tempfile.TemporaryDirectory(prefix="limner-sd-config-") as tmp:
        config = sd_configs.materialise(kind, Path(tmp) / kind)
        try:
            with _diffusers_quiet():  # it casts with `to()`, warning about fp32 modules
                return cls.from_single_file(
                    str(path), config=str(config), local_files_only=True, dtype=dtype, **extra
                )
        except torch.cuda.OutOfMemoryError:  # not the checkpoint's fault
            raise
        except (ValueError, KeyError, RuntimeError) as error:
            raise InvalidRequest(
                f"{path.name} could not be loaded as a {kind} checkpoint: {error}"
            ) from error


@dataclass
class _Plan:
    """One validated request: which pipeline, its arguments, and what goes into the PNG."""

    pipe: Any
    scheduler: Any  # a fresh instance for this call
    kwargs: dict[str, Any]
    parameters: dict[str, Any]
    width: int
    height: int
    init: Image.Image | None = None  # the input picture at the drawn size (inpainting only)
    mask: Image.Image | None = None  # binary "L" mask at the drawn size (inpainting only)
    tiny: bool = False  # the tiny autoencoder decodes the final latents (the pipe returns them)
    denoising: int = 0  # the steps asked for (times strength): what progress counts to


class _Stopped(Exception):
    """Raised from the step callback to end a cancelled call before the VAE decode."""


class DiffusionEngine:
    """A loaded Stable Diffusion model: `generate_image()` draws one picture at a time."""

    def __init__(
        self, folder: Path, options: LoadOptions, loader: PipelineLoader | None = None
    ) -> None:
        """`loader` builds the base pipeline from `folder` at a dtype; by default a diffusers
        folder (`load_diffusers_pipeline`), for single files `load_checkpoint`'s."""
        # Every torch call of this engine runs on one thread. OpenMP keeps a team of workers
        # per calling thread; drawing on a second thread made each call ~2x slower (measured).
        self._torch = ThreadPoolExecutor(1, thread_name_prefix="limner-torch")
        self._torch.submit(self._setup, folder, options, loader or load_diffusers_pipeline).result()

    def _setup(self, folder: Path, options: LoadOptions, loader: PipelineLoader) -> None:
        # A runner's log is no terminal: no progress bars while loading or drawing.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self.folder = folder
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.on_gpu = self.device == "cuda"  # /api/ps reports the model in size_vram
        self.dtype, self.precision = _pick_precision(options.precision, self.device)

        # 1. The base pipeline of the model's family.
        pipe = loader(folder, self.dtype)
        self.xl = isinstance(pipe, StableDiffusionXLPipeline)
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.inpainting_unet = self.unet.config.in_channels == 9
        self.scale_factor: int = pipe.vae_scale_factor
        self.default_size = int(self.unet.config.sample_size) * self.scale_factor
        self.scheduler_config = pipe.scheduler.config
        self.scheduler_class: type[Any] = type(pipe.scheduler)
        spacing = self.scheduler_config.get("timestep_spacing")
        self.sampling = drawing.sampling(self.scheduler_class.__name__, spacing)

        # 2. The model's LoRAs, fused into the weights at their scale: no cost per step.
        self.loras = _fuse_loras(
            pipe, folder / LORA_FOLDER, options.adapter_scale, options.adapter_weights
        )

        # 3. The IP-Adapter, once; its projections live inside the shared UNet.
        self.ip_adapter = self._load_ip_adapter(pipe, folder)
        # 3a. The tiny autoencoder, if the model has one: previews, and `vae="tiny"`.
        self.tiny_vae: Any = _load_tiny_vae(folder / TINY_VAE_FOLDER, self.dtype, self.vae)
        pipe.to(self.device)
        if self.tiny_vae is not None:
            self.tiny_vae.to(self.device)

        # 3b. On a CPU, the UNet and the VAE decoder as OpenVINO graphs (openvino_draw.py).
        self.openvino: Any = None
        if _draws_on_openvino(self.device):
            from limner.engines.openvino_draw import accelerate

            cache = Path(options.cache) if options.cache else None
            bf16 = self.dtype == torch.bfloat16
            self.openvino = accelerate(pipe, cache, bf16, self.ip_adapter)
        # oneDNN's convolutions run faster on NHWC (bench/diffusion.py). Not under graphs: they
        # were traced from these weights, and OpenVINO reads bf16 weights in place, as NCHW.
        if self.device == "cpu":
            if self.openvino is None:
                self.unet.to(memory_format=torch.channels_last)
                self.vae.to(memory_format=torch.channels_last)
            if self.tiny_vae is not None:
                self.tiny_vae.to(memory_format=torch.channels_last)

        # 4. The other tasks share every module with the base pipeline (no second copy).
        self.pipes: dict[str, Any] = {
            "txt2img": pipe,
            "img2img": AutoPipelineForImage2Image.from_pipe(pipe),
            "inpaint": AutoPipelineForInpainting.from_pipe(pipe),
        }
        for each in self.pipes.values():
            each.set_progress_bar_config(disable=True)

        # 5. Image embeddings for calls without style pictures: any embedding will do, because
        # the adapter runs at scale 0 then (diffusers skips it), but their shapes must fit.
        self.idle_embeds: dict[bool, list[torch.Tensor]] = {}
        if self.ip_adapter:
            black = Image.new("RGB", (64, 64))
            for cfg in (False, True):
                self.idle_embeds[cfg] = pipe.prepare_ip_adapter_image_embeds(
                    [black], None, self.device, 1, cfg
                )
        self.processors = dict(self.unet.attn_processors)  # restored after sliced attention
        self._lock = threading.Lock()

    def _load_ip_adapter(self, pipe: Any, folder: Path) -> bool:
        adapter_dir = folder / IP_ADAPTER_FOLDER
        files = sorted(adapter_dir.glob("*.safetensors")) if adapter_dir.is_dir() else []
        if not files:
            return False
        weights = (
            adapter_dir / IP_ADAPTER_FILE if (adapter_dir / IP_ADAPTER_FILE).exists() else files[0]
        )
        if pipe.image_encoder is not None:
            encoder: str | None = None  # already a pipeline component (model_index.json)
        elif (adapter_dir / "image_encoder").is_dir():
            encoder = "image_encoder"  # inside ip_adapter/, as in h94/IP-Adapter
        elif (folder / "image_encoder").is_dir():
            encoder = "./image_encoder"  # a slash makes diffusers read it from the root
        else:
            raise InvalidRequest(
                f"{IP_ADAPTER_FOLDER}/{weights.name} needs a CLIP vision image_encoder/ folder "
                f"beside it or at the model's root"
            )
        # It casts the new projections with `to()`, warning about an empty list of fp32 modules.
        with _diffusers_quiet():
            pipe.load_ip_adapter(
                str(folder),
                subfolder=IP_ADAPTER_FOLDER,
                weight_name=weights.name,
                image_encoder_folder=encoder,
                local_files_only=True,
                low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None,
            )
        return True

    def memory_bytes(self) -> int:
        """Bytes of the parameters of every component (IP-Adapter and image encoder included),
        of the tiny autoencoder, and of the OpenVINO graphs beside them."""
        graphs = self.openvino.weight_bytes() if self.openvino else 0
        tiny = module_bytes(self.tiny_vae) if self.tiny_vae is not None else 0
        return pipeline_bytes(self.pipes["txt2img"]) + tiny + graphs

    def estimate_peak_bytes(self, width: int, height: int, frugal: bool = False) -> int:
        """A rough upper bound of one call's activation memory at `width` x `height`.

        UNet: the attention scores of its first attention level for a batch of 2 (classifier-
        free guidance), all heads at once -- 2 x heads x tokens^2 -- plus 30 feature maps of the
        first width kept for skip connections. VAE decode: three full-size feature maps of the
        decoder's last width plus its one-head mid-block attention over the latent tokens.
        `frugal`: with the switches `_memory_switches` turns on, attention sliced to half the
        heads at a time (not with an IP-Adapter) and the VAE decoding tile by tile.
        """
        size = torch.tensor([], dtype=self.dtype).element_size()
        tokens = (width // self.scale_factor) * (height // self.scale_factor)
        config = self.unet.config
        level = next((i for i, t in enumerate(config.down_block_types) if "CrossAttn" in t), 0)
        heads = config.num_attention_heads or config.attention_head_dim
        heads = heads[level] if isinstance(heads, list | tuple) else heads
        at_once = max(1, heads // 2) if frugal and not self.ip_adapter else 2 * heads
        attention_tokens = tokens // 4**level
        unet = at_once * attention_tokens**2 + 2 * 30 * config.block_out_channels[0] * tokens
        if frugal:  # diffusers' tiles: the VAE's own sample size, overlapping by a quarter
            tile = self.vae.config.sample_size
            tile = min(tile if isinstance(tile, int) else tile[0], width, height)
            width = height = tile
            tokens = (tile // self.scale_factor) ** 2
        decoder_width = self.vae.config.block_out_channels[0]
        vae = 3 * decoder_width * width * height + tokens**2
        return int(max(unet, vae) * size)

    def generate_image(
        self,
        request: ImageRequest,
        cancelled: Callable[[], bool],
        finish: Callable[[], bool] = lambda: False,
    ) -> Iterator[ImageStep]:
        """Progress after every denoising step, then the picture; nothing more if cancelled.
        Once `finish()` is true the remaining steps are skipped and the latents decoded."""
        with self._lock:
            plan = self._plan(request)
            if cancelled():
                return
            with (
                self._memory_switches(plan.width, plan.height),
                self._request_loras(request),
                self._on_torch(bool(request.loras)),
            ):
                image = yield from self._denoise(plan, cancelled, finish, request.preview_every)
            if image is None:
                return
            if plan.mask is not None and plan.init is not None:
                image = _overlay(image, plan.init, plan.mask)
            yield ImageResult(png_with_parameters(image, plan.parameters), plan.parameters)

    def _plan(self, request: ImageRequest) -> _Plan:
        # 1. Numbers and names, checked before any picture is decoded.
        scheduler_name, scheduler, steps, guidance, seed = self._settings(request)
        tiny = request.vae.strip().lower() == "tiny"  # `_settings` refused any other name
        if tiny and self.tiny_vae is None:
            raise InvalidRequest(drawing.NO_TINY_VAE)

        # 2. Pictures, and the mode they make.
        init, mask, styles = _pictures(request)
        strength: float | None = request.strength if init is not None else None
        style = ("ip-adapter" if self.ip_adapter else "img2img") if styles else None
        if style == "img2img":
            if init is not None:
                raise InvalidRequest(drawing.STYLE_WITH_IMAGE_NEEDS_IP_ADAPTER)
            # The style picture is the starting point; more style strength keeps more of it.
            init, styles = styles[0], []
            strength = _at_least_one_step(1.0 - request.style_strength, steps)
        mode = "txt2img" if init is None else "img2img" if mask is None else "inpaint"
        if strength is not None:
            drawing.check_strength(strength, steps)

        # 3. Sizes, with the input picture and mask resized to the size drawn.
        width, height, init, mask = self._sizes(request, init, mask)

        # 4. Pipeline arguments.
        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            # None, not "": SDXL then uses zeros for an empty negative prompt, as configured.
            "negative_prompt": request.negative_prompt or None,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "generator": torch.Generator("cpu").manual_seed(seed),
            "output_type": "latent" if tiny else "pil",  # latents: the engine decodes them
        }
        # The pipeline repaints where the mask is at least half white (diffusers' own
        # threshold); the paste-back blends by the grey levels, so a blurred edge feathers.
        binary = mask.point(lambda v: 255 if v >= 128 else 0) if mask is not None else None
        pipe = self._arguments(kwargs, mode, init, binary, strength, width, height)
        self._style_arguments(kwargs, styles, request.style_strength, guidance)

        # 5. What the PNG and the result report.
        parameters = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "steps": steps,
            "scheduler": scheduler_name,
            "guidance_scale": guidance,
            "seed": seed,
            "width": width,
            "height": height,
            "strength": strength,
            "mode": mode,
            "model": request.metadata.get("model", ""),
            "digest": request.metadata.get("digest", ""),
            "style": style,
            "style_strength": request.style_strength if style else None,
        }
        if request.metadata.get("loras"):
            parameters["loras"] = request.metadata["loras"]  # "name:weight, ..." as asked
        if tiny:
            parameters["vae"] = "tiny"
        if mode != "inpaint":
            init = mask = None  # nothing to paste back
        denoising = steps if strength is None else max(1, int(steps * strength))
        return _Plan(pipe, scheduler, kwargs, parameters, width, height, init, mask, tiny,
                     denoising)  # fmt: skip

    def _settings(self, request: ImageRequest) -> tuple[str, Any, int, float, int]:
        """Scheduler name and instance, steps, guidance and seed, with the defaults applied;
        the request's own limits are drawing.checked's, the VAE's scale is this model's."""
        request = drawing.checked(request)
        scheduler_name, scheduler = self._scheduler(request.scheduler)
        steps, guidance = drawing.defaults(
            request, "lcm" if scheduler_name == "lcm" else self.sampling
        )
        for name, value in (("width", request.width), ("height", request.height)):
            if value % self.scale_factor:
                raise InvalidRequest(
                    f"{name} must be a multiple of {self.scale_factor} for this model, not {value}"
                )
        seed = request.seed if request.seed >= 0 else random.SystemRandom().randrange(2**32)
        return scheduler_name, scheduler, steps, guidance, seed

    def _sizes(
        self, request: ImageRequest, init: Image.Image | None, mask: Image.Image | None
    ) -> tuple[int, int, Image.Image | None, Image.Image | None]:
        """The request's size, else the input picture's (rounded down to a multiple of 8), else
        the model's; and the input picture and mask at that size."""
        if init is None:
            return (
                request.width or self.default_size,
                request.height or self.default_size,
                None,
                None,
            )
        base_w, base_h = (side // self.scale_factor * self.scale_factor for side in init.size)
        if not (base_w and base_h):
            raise InvalidRequest(
                f"the picture is {init.width}x{init.height}; it must be at least 8x8"
            )
        width, height = request.width or base_w, request.height or base_h
        if init.size != (width, height):
            init = init.resize((width, height), Image.Resampling.LANCZOS)
            if mask is not None:
                mask = mask.resize((width, height), Image.Resampling.NEAREST)
        return width, height, init, mask

    def _scheduler(self, requested: str) -> tuple[str, Any]:
        """The scheduler's canonical name and a fresh instance (state never leaks between calls)."""
        name = " ".join(requested.lower().split())
        if not name:
            return _scheduler_name(self.scheduler_class, self.scheduler_config), (
                self.scheduler_class.from_config(self.scheduler_config)
            )
        if name not in SCHEDULER_TABLE:
            raise InvalidRequest(
                f"unknown scheduler {requested!r}; use one of: {', '.join(SCHEDULERS)} "
                "(or leave it empty for the model's own)"
            )
        cls, overrides, _ = SCHEDULER_TABLE[name]
        return name, cls.from_config(self.scheduler_config, **overrides)

    def _arguments(
        self,
        kwargs: dict[str, Any],
        mode: str,
        init: Image.Image | None,
        mask: Image.Image | None,
        strength: float | None,
        width: int,
        height: int,
    ) -> Any:
        """Fill in the mode's arguments and return the pipeline that draws it."""
        if self.inpainting_unet:
            # A 9-channel UNet always needs a mask and a masked picture: all-white repaints
            # everything (text-to-image starts from pure noise at strength 1).
            if init is None:
                init, strength = Image.new("RGB", (width, height), (127, 127, 127)), 1.0
            if mask is None:
                mask = Image.new("L", (width, height), 255)
            mode = "inpaint"
        if mode == "txt2img":
            kwargs.update(width=width, height=height)
        elif mode == "img2img":
            kwargs.update(image=init, strength=strength)
        else:
            kwargs.update(
                image=init, mask_image=mask, strength=strength, width=width, height=height
            )
        return self.pipes[mode]

    def _style_arguments(
        self, kwargs: dict[str, Any], styles: list[Image.Image], strength: float, guidance: float
    ) -> None:
        """IP-Adapter inputs: the style pictures at `strength`, or idle at scale 0."""
        if not self.ip_adapter:
            return
        pipe = self.pipes["txt2img"]  # the scale lives in the shared UNet's processors
        if styles:
            pipe.set_ip_adapter_scale(strength)
            kwargs["ip_adapter_image"] = [styles]  # one adapter, one or more pictures
        else:
            # The pipeline's own rule for classifier-free guidance decides the embeds' batch.
            cfg = guidance > 1 and self.unet.config.time_cond_proj_dim is None
            pipe.set_ip_adapter_scale(0.0)
            kwargs["ip_adapter_image_embeds"] = self.idle_embeds[cfg]

    def _denoise(
        self,
        plan: _Plan,
        cancelled: Callable[[], bool],
        finish: Callable[[], bool],
        preview_every: int,
    ) -> Generator[ImageStep, None, Image.Image | None]:
        """Run the pipeline on the torch thread; yield its steps; return the picture or None."""
        events: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()
        shown = [0]  # the step counts reported so far

        def on_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if stop.is_set() or cancelled():
                raise _Stopped
            done, calls = step + 1, pipe.num_timesteps
            if finish():
                pipe._interrupt = True  # diffusers skips the remaining steps, then decodes
            wanted = preview_every > 0 and done % preview_every == 0 and done < calls
            preview = self._preview(pipe, tensors["latents"]) if wanted else None
            completed, total = _asked_steps(done, calls, plan.denoising)
            if completed != shown[-1] or preview is not None:  # a count once, in order
                shown.append(completed)
                events.put(Progress(completed, total, preview))
            return tensors

        def work() -> None:
            plan.pipe.scheduler = plan.scheduler
            try:
                images = plan.pipe(**plan.kwargs, callback_on_step_end=on_step).images
                events.put(self._decoded(plan.pipe, images, tiny=True) if plan.tiny else images[0])
            except _Stopped:
                events.put(None)
            except BaseException as error:  # handed to the caller's thread
                events.put(error)

        worker = self._torch.submit(work)
        try:
            while True:
                event = events.get()
                if isinstance(event, Progress):
                    yield event
                elif isinstance(event, BaseException):
                    raise event
                else:
                    return event if isinstance(event, Image.Image) else None
        finally:
            stop.set()  # a closed generator stops the worker at its next step
            wait([worker])

    def _preview(self, pipe: Any, latents: torch.Tensor) -> bytes:
        """The latents so far as a PNG: through the tiny autoencoder when the model has one
        (A1111's "TAESD" previews), else through the VAE (its "Full" previews)."""
        picture = self._decoded(pipe, latents, tiny=self.tiny_vae is not None)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def _decoded(self, pipe: Any, latents: torch.Tensor, tiny: bool) -> Image.Image:
        """The first picture of `latents` (as the UNet sees them), decoded by the tiny
        autoencoder, which reads them as they are, or by the VAE, which unscales them first."""
        with torch.no_grad():
            if tiny:
                pixels = self.tiny_vae.decode(latents[:1].to(self.tiny_vae.dtype)).sample
            else:
                scaled = latents[:1].to(self.vae.dtype) / self.vae.config.scaling_factor
                pixels = self.vae.decode(scaled).sample
        pictures: list[Image.Image] = pipe.image_processor.postprocess(pixels.float(), "pil")
        return pictures[0]

    @contextmanager
    def _request_loras(self, request: ImageRequest) -> Iterator[None]:
        """LoRAs for this call only (A1111's `<lora:name:weight>`), unloaded after it."""
        if not request.loras:
            yield
            return
        pipe = self.pipes["txt2img"]  # every pipe shares its UNet and text encoder
        names = [f"request{number}" for number in range(len(request.loras))]
        try:
            for name, path in zip(names, request.loras, strict=True):
                try:
                    weights = self._torch.submit(safetensors.torch.load_file, path).result()
                    self._torch.submit(pipe.load_lora_weights, weights, adapter_name=name).result()
                except (ValueError, KeyError, RuntimeError, OSError) as error:
                    raise InvalidRequest(
                        f"LoRA {Path(path).name} does not fit this model: {error}"
                    ) from error
            weights_list = list(request.loras.values())
            self._torch.submit(pipe.set_adapters, names, adapter_weights=weights_list).result()
            yield
        finally:
            self._torch.submit(pipe.unload_lora_weights).result()

    @contextmanager
    def _on_torch(self, needed: bool) -> Iterator[None]:
        """The torch modules, not the OpenVINO graphs, for a call whose LoRAs only they hold."""
        if not needed or self.openvino is None:
            yield
            return
        log.info("drawing this picture on torch: its LoRAs are applied for this request only")
        self.openvino.torch_only = True
        try:
            yield
        finally:
            self.openvino.torch_only = False

    @contextmanager
    def _memory_switches(self, width: int, height: int) -> Iterator[None]:
        """Tiled VAE and sliced attention for this call when its estimate exceeds free memory;
        InsufficientMemory (507) when even they leave it too large, before any step runs."""
        available = _available_bytes(self.device)
        if available is None or self.estimate_peak_bytes(width, height) <= available:
            yield
            return
        frugal = self.estimate_peak_bytes(width, height, frugal=True)
        if frugal > available:
            need, free = config.format_bytes(frugal), config.format_bytes(available)
            raise InsufficientMemory(
                f"a {width}x{height} picture needs about {need} to draw, even with sliced "
                f"attention and a tiled VAE, and {free} is free; draw it smaller (and upscale "
                "it), or free memory"
            )
        self.vae.enable_tiling()
        if self.tiny_vae is not None:
            self.tiny_vae.enable_tiling()
        if not self.ip_adapter:
            self.unet.set_attention_slice("auto")
        if self.openvino is not None:  # the graphs neither slice nor tile
            self.openvino.torch_only = True
        try:
            yield
        finally:
            self.vae.disable_tiling()
            if self.tiny_vae is not None:
                self.tiny_vae.disable_tiling()
            self.unet.set_attn_processor(dict(self.processors))
            if self.openvino is not None:
                self.openvino.torch_only = False


def load_diffusers_pipeline(folder: Path, dtype: torch.dtype) -> Any:
    """The base pipeline of a diffusers folder, of the family named in its model_index.json."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise InvalidRequest(f"{folder} has no model_index.json; it is not a diffusers model")
    class_name = json.loads(index_file.read_text(encoding="utf-8")).get("_class_name")
    # Without accelerate, diffusers would warn and fall back to this anyway.
    low_memory = importlib.util.find_spec("accelerate") is not None
    common = {"dtype": dtype, "local_files_only": True, "low_cpu_mem_usage": low_memory}
    if class_name in SD_CLASSES:
        return StableDiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            folder, safety_checker=None, requires_safety_checker=False, **common
        )
    if class_name in XL_CLASSES:
        # The watermarker needs the invisible-watermark package and alters pictures.
        return StableDiffusionXLPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            folder, add_watermarker=False, **common
        )
    raise InvalidRequest(
        f"model_index.json names {class_name!r}; this engine runs Stable Diffusion 1.x/2.x "
        f"and SDXL pipelines ({', '.join(sorted(SD_CLASSES | XL_CLASSES))})"
    )


def pipeline_bytes(pipe: Any) -> int:
    """Bytes of the parameters of every torch component of a pipeline."""
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return sum(module_bytes(m) for m in modules)


def module_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _load_tiny_vae(folder: Path, dtype: torch.dtype, vae: Any) -> Any:
    """The tiny autoencoder (diffusers' AutoencoderTiny) in `folder`, or None without one;
    safetensors only, and its latents must be the VAE's."""
    if not (folder / "config.json").is_file():
        return None
    try:
        with _diffusers_quiet():
            tiny = AutoencoderTiny.from_pretrained(  # type: ignore[no-untyped-call]
                folder, dtype=dtype, use_safetensors=True, local_files_only=True
            )
    except (ValueError, KeyError, RuntimeError, OSError) as error:
        raise InvalidRequest(
            f"{TINY_VAE_FOLDER}/ is not a tiny autoencoder (AutoencoderTiny) limner can load: "
            f"{error}"
        ) from error
    if tiny.config.latent_channels != vae.config.latent_channels:
        raise InvalidRequest(
            f"the tiny autoencoder in {TINY_VAE_FOLDER}/ decodes {tiny.config.latent_channels} "
            f"latent channels, but this model's VAE makes {vae.config.latent_channels}"
        )
    return tiny.eval()


@contextmanager
def _diffusers_quiet() -> Iterator[None]:
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def _fuse_loras(
    pipe: Any, folder: Path, scale: float, weights: dict[str, float] | None = None
) -> list[str]:
    """Load every LoRA in `folder` (diffusers or kohya keys) and fuse them, each at its
    weight in `weights` (by file name; default 1), all at `scale`."""
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    weights = weights or {}
    unknown = sorted(set(weights) - {path.name for path in files})
    if unknown:
        raise InvalidRequest(f"adapter_weights names {', '.join(unknown)}, which this model lacks")
    names = [f"lora{number}" for number in range(len(files))]
    for name, path in zip(names, files, strict=True):
        try:
            pipe.load_lora_weights(str(folder), weight_name=path.name, adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as error:
            raise InvalidRequest(
                f"adapter {path.name} is not a LoRA this model can use: {error}"
            ) from error
    if files:
        pipe.set_adapters(names, adapter_weights=[weights.get(p.name, 1.0) for p in files])
        pipe.fuse_lora(lora_scale=scale, adapter_names=names)
        pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go
    return [path.name for path in files]


def _pick_precision(precision: str, device: str) -> tuple[torch.dtype, str]:
    choice = precision.strip().lower()
    named = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if choice in named:
        return named[choice], choice
    if choice:
        raise InvalidRequest(f'precision must be "", "fp32", "bf16" or "fp16", not {precision!r}')
    if device == "cuda":
        return (
            (torch.bfloat16, "bf16") if torch.cuda.is_bf16_supported() else (torch.float16, "fp16")
        )
    return (torch.bfloat16, "bf16") if cpu_has_bf16() else (torch.float32, "fp32")


def _draws_on_openvino(device: str) -> bool:
    """LIMNER_DRAW_ENGINE, else OpenVINO on a CPU where the package is installed."""
    choice = config.draw_engine()
    if choice:
        return choice == "openvino"
    return device == "cpu" and importlib.util.find_spec("openvino") is not None


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX), from /proc/cpuinfo's flags."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool({"avx512_bf16", "amx_bf16"} & set(line.partition(":")[2].split()))
    return False


def _available_bytes(device: str) -> int | None:
    """Memory a call may use: free GPU memory on CUDA, MemAvailable on Linux, else unknown."""
    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _scheduler_name(cls: type[Any], config: Any) -> str:
    """The request name of a model's own scheduler, or its class name if it has none."""
    for name, (known, overrides, _) in SCHEDULER_TABLE.items():
        karras = overrides.get("use_karras_sigmas")
        if known is cls and (karras is None or karras == bool(config.get("use_karras_sigmas"))):
            return name
    return cls.__name__


def _asked_steps(done: int, calls: int, asked: int) -> tuple[int, int]:
    """Progress counted in the steps asked for: PNDM runs 5 scheduler calls for 4 steps
    (its warm-up), so call 5 of 5 is step 4 of 4, never "5/5" for 4 steps."""
    if not asked or asked == calls:
        return done, calls
    return max(1, done * asked // calls), asked  # the asked total only at the last call


def _at_least_one_step(strength: float, steps: int) -> float:
    # The smallest strength above `strength` that still runs one step (1/steps may not: 49/49).
    strength = min(max(strength, 1.0 / steps), 1.0)
    while int(steps * strength) < 1:
        strength = math.nextafter(strength, 2.0)
    return strength


def _pictures(
    request: ImageRequest,
) -> tuple[Image.Image | None, Image.Image | None, list[Image.Image]]:
    """The decoded input picture, mask (grey levels kept) and style pictures; the mask fits
    the picture."""
    init = open_rgb(request.image, "the picture") if request.image is not None else None
    mask = None
    if request.mask is not None:
        if init is None:
            raise InvalidRequest("a mask needs the picture to repaint in `image`")
        mask = open_rgb(request.mask, "the mask").convert("L")
        if mask.size != init.size:
            raise InvalidRequest(
                f"the mask is {mask.width}x{mask.height} but the picture is "
                f"{init.width}x{init.height}; send a mask the size of the picture "
                "(white = repaint, black = keep)"
            )
    styles = [
        open_rgb(data, f"style picture {i}") for i, data in enumerate(request.style_images, 1)
    ]
    return init, mask, styles


def _overlay(image: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """The drawn picture where the mask is white, the original pixels exactly where it is
    black, and a blend by the grey level between (a blurred mask's feathered edge)."""
    drawn = np.asarray(image.convert("RGB"), dtype=np.float32)
    kept = np.asarray(original.convert("RGB"), dtype=np.float32)
    alpha = np.asarray(mask.convert("L"), dtype=np.float32)[..., None] / 255.0
    return Image.fromarray(np.rint(drawn * alpha + kept * (1.0 - alpha)).astype(np.uint8))


def a1111_parameters(parameters: dict[str, Any]) -> str:
    """Automatic1111's `parameters` text for a result's parameters (what its PNG Info reads)."""
    name = parameters["scheduler"]
    sampler = SCHEDULER_TABLE[name][2] if name in SCHEDULER_TABLE else name
    fields: list[tuple[str, Any]] = [
        ("Steps", parameters["steps"]),
        ("Sampler", sampler),
        ("CFG scale", f"{parameters['guidance_scale']:g}"),
        ("Seed", parameters["seed"]),
        ("Size", f"{parameters['width']}x{parameters['height']}"),
    ]
    if parameters.get("model"):
        fields.append(("Model", parameters["model"]))
    digest = str(parameters.get("digest") or "").removeprefix("sha256:")
    if digest:
        fields.append(("Model hash", digest[:10]))
    if parameters.get("vae") == "tiny":
        fields.append(("VAE", "TAESD"))  # A1111 names the VAE that decoded the picture
    if parameters.get("strength") is not None:
        fields.append(("Denoising strength", f"{parameters['strength']:g}"))
    # A1111 keeps LoRA tags in the prompt it writes, so its PNG Info draws them again.
    tags = [f"<lora:{each.strip()}>" for each in (parameters.get("loras") or "").split(",")]
    lines = [" ".join([parameters["prompt"], *(tag for tag in tags if tag != "<lora:>")])]
    if parameters.get("negative_prompt"):
        lines.append(f"Negative prompt: {parameters['negative_prompt']}")
    lines.append(", ".join(f"{key}: {_a1111_quote(str(value))}" for key, value in fields))
    return "\n".join(lines)


def _a1111_quote(text: str) -> str:
    # A1111's infotext quoting: values with a comma, colon or newline become JSON strings.
    return json.dumps(text) if any(c in text for c in ",:\n") else text


def png_with_parameters(image: Image.Image, parameters: dict[str, Any]) -> bytes:
    """PNG bytes of `image` with `parameters` in two text chunks: `parameters` (Automatic1111's
    format) and `limner` (JSON). Fixed encoder settings, so equal pictures give equal bytes."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(parameters))  # iTXt if not Latin-1
    info.add_text("limner", json.dumps(parameters, ensure_ascii=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=6, optimize=False)
    return buffer.getvalue()
