"""Drawing on /api/generate: models whose capabilities include "image".

Ollama's experimental shape (width, height, steps in; one `completed`/`total` line per
denoising step; a last line with `image`, a base64 PNG), plus limner's fields: seed,
negative prompt, guidance, scheduler, strength, an init picture (`images[0]`), a mask,
style pictures and `vae` ("tiny": the model's tiny autoencoder decodes; a model without one
is a 400, read from its config's `{family}.tiny_vae`). Everything is checked here, before the model is even leased, so a bad
request costs nothing and always gets a 400 that says what to fix.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from limner import config, pictures
from limner.engines import ImageRequest, ImageResult, Progress, drawing
from limner.engines.drawing import DEFAULT_STRENGTH, DEFAULT_STYLE_STRENGTH, MAX_STEPS
from limner.errors import InvalidRequest, TooLarge
from limner.server.state import State
from limner.server.streaming import created_at
from limner.store import Store
from limner.store.described import Described
from limner.store.manifests import ADAPTER
from limner.types import GenerateRequest


def check(body: GenerateRequest, model_config: dict[str, Any]) -> ImageRequest:
    """The engine's request, its pictures decoded and every field checked, or a 4xx."""
    images = body.images or []
    pictures.check_count(len(images) + len(body.style_images or []) + (body.mask is not None))
    if len(images) > 1:
        raise InvalidRequest(
            "send one init picture in images; reference pictures go in style_images"
        )
    init_bytes, init = _decoded(images[0], "init picture (images[0])") if images else (None, None)
    width, height = _size(body, init, model_config)
    seed = body.seed if body.seed is not None else (body.options or {}).get("seed", -1)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidRequest("seed must be an integer")
    request = drawing.checked(
        ImageRequest(
            prompt=body.prompt or "", negative_prompt=body.negative_prompt or "",
            width=width, height=height, steps=_steps(body.steps),
            guidance_scale=body.guidance_scale, seed=seed, scheduler=body.scheduler or "",
            strength=DEFAULT_STRENGTH if body.strength is None else body.strength,
            image=init_bytes, style_strength=_given(body.style_strength, DEFAULT_STYLE_STRENGTH),
            loras=dict(body.loras or {}), preview_every=body.preview_every or 0,
            vae=body.vae or "",
        )
    )  # fmt: skip
    family = model_config.get("model_family", "")
    facts = model_config.get("model_info") or {}
    if request.vae == "tiny" and not facts.get(f"{family}.tiny_vae"):
        raise InvalidRequest(drawing.NO_TINY_VAE)
    if body.style_images and init is not None and facts.get(f"{family}.ip_adapter") is False:
        raise InvalidRequest(drawing.STYLE_WITH_IMAGE_NEEDS_IP_ADAPTER)  # before any load
    request.mask = _checked_mask(body.mask, init)
    request.style_images = [
        _decoded(encoded, f"style picture {number}")[0]
        for number, encoded in enumerate(body.style_images or [], 1)
    ]
    return request


def _steps(steps: int | None) -> int:
    """The steps asked for; absent is 0, the model's default (20, or 1 for a Turbo model)."""
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise InvalidRequest(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    return steps or 0


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


def _decoded(encoded: str, label: str) -> tuple[bytes, Image.Image]:
    """The picture's bytes (what the engine gets) and the picture they decode to."""
    [data] = pictures.decode_base64([encoded], label)
    return pictures.checked_upright(data, label)


def _size(
    body: GenerateRequest, init: Image.Image | None, model_config: dict[str, Any]
) -> tuple[int, int]:
    """Explicit size, else the init picture's (down to a multiple of 8), else the model's."""
    default = int(model_config.get("default_size", 512))
    fallback = (init.width // 8 * 8, init.height // 8 * 8) if init else (default, default)
    width, height = body.width or fallback[0], body.height or fallback[1]
    if not (width and height) and init is not None:
        raise InvalidRequest(
            f"the init picture is {init.width}x{init.height}; it must be at least 8x8"
        )
    drawing.check_size(width, height)
    limit = config.max_image_pixels()
    if width * height > limit:
        raise TooLarge(
            f"{width}x{height} is over the limit of {limit} pixels (LIMNER_MAX_IMAGE_PIXELS)"
        )
    return width, height


def _checked_mask(encoded: str | None, init: Image.Image | None) -> bytes | None:
    if encoded is None:
        return None
    if init is None:
        raise InvalidRequest("a mask needs the picture to repaint in images[0]")
    data, mask = _decoded(encoded, "mask")
    if mask.size != init.size:
        raise InvalidRequest(
            f"the mask is {mask.width}x{mask.height} but the picture is {init.width}x{init.height}; "
            "send a mask the size of the picture (white = repaint, black = keep)"
        )
    return data


def activation_bytes(width: int, height: int) -> int:
    """A rough peak for one denoising step: the largest self-attention map, for the two
    halves of classifier-free guidance and 8 heads in fp32, plus 256 MB of the rest."""
    latent_pixels = (width // 8) * (height // 8)
    return 2 * 8 * latent_pixels * latent_pixels * 4 + (256 << 20)


def lora_files(store: Store, loras: dict[str, float]) -> dict[str, float]:
    """Each named model's LoRA files (its adapter layers), at the weight asked for."""
    files: dict[str, float] = {}
    for model, weight in loras.items():
        entry = store.entry(store.resolve(model))
        layers = [layer for layer in entry.manifest.layers if layer.mediaType == ADAPTER]
        if not layers:
            raise InvalidRequest(
                f"{model!r} has no LoRA; name a model made by training, or created with adapters"
            )
        for layer in layers:
            files[str(store.blobs.open_path(layer.digest))] = weight
    return files


@dataclass(frozen=True)
class Drawn:
    """A finished picture, the server's own durations (ns), and its id in the gallery."""

    result: ImageResult
    load_duration: int
    total_duration: int
    picture_id: str | None = None  # None: the gallery keeps nothing


async def draw(
    state: State,
    model: Described,
    request: ImageRequest,
    keep_alive: float | None,
    finish: asyncio.Event | None = None,
) -> AsyncIterator[Progress | Drawn]:
    """The runner's progress, then the picture with durations added.
    Setting `finish` ends the drawing early with the picture so far (A1111's interrupt)."""
    started = time.perf_counter_ns()
    metadata = {"model": model.name.display(), "digest": model.digest}
    if request.loras:
        metadata["loras"] = ", ".join(f"{name}:{w:g}" for name, w in request.loras.items())
    request = dataclasses.replace(
        request, loras=lora_files(state.store, request.loras), metadata=metadata
    )
    work = activation_bytes(request.width, request.height)
    async with state.scheduler.lease(model, keep_alive, work) as loaded:
        load_duration = loaded.runner.load_duration if loaded.fresh else 0
        async for step in loaded.runner.generate_image(request, finish):
            if isinstance(step, Progress):
                yield step
            else:
                kept = await asyncio.to_thread(state.gallery.add, step.png, step.parameters)
                yield Drawn(step, load_duration, time.perf_counter_ns() - started, kept)


def base64_png(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def chunks(
    model: str, steps: AsyncIterator[Progress | Drawn]
) -> AsyncIterator[dict[str, Any]]:
    """Runner steps as Ollama's image-generation lines."""
    total = 0
    async for step in steps:
        line: dict[str, Any] = {"model": model, "created_at": created_at(), "response": ""}
        if isinstance(step, Progress):
            total = step.total
            progress: dict[str, Any] = {"done": False, "completed": step.completed, "total": total}
            if step.preview:
                progress["preview"] = base64_png(step.preview)
            yield {**line, **progress}
        else:
            yield {
                **line, "done": True, "done_reason": "stop", "completed": total, "total": total,
                "image": base64_png(step.result.png), "parameters": step.result.parameters,
                "total_duration": step.total_duration, "load_duration": step.load_duration,
                **({"picture_id": step.picture_id} if step.picture_id else {}),
            }  # fmt: skip
