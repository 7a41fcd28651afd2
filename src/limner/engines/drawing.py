"""One drawing request: its fields, defaults and limits, checked in one place.

The server calls `checked()` before any work (so a bad request costs nothing and gets a 400
that says what to fix); the engine calls it again as a guard for direct callers, then
`defaults()` for the scheduler it really runs, and keeps only the checks that need the
loaded model (an IP-Adapter, a LoRA file, the VAE's scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from limner.errors import InvalidRequest

# Scheduler names accepted in requests (A1111's names in lower case, and short forms).
SCHEDULERS = ("euler", "euler a", "dpm++ 2m", "dpm++ 2m karras", "ddim", "lcm", "pndm", "unipc")
DEFAULT_STEPS, LCM_STEPS, MAX_STEPS = 20, 4, 150
DEFAULT_GUIDANCE, LCM_GUIDANCE, MAX_GUIDANCE = 7.5, 1.0, 100.0  # LCM: no classifier-free guidance
# Steps and guidance by kind of sampling: a distilled few-step model (SD-Turbo, SDXL-Turbo)
# draws in one step without classifier-free guidance; LCM in four with none.
SAMPLING = {"": (DEFAULT_STEPS, DEFAULT_GUIDANCE), "lcm": (LCM_STEPS, LCM_GUIDANCE),
            "turbo": (1, 0.0)}  # fmt: skip
DEFAULT_STRENGTH = 0.75
DEFAULT_STYLE_STRENGTH = 0.6
MAX_SIDE = 4096  # Ollama's "width and height must be <= 4096"
MAX_LORA_WEIGHT = 10.0  # A1111 accepts any; far past 2 a LoRA only breaks the picture
MAX_SEED = 2**64  # seeds are unsigned 64-bit; -1 asks for a random one
# Which autoencoder decodes the picture: "" or "full", the model's own VAE; "tiny", the model's
# tiny autoencoder (TAESD), ~18x fewer operations at a little less detail.
VAES = ("", "full", "tiny")
NO_TINY_VAE = (
    'vae "tiny" needs a tiny autoencoder (TAESD) and this model has none; add one with: '
    "limner create NAME --from MODEL --tiny-vae PATH (a TAESD folder, or a pulled "
    "hf.co/madebyollin/taesd)"
)


@dataclass
class ImageRequest:
    """One picture to draw.

    Modes follow from what is given: nothing -> text-to-image; `image` -> image-to-image
    (`strength` of re-noising); `image` + `mask` -> inpainting (white = repaint);
    `style_images` -> style transfer with the model's IP-Adapter at `style_strength`.
    """

    prompt: str
    negative_prompt: str = ""
    width: int = 0  # 0: the model's default size (or the init picture's)
    height: int = 0
    steps: int = 0  # 0: the model's default (SAMPLING)
    guidance_scale: float | None = None  # None: the model's default
    seed: int = -1  # -1: random; the seed used is reported in the result
    scheduler: str = ""  # "": the model's own; else a name from SCHEDULERS
    strength: float = DEFAULT_STRENGTH  # image-to-image and inpainting: how much to change
    image: bytes | None = None  # encoded PNG/JPEG/WebP
    mask: bytes | None = None  # same size as `image`; white repaints, black keeps
    style_images: list[bytes] = field(default_factory=list)
    style_strength: float = DEFAULT_STYLE_STRENGTH
    loras: dict[str, float] = field(default_factory=dict)  # LoRA file -> weight, this call only
    preview_every: int = 0  # >0: a picture of the work in progress every N steps
    vae: str = ""  # "" or "full": the model's VAE decodes; "tiny": its tiny autoencoder (VAES)
    metadata: dict[str, str] = field(default_factory=dict)  # e.g. model and digest, for the PNG


# Without an IP-Adapter a style picture is the image-to-image start: it cannot join an image.
STYLE_WITH_IMAGE_NEEDS_IP_ADAPTER = (
    "this model has no IP-Adapter, so style pictures are drawn from as an image-to-image "
    "start, which cannot be combined with an image; send either the image or the style "
    "pictures, or use a model with an IP-Adapter"
)


def checked(request: ImageRequest) -> ImageRequest:
    """The request with its scheduler and VAE names normalised, or InvalidRequest naming
    the field."""
    scheduler = request.scheduler.strip().lower()
    if scheduler and scheduler not in SCHEDULERS:
        raise InvalidRequest(
            f"unknown scheduler {request.scheduler!r}; use one of: {', '.join(SCHEDULERS)}"
        )
    vae = request.vae.strip().lower()
    if vae not in VAES:
        raise InvalidRequest(
            f'vae must be "full" (the model\'s VAE, the default) or "tiny" (its tiny '
            f"autoencoder, TAESD), not {request.vae!r}"
        )
    check_size(request.width, request.height)
    if request.steps and not 1 <= request.steps <= MAX_STEPS:
        raise InvalidRequest(f"steps must be between 1 and {MAX_STEPS}, got {request.steps}")
    _in_range("guidance_scale", request.guidance_scale, 0, MAX_GUIDANCE)
    _in_range("style_strength", request.style_strength, 0, 1)
    if not -1 <= request.seed < MAX_SEED:
        raise InvalidRequest(f"seed must be -1 (random) or from 0 to 2**64 - 1, got {request.seed}")
    if not 0 <= request.preview_every <= MAX_STEPS:
        raise InvalidRequest(
            f"preview_every must be between 0 and {MAX_STEPS}, got {request.preview_every}"
        )
    for lora, weight in request.loras.items():
        if not math.isfinite(weight) or abs(weight) > MAX_LORA_WEIGHT:
            raise InvalidRequest(
                f"the weight of LoRA {lora!r} must be between -{MAX_LORA_WEIGHT} and "
                f"{MAX_LORA_WEIGHT}, got {weight}"
            )
    if request.mask is not None and request.image is None:
        raise InvalidRequest("a mask needs the picture to repaint in images[0]")
    check_strength(request.strength, request.steps or DEFAULT_STEPS, request.image is not None)
    return replace(request, scheduler=scheduler, vae=vae)


def nth_seed(seed: int, index: int) -> int:
    """The seed of picture `index` of a batch from `seed`: seed, seed + 1, ... wrapping past
    the last 64-bit seed to 0, so no picture of a valid request gets a seed out of range;
    -1 (random) stays random for each."""
    return (seed + index) % MAX_SEED if seed >= 0 else -1


def sampling(scheduler_class: str, timestep_spacing: str | None) -> str:
    """A model's kind of sampling, read from its scheduler config: "lcm" for an LCM scheduler,
    "turbo" for Euler over trailing timesteps (how SD-Turbo and SDXL-Turbo ship theirs), ""
    for any other."""
    if scheduler_class == "LCMScheduler":
        return "lcm"
    euler = scheduler_class in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler")
    return "turbo" if euler and timestep_spacing == "trailing" else ""


def defaults(request: ImageRequest, kind: str) -> tuple[int, float]:
    """Steps and guidance, the request's or those of the kind of sampling that runs."""
    steps, guidance = SAMPLING[kind]
    given = request.guidance_scale
    return request.steps or steps, guidance if given is None else given


def check_strength(strength: float, steps: int, redraws: bool = True) -> None:
    """Image-to-image re-noises `strength` of the way: at least one of `steps` must run."""
    if not (math.isfinite(strength) and 0 < strength <= 1):
        raise InvalidRequest(f"strength must be above 0 and at most 1, got {strength}")
    if redraws and int(steps * strength) < 1:
        raise InvalidRequest(
            f"steps x strength = {steps} x {strength} rounds to 0 denoising steps; "
            "raise steps or strength"
        )


def check_size(width: int, height: int) -> None:
    """0 asks for the default; any other side is a multiple of 8 from 8 to MAX_SIDE."""
    for side in (width, height):
        if side > MAX_SIDE:
            raise InvalidRequest(f"width and height must be <= {MAX_SIDE}")
        if side != 0 and (side < 8 or side % 8):
            raise InvalidRequest(
                f"width and height must be multiples of 8 (at least 8), got {width}x{height}"
            )


def _in_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:  # NaN and Infinity too
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}, got {value}")
