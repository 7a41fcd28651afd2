"""Automatic1111's `/sdapi/v1` as a translation into the native drawing handler.

Front-ends built for A1111 (Open WebUI's image generation, SillyTavern, webuiapi scripts)
send txt2img/img2img requests in its shape; each picture of a batch becomes one native
drawing request (`drawing.check` + `drawing.draw`), and the answer comes back in A1111's
shape: `images` as base64 PNGs, `parameters` echoing the request and `info` as a JSON
string. Jobs are tracked for `/sdapi/v1/progress` (with a preview) and `/interrupt`.
A1111's errors carry `error` and `detail`; ours carry the same message in both.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import random
import re
import secrets
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, PngImagePlugin

from limner import pictures
from limner.engines import ImageRequest, Progress
from limner.engines.drawing import nth_seed
from limner.errors import InvalidRequest, LimnerError, ModelNotFound, without_paths
from limner.names import ModelName
from limner.server import a1111_inpaint, drawing
from limner.server.state import State, parse_body
from limner.store.described import Capability, Described, capabilities, describe, stored_config
from limner.store.manifests import ADAPTER
from limner.store.store import Entry
from limner.types import (
    A1111Img2ImgRequest,
    A1111PngInfoRequest,
    A1111Txt2ImgRequest,
    GenerateRequest,
)

# A1111's sampler names -> limner's scheduler names, with A1111's aliases.
SAMPLERS: dict[str, tuple[str, list[str]]] = {
    "Euler a": ("euler a", ["k_euler_a", "k_euler_ancestral"]),
    "Euler": ("euler", ["k_euler"]),
    "DPM++ 2M": ("dpm++ 2m", ["k_dpmpp_2m"]),
    "DPM++ 2M Karras": ("dpm++ 2m karras", ["k_dpmpp_2m_ka"]),
    "DDIM": ("ddim", []),
    "PLMS": ("pndm", []),
    "UniPC": ("unipc", []),
    "LCM": ("lcm", ["k_lcm"]),
}
# A1111 1.10's schedule types -> (label, what limner runs). limner has the samplers' own
# spacing and Karras sigmas (DPM++ 2M); each other type runs as the closest of these, and
# the picture's info says which ("Schedule type" in extra_generation_params).
SCHEDULERS: dict[str, tuple[str, str]] = {
    "automatic": ("Automatic", "automatic"), "uniform": ("Uniform", "automatic"),
    "karras": ("Karras", "karras"), "exponential": ("Exponential", "karras"),
    "polyexponential": ("Polyexponential", "karras"), "sgm_uniform": ("SGM Uniform", "automatic"),
    "kl_optimal": ("KL Optimal", "automatic"), "align_your_steps": ("Align Your Steps", "karras"),
    "simple": ("Simple", "automatic"), "normal": ("Normal", "automatic"),
    "ddim": ("DDIM", "automatic"), "beta": ("Beta", "automatic"),
}  # fmt: skip
MAX_PICTURES = 16  # batch_size x n_iter
LORA_TAG = re.compile(r"<lora:([^:>]+):?([^:>]*)(?::[^>]*)?>")
KEPT_JOBS = 32  # finished jobs /progress can still report by id


@dataclass
class Job:
    """One txt2img/img2img call, for /progress and /interrupt."""

    id: str
    kind: str  # "txt2img" or "img2img"
    pictures: int
    steps: int
    started: float = field(default_factory=time.monotonic)
    timestamp: str = field(default_factory=lambda: time.strftime("%Y%m%d%H%M%S"))
    picture: int = 0  # of `pictures`, the one being drawn
    step: int = 0
    preview: str | None = None
    interrupted: bool = False
    done: bool = False
    finish: asyncio.Event = field(default_factory=asyncio.Event)  # this picture only

    def progress(self) -> float:
        if self.done:
            return 1.0
        return min((self.picture + self.step / max(self.steps, 1)) / self.pictures, 1.0)


@dataclass
class Session:
    """What A1111 keeps between calls: its options (the model among them) and the jobs."""

    options: dict[str, Any] = field(
        default_factory=lambda: {
            "sd_model_checkpoint": None,  # None: the first drawing model in the store
            "show_progress_every_n_steps": 10,
            "live_previews_enable": True,
            "samples_format": "png",
            "CLIP_stop_at_last_layers": 1,
            "sd_vae": "Automatic",
        }
    )
    jobs: dict[str, Job] = field(default_factory=dict)

    def start(self, job: Job) -> None:
        self.jobs[job.id] = job
        finished = [key for key, each in self.jobs.items() if each.done]
        for key in finished[: max(0, len(finished) - KEPT_JOBS)]:
            del self.jobs[key]

    def current(self, wanted: str | None) -> Job | None:
        if wanted:
            return self.jobs.get(wanted)
        running = [job for job in self.jobs.values() if not job.done]
        return running[-1] if running else None


def _session(request: Request) -> Session:
    session: Session = request.app.state.a1111
    return session


def _state(request: Request) -> State:
    state: State = request.app.state.limner
    return state


def a1111_error(exc: LimnerError) -> JSONResponse:
    message = without_paths(exc.message)
    body = {"error": type(exc).__name__, "detail": message, "errors": message}
    return JSONResponse(body, status_code=exc.status)


# --- drawing ---


async def txt2img(request: Request) -> Response:
    try:
        body = await parse_body(request, A1111Txt2ImgRequest)
        return await _draw(request, body, init=None)
    except LimnerError as exc:
        return a1111_error(exc)


async def img2img(request: Request) -> Response:
    try:
        body = await parse_body(request, A1111Img2ImgRequest)
        if not body.init_images:
            raise InvalidRequest("init_images needs one picture (base64 or a data: URI)")
        init = _open(body.init_images[0], "init_images[0]")
        return await _draw(request, body, init)
    except LimnerError as exc:
        return a1111_error(exc)


@dataclass
class _Prepared:
    """An img2img request's pictures as the native handler takes them, and how to put the
    drawn picture back (A1111's "inpaint only masked" and its soft mask edge)."""

    init: Image.Image
    mask: Image.Image | None = None  # binary, white repaints
    original: Image.Image | None = None  # what the result is pasted back into
    soft_mask: Image.Image | None = None  # blurred, at the original's size
    region: a1111_inpaint.Region | None = None


async def _draw(request: Request, body: A1111Txt2ImgRequest, init: Image.Image | None) -> Response:
    state, session = _state(request), _session(request)
    _refuse_unsupported(body)
    model = _model(state, session, body.override_settings)
    prompt, loras = _lora_tags(body.prompt)
    scheduler = _scheduler(body.sampler_name or body.sampler_index, body.scheduler)
    prepared = _prepare(body, init) if isinstance(body, A1111Img2ImgRequest) else None
    count = body.batch_size * body.n_iter
    if body.batch_size < 1 or body.n_iter < 1 or count > MAX_PICTURES:
        raise InvalidRequest(f"batch_size x n_iter must be between 1 and {MAX_PICTURES}")
    seed = body.seed if body.seed >= 0 else random.SystemRandom().randrange(2**32)
    native = _native(body, model.name, prompt, loras, scheduler, seed, prepared, session)
    checked = drawing.check(native, model.config)
    job = Job(
        body.force_task_id or f"task({secrets.token_hex(8)})",
        "img2img" if prepared else "txt2img",
        count,
        _denoising_steps(checked),
    )
    session.start(job)
    try:
        drawn = await _pictures(state, model, checked, job, seed)
    finally:
        job.done = True
    results = [_finish(png, prepared) for png, _ in drawn]
    parameters = [each for _, each in drawn]
    info = _info(body, model, parameters, job, prepared is not None)
    info["extra_generation_params"]["Schedule type"] = _schedule_note(body.scheduler, scheduler)
    info["infotexts"] = [_infotext(png) for png, _ in drawn]
    return JSONResponse(
        {
            "images": results if body.send_images else [],
            "parameters": _echo(body),
            "info": json.dumps(info),
        }
    )


def _refuse_unsupported(body: A1111Txt2ImgRequest) -> None:
    """A1111 features limner does not have: a 400 that names them, never a quiet skip."""
    refused = {
        "enable_hr (the hires fix)": body.enable_hr,
        "restore_faces": body.restore_faces,
        "tiling": body.tiling,
        "styles (limner has no saved styles)": bool(body.styles),
        "script_name (limner runs no A1111 scripts)": bool(body.script_name),
        "alwayson_scripts (limner runs no A1111 extensions)": bool(body.alwayson_scripts),
        "subseed_strength (variation seeds)": body.subseed_strength not in (0, None),
    }
    if isinstance(body, A1111Img2ImgRequest):
        refused["inpainting_fill 2 and 3 (latent noise, latent nothing)"] = (
            body.inpainting_fill not in (a1111_inpaint.FILL, a1111_inpaint.ORIGINAL)
        )
        refused["initial_noise_multiplier other than 1"] = body.initial_noise_multiplier not in (
            None,
            1,
            1.0,
        )
    named = [label for label, used in refused.items() if used]
    if named:
        raise InvalidRequest(f"limner does not support {', '.join(named)}; leave it out")


def _model(state: State, session: Session, overrides: dict[str, Any] | None) -> Described:
    """The request's sd_model_checkpoint, else the one set in the options, else the first
    drawing model in the store. A1111 titles ("name [hash]") work as well as names."""
    chosen = (overrides or {}).get("sd_model_checkpoint") or session.options["sd_model_checkpoint"]
    if chosen:
        model = describe(state.store, state.store.resolve(_title_to_name(str(chosen))))
        if not model.draws:
            raise InvalidRequest(
                f"{chosen!r} does not draw pictures; pick a Stable Diffusion model"
            )
        return model
    for entry in state.store.entries():
        if _draws(state, entry):
            return describe(state.store, entry.name)
    raise ModelNotFound("no drawing model is installed; create or pull a Stable Diffusion model")


def _title_to_name(title: str) -> str:
    return re.sub(r"\s*\[[0-9a-f]{8,64}\]$", "", title.strip())


def _draws(state: State, entry: Entry) -> bool:
    return Capability.IMAGE in capabilities(stored_config(state.store, entry.manifest))


def _lora_tags(prompt: str) -> tuple[str, dict[str, float]]:
    """`<lora:name:weight>` tags out of the prompt, as {name: weight} (weight 1 if absent)."""
    loras: dict[str, float] = {}
    for name, weight in LORA_TAG.findall(prompt):
        try:
            loras[name.strip()] = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise InvalidRequest(f"the weight in <lora:{name}:{weight}> is not a number") from None
    cleaned = " ".join(LORA_TAG.sub(" ", prompt).split())
    return cleaned, loras


def _scheduler(sampler: str | None, scheduler: str | None) -> str:
    """limner's scheduler for an A1111 sampler (name or alias) and scheduler type."""
    if not sampler:
        native = ""
    else:
        by_alias = {alias: name for name, (_, aliases) in SAMPLERS.items() for alias in aliases}
        name = sampler if sampler in SAMPLERS else by_alias.get(sampler.strip())
        if name is None:
            raise InvalidRequest(
                f"sampler {sampler!r} is not available; use one of: {', '.join(SAMPLERS)}"
            )
        native = SAMPLERS[name][0]
    kind = schedule_type(scheduler)
    # Karras sigmas exist here for DPM++ 2M; with another sampler its own spacing runs.
    if SCHEDULERS[kind][1] == "karras" and native == "dpm++ 2m":
        native = "dpm++ 2m karras"
    return native


def schedule_type(scheduler: str | None) -> str:
    """A1111's schedule type by name or label (any case), or a 400 listing them."""
    wanted = (scheduler or "automatic").strip().lower().replace(" ", "_")
    for name, (label, _) in SCHEDULERS.items():
        if wanted in (name, label.lower().replace(" ", "_")):
            return name
    raise InvalidRequest(
        f"scheduler {scheduler!r} is not available; use one of: {', '.join(SCHEDULERS)}"
    )


def _schedule_note(scheduler: str | None, native: str) -> str:
    """The schedule type asked for, and what ran for it when that differs."""
    kind = schedule_type(scheduler)
    label = SCHEDULERS[kind][0]
    karras = native == "dpm++ 2m karras"
    if kind == "automatic" or (kind == "karras" and karras):
        return label
    return f"{label} (ran as {'Karras' if karras else 'the sampler spacing'})"


def _open(encoded: str, label: str) -> Image.Image:
    return pictures.check(pictures.from_base64(encoded, label, data_uri=True), label)


def _prepare(body: A1111Img2ImgRequest, init: Image.Image | None) -> _Prepared:
    """A1111's img2img preparation: resize, mask blur and inversion, "only masked", fill."""
    assert init is not None
    picture = init.convert("RGB")
    width, height = body.width, body.height
    if body.mask is None:
        return _Prepared(a1111_inpaint.resize(picture, body.resize_mode, width, height))
    mask = a1111_inpaint.read_mask(_open(body.mask, "mask"), bool(body.inpainting_mask_invert))
    if mask.size != picture.size:
        mask = a1111_inpaint.resize(mask, body.resize_mode, picture.width, picture.height)
    blur_x = body.mask_blur if body.mask_blur is not None else body.mask_blur_x
    blur_y = body.mask_blur if body.mask_blur is not None else body.mask_blur_y
    if body.inpaint_full_res:
        soft = a1111_inpaint.blur(mask, blur_x, blur_y)
        region = a1111_inpaint.masked_region(soft, body.inpaint_full_res_padding, width, height)
        crop = picture.crop(region.box).resize((width, height), Image.Resampling.LANCZOS)
        crop_mask = soft.crop(region.box).resize((width, height), Image.Resampling.LANCZOS)
        prepared = _Prepared(crop, a1111_inpaint.binary(crop_mask), picture, soft, region)
    else:
        picture = a1111_inpaint.resize(picture, body.resize_mode, width, height)
        soft = a1111_inpaint.blur(
            a1111_inpaint.resize(mask, body.resize_mode, width, height), blur_x, blur_y
        )
        prepared = _Prepared(picture, a1111_inpaint.binary(soft), picture, soft)
    assert prepared.mask is not None
    if prepared.mask.getextrema() == (0, 0):
        raise InvalidRequest("the mask is all black: nothing to repaint")
    if body.inpainting_fill == a1111_inpaint.FILL:
        prepared.init = a1111_inpaint.fill(prepared.init, prepared.mask)
    return prepared


def _native(
    body: A1111Txt2ImgRequest,
    name: ModelName,
    prompt: str,
    loras: dict[str, float],
    scheduler: str,
    seed: int,
    prepared: _Prepared | None,
    session: Session,
) -> GenerateRequest:
    every = int(session.options.get("show_progress_every_n_steps") or 0)
    previews = bool(session.options.get("live_previews_enable")) and every > 0
    fields: dict[str, Any] = {
        "model": name.display(), "prompt": prompt, "negative_prompt": body.negative_prompt,
        "width": body.width, "height": body.height, "steps": body.steps, "seed": seed,
        "guidance_scale": body.cfg_scale, "scheduler": scheduler, "loras": loras or None,
        "preview_every": every if previews else 0,
    }  # fmt: skip
    if prepared is not None:
        fields["images"] = [_png(prepared.init)]
        fields["strength"] = body.denoising_strength
        if prepared.mask is not None:
            fields["mask"] = _png(prepared.mask)
    try:
        return GenerateRequest.model_validate(fields)
    except ValueError as exc:
        raise InvalidRequest(f"invalid drawing request: {exc}") from None


def _png(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _denoising_steps(checked: ImageRequest) -> int:
    if checked.image is None:
        return checked.steps
    return max(1, int(checked.steps * checked.strength))


async def _pictures(
    state: State, model: Described, checked: ImageRequest, job: Job, seed: int
) -> list[tuple[str, dict[str, Any]]]:
    """Each picture of the batch in turn (seeds seed, seed+1, ...), as PNG and parameters.
    An interrupt keeps the picture being drawn, as far as it got, and draws no more."""
    drawn: list[tuple[str, dict[str, Any]]] = []
    for number in range(job.pictures):
        if job.interrupted:
            break
        job.picture, job.step, job.finish = number, 0, asyncio.Event()
        request = dataclasses.replace(checked, seed=nth_seed(seed, number))
        async for step in drawing.draw(state, model, request, None, job.finish):
            if isinstance(step, Progress):
                job.step, job.steps = step.completed, step.total
                if step.preview:
                    job.preview = drawing.base64_png(step.preview)
            else:
                drawn.append((drawing.base64_png(step.result.png), step.result.parameters))
    return drawn


def _finish(encoded: str, prepared: _Prepared | None) -> str:
    """The engine's PNG, pasted back into the original with the soft mask edge for
    inpainting (keeping the PNG's parameters), else as it came."""
    if prepared is None or prepared.soft_mask is None or prepared.original is None:
        return encoded
    png = Image.open(io.BytesIO(base64.b64decode(encoded)))
    text = dict(getattr(png, "text", {}))
    drawn = png.convert("RGB")
    if prepared.region is not None:
        canvas = prepared.original.copy()
        canvas.paste(
            drawn.resize(prepared.region.size, Image.Resampling.LANCZOS), prepared.region.box[:2]
        )
        drawn = canvas
    result = a1111_inpaint.paste_back(drawn, prepared.original, prepared.soft_mask)
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    result.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def _echo(body: A1111Txt2ImgRequest) -> dict[str, Any]:
    """The request as A1111 echoes it: every field, pictures left out unless asked for."""
    echoed = body.model_dump()
    if isinstance(body, A1111Img2ImgRequest) and not body.include_init_images:
        echoed["init_images"], echoed["mask"] = None, None
    return echoed


def _info(
    body: A1111Txt2ImgRequest,
    model: Described,
    parameters: list[dict[str, Any]],
    job: Job,
    img2img: bool,
) -> dict[str, Any]:
    first = parameters[0] if parameters else {}
    seeds = [each.get("seed") for each in parameters]
    sampler = next(
        (label for label, (native, _) in SAMPLERS.items() if native == first.get("scheduler")),
        first.get("scheduler"),
    )
    return {
        "prompt": body.prompt, "all_prompts": [body.prompt] * len(parameters),
        "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [body.negative_prompt] * len(parameters),
        "seed": seeds[0] if seeds else body.seed, "all_seeds": seeds,
        "subseed": body.subseed, "all_subseeds": [body.subseed] * len(parameters),
        "subseed_strength": body.subseed_strength,
        "width": first.get("width", body.width), "height": first.get("height", body.height),
        "sampler_name": sampler, "cfg_scale": first.get("guidance_scale", body.cfg_scale),
        "steps": first.get("steps", body.steps), "batch_size": body.batch_size,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": _short(model.name),
        "sd_model_hash": model.digest.removeprefix("sha256:")[:10],
        "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": body.seed_resize_from_w, "seed_resize_from_h": body.seed_resize_from_h,
        "denoising_strength": body.denoising_strength if img2img else None,
        "extra_generation_params": {"Lora": first["loras"]} if first.get("loras") else {},
        "index_of_first_image": 0, "infotexts": [],
        "styles": body.styles or [], "job_timestamp": job.timestamp, "clip_skip": 1,
        "is_using_inpainting_conditioning": False, "version": f"limner {version('limner')}",
        "interrupted": job.interrupted,
    }  # fmt: skip


def _infotext(encoded: str) -> str:
    """A1111's parameters text, as the engine wrote it into the PNG."""
    png = Image.open(io.BytesIO(base64.b64decode(encoded)))
    return str(getattr(png, "text", {}).get("parameters", ""))


# --- models, samplers, options ---


async def sd_models(request: Request) -> Response:
    state = _state(request)
    listed = [
        {
            "title": _title(entry),
            "model_name": _short(entry.name),
            "hash": entry.digest.removeprefix("sha256:")[:10],
            "sha256": entry.digest.removeprefix("sha256:"),
            "filename": _short(entry.name),
            "config": None,
        }
        for entry in state.store.entries()
        if _draws(state, entry)
    ]
    return JSONResponse(listed)


def _title(model: Entry | Described) -> str:
    return f"{_short(model.name)} [{model.digest.removeprefix('sha256:')[:10]}]"


def _short(name: ModelName) -> str:
    """A1111 front-ends show checkpoint names; ":latest" only adds noise there."""
    return name.display().removesuffix(":latest")


async def samplers(request: Request) -> Response:
    listed = [
        {"name": name, "aliases": aliases, "options": {}} for name, (_, aliases) in SAMPLERS.items()
    ]
    return JSONResponse(listed)


async def schedulers(request: Request) -> Response:
    listed = [
        {
            "name": name,
            "label": label,
            "aliases": None,
            "default_rho": -1,
            "need_inner_model": False,
        }
        for name, (label, _) in SCHEDULERS.items()
    ]
    return JSONResponse(listed)


async def loras(request: Request) -> Response:
    """Every model with a LoRA (trained by limner, or created with adapters): the names
    that `<lora:name:weight>` takes."""
    state = _state(request)
    listed = []
    for entry in state.store.entries():
        files = [layer.name for layer in entry.manifest.layers if layer.mediaType == ADAPTER]
        if files:
            name = _short(entry.name)
            listed.append({"name": name, "alias": name, "path": ", ".join(map(str, files)),
                           "metadata": {}})  # fmt: skip
    return JSONResponse(listed)


async def scripts(request: Request) -> Response:
    """No scripts: front-ends probe this before offering ControlNet, ADetailer and the like."""
    return JSONResponse({"txt2img": [], "img2img": []})


async def embeddings(request: Request) -> Response:
    """Textual inversions: none loaded."""
    return JSONResponse({"loaded": {}, "skipped": {}})


async def memory(request: Request) -> Response:
    """The machine's memory in A1111's shape (RAM from /proc/meminfo; CUDA as A1111 says
    it when torch has none: the server never imports torch)."""
    total, free = _meminfo()
    ram = {"free": free, "used": total - free, "total": total}
    return JSONResponse({"ram": ram, "cuda": {"error": "not reported by limner"}})


async def cmd_flags(request: Request) -> Response:
    """The few flags front-ends read: the API is on, there is no web UI of A1111's."""
    return JSONResponse({"api": True, "nowebui": True, "listen": True, "lowvram": False,
                         "medvram": False, "no_half": False})  # fmt: skip


async def png_info(request: Request) -> Response:
    """The parameters a picture carries (limner's and A1111's PNG text), read and parsed."""
    body = await parse_body(request, A1111PngInfoRequest)
    if not body.image:
        raise InvalidRequest("image: send the picture as base64 (a data: URI is fine)")
    picture = _open(body.image, "image")
    items = {k: v for k, v in getattr(picture, "text", {}).items() if isinstance(v, str)}
    text = items.pop("parameters", "")
    parsed = parse_infotext(text) if text else _from_limner(items.get("limner", ""))
    return JSONResponse({"info": text, "items": items, "parameters": parsed})


def _from_limner(text: str) -> dict[str, Any]:
    """A1111's parsed parameters from limner's own JSON chunk (a picture without the
    `parameters` text, as the test engine draws them)."""
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    names = {"prompt": "Prompt", "negative_prompt": "Negative prompt", "steps": "Steps",
             "seed": "Seed", "guidance_scale": "CFG scale", "scheduler": "Sampler",
             "width": "Size-1", "height": "Size-2"}  # fmt: skip
    return {label: str(found[key]) for key, label in names.items() if found.get(key) is not None}


def parse_infotext(text: str) -> dict[str, Any]:
    """A1111's parameters text as the dict its png-info answers: Prompt, Negative prompt,
    then each `Key: value` of the last line (Size also as Size-1 and Size-2)."""
    if not text.strip():
        return {}
    lines = text.strip().split("\n")
    settings = lines.pop() if re.search(r"(^|, )Steps: ", lines[-1]) else ""
    negative = [i for i, line in enumerate(lines) if line.startswith("Negative prompt:")]
    cut = negative[0] if negative else len(lines)
    parsed: dict[str, Any] = {"Prompt": "\n".join(lines[:cut])}
    if negative:
        rest = "\n".join(lines[cut:])
        parsed["Negative prompt"] = rest.removeprefix("Negative prompt:").strip()
    for key, value in re.findall(r'\s*([\w /-]+):\s*("(?:\\.|[^"])*"|[^,]*)(?:,|$)', settings):
        parsed[key.strip()] = value.strip()
    size = re.fullmatch(r"(\d+)x(\d+)", str(parsed.get("Size", "")))
    if size:
        parsed["Size-1"], parsed["Size-2"] = size.groups()
    return parsed


def _meminfo() -> tuple[int, int]:
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, rest = line.partition(":")
            values[name] = int(rest.split()[0]) * 1024
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


async def empty_list(request: Request) -> Response:
    """Lists of things limner does not have (upscalers, VAEs, embeddings' kin): empty."""
    return JSONResponse([])


async def get_options(request: Request) -> Response:
    state, session = _state(request), _session(request)
    options = dict(session.options)
    try:
        model = _model(state, session, None)
        options["sd_model_checkpoint"] = _title(model)
        options["sd_checkpoint_hash"] = model.digest.removeprefix("sha256:")
    except LimnerError:
        options["sd_model_checkpoint"] = None  # nothing installed that draws
    return JSONResponse(options)


async def set_options(request: Request) -> Response:
    """Sets the options limner knows (others are ignored, as A1111 ignores unknown ones);
    `sd_model_checkpoint` switches the model and loads it, as A1111 does."""
    try:
        raw = await request.body()
        data = json.loads(raw or b"{}")
        if not isinstance(data, dict):
            raise InvalidRequest("the options must be a JSON object")
        state, session = _state(request), _session(request)
        known = {key: value for key, value in data.items() if key in session.options}
        if known.get("sd_model_checkpoint"):
            model = _model(state, session, {"sd_model_checkpoint": known["sd_model_checkpoint"]})
            async with state.scheduler.lease(model, None, 0):
                pass  # loaded, and kept for the usual keep-alive
            known["sd_model_checkpoint"] = _short(model.name)
        every = known.get("show_progress_every_n_steps", 0)
        if not isinstance(every, int) or isinstance(every, bool) or not -1 <= every <= 150:
            raise InvalidRequest("show_progress_every_n_steps must be an integer from -1 to 150")
        session.options.update(known)
        return JSONResponse(None)
    except json.JSONDecodeError as exc:
        return a1111_error(InvalidRequest(f"invalid JSON in the request body: {exc}"))
    except LimnerError as exc:
        return a1111_error(exc)


# --- progress and interrupt ---


async def progress(request: Request) -> Response:
    """The job asked for (`id_task`, limner's addition) or the latest running one."""
    session = _session(request)
    job = session.current(request.query_params.get("id_task"))
    skip_image = request.query_params.get("skip_current_image", "false").lower() == "true"
    if job is None:
        return JSONResponse({"progress": 0.0, "eta_relative": 0.0, "state": _idle_state(),
                             "current_image": None, "textinfo": None, "current_task": None})  # fmt: skip
    done = job.progress()
    elapsed = time.monotonic() - job.started
    eta = elapsed / done - elapsed if done > 0 else 0.0
    state = {
        "skipped": False, "interrupted": job.interrupted, "stopping_generation": False,
        "job": "" if job.done else f"scripts_{job.kind}", "job_count": job.pictures,
        "job_timestamp": job.timestamp, "job_no": job.picture,
        "sampling_step": job.step, "sampling_steps": job.steps,
    }  # fmt: skip
    return JSONResponse({
        "progress": round(done, 4), "eta_relative": round(eta, 3), "state": state,
        "current_image": None if skip_image else job.preview, "textinfo": None,
        "current_task": job.id,
    })  # fmt: skip


def _idle_state() -> dict[str, Any]:
    return {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "",
            "job_count": 0, "job_timestamp": "0", "job_no": 0, "sampling_step": 0,
            "sampling_steps": 0}  # fmt: skip


async def interrupt(request: Request) -> Response:
    """Every running job stops: the picture in progress comes back as far as it got, and
    the rest of its batch is not drawn (A1111's Interrupt)."""
    for job in _session(request).jobs.values():
        if not job.done:
            job.interrupted = True
            job.finish.set()
    return JSONResponse(None)


async def skip(request: Request) -> Response:
    """The picture in progress of every running job ends early; the batch goes on."""
    for job in _session(request).jobs.values():
        if not job.done:
            job.finish.set()
    return JSONResponse(None)
