"""Training as a kind of model creation: `/api/create` with `from` and a `train` section.

Everything is checked before the first byte (the base model, the settings, every uploaded
picture and caption, the captioning model, the one training slot), so a bad request is a 4xx
and nothing starts. The job then runs as its own task, not inside the HTTP stream: a client
that goes away (or presses Ctrl-C) asks it to stop, and the task still stops the trainer,
keeps the last checkpoint as the model, and frees the slot. Steps of the job:

1. captions: pictures without one get a caption from `caption_with` (a vision chat model)
2. the machine's whole budget is taken (`Scheduler.exclusive`: other models unloaded)
3. a training runner loads the base model and trains, streaming steps back
4. the LoRA (or the last checkpoint, if stopped) is stored as a new model
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anyio import to_thread

from limner.engines import LoadOptions, Message, Options, Piece, check_parameters
from limner.engines.training import (
    TrainCheckpoint,
    TrainDone,
    TrainProgress,
    TrainRequest,
    TrainStep,
    TrainValidation,
    check_request,
    examples,
    read_uploaded,
)
from limner.errors import Conflict, InvalidRequest, LimnerError, ModelNotFound, without_paths
from limner.names import ModelName
from limner.protocol import Train
from limner.runner import RunnerProcess
from limner.server.trainings import Job
from limner.store import create as creating
from limner.store.blobs import normalize
from limner.store.described import Capability, describe
from limner.store.store import Entry
from limner.types import CreateRequest, TrainSection

if TYPE_CHECKING:
    from limner.server.state import State

log = logging.getLogger("limner.train")

TRAINABLE_FORMATS = ("diffusers", "sd-checkpoint")
CAPTION_PROMPT = "Describe this picture in one short sentence."
CAPTION_OPTIONS = Options(temperature=0, seed=0, num_predict=48)
MAX_CAPTION = 300


async def create(state: State, request: CreateRequest) -> AsyncIterator[dict[str, Any]]:
    """Check the request, claim the slot, start the job; its lines stream as they come."""
    job = await _planned(state, request)
    trainings = state.trainings
    if trainings.job is not None:
        running = trainings.job
        raise Conflict(
            f"limner is already training {running.name.display()!r} (step {running.step} of "
            f"{running.settings.steps}); one training runs at a time, try again when it ends"
        )
    trainings.job = job
    trainings.task = asyncio.get_running_loop().create_task(_run(state, job))
    return _lines(job)


async def _lines(job: Job) -> AsyncIterator[dict[str, Any]]:
    try:
        while (line := await job.lines.get()) is not None:
            yield line
    finally:  # the client went away (or read to the end): a running job stops
        job.stop.set()


async def _planned(state: State, request: CreateRequest) -> Job:
    section = request.train
    assert section is not None
    name = ModelName.parse(request.model or request.name or "")
    if request.files or request.quantize or request.adapters or request.tiny_vae is not None:
        raise InvalidRequest(
            "train makes a LoRA of the model in 'from'; leave out files, quantize, adapters "
            "and tiny_vae"
        )
    base = _base(state, request)
    settings = _settings(section)
    if request.parameters is not None:
        check_parameters(request.parameters)
    files = _dataset_files(state, section)
    captioning = bool(section.caption_with)
    uncaptioned = await to_thread.run_sync(_read_dataset, files, settings, captioning)
    if captioning and uncaptioned:
        _check_captioner(state, section.caption_with or "")
    return Job(name, base, request, settings, files, uncaptioned)


def _base(state: State, request: CreateRequest) -> Entry:
    if not request.from_:
        raise InvalidRequest("train needs 'from': the Stable Diffusion model to train a LoRA of")
    store = state.store
    base = store.entry(store.resolve(request.from_, quote='"'))
    model = describe(store, base.name)
    if model.format not in TRAINABLE_FORMATS or model.family != "stable-diffusion":
        raise InvalidRequest(
            f"{base.name.display()} cannot be trained: LoRA training runs on Stable Diffusion "
            "1.x/2.x drawing models (diffusers folders or single-file checkpoints)"
        )
    return base


def _settings(section: TrainSection) -> TrainRequest:
    chosen = section.model_dump(
        exclude_none=True, exclude={"files", "caption_with", "caption_prompt"}
    )
    settings = TrainRequest(**chosen)
    check_request(settings)
    return settings


def _dataset_files(state: State, section: TrainSection) -> dict[str, Path]:
    if not section.files:
        raise InvalidRequest(
            "train.files is empty: upload the pictures (and captions) as blobs, then name them "
            "here, or upload one .zip of them"
        )
    files = {}
    for name, digest in section.files.items():
        try:
            path = state.store.blobs.path(normalize(digest))
        except InvalidRequest:
            raise InvalidRequest(f"invalid digest format for dataset file {name!r}") from None
        if not path.is_file():
            raise InvalidRequest(
                f'blob "{digest}" for dataset file {name!r} not found; upload it first'
            )
        files[name] = path
    return files


def _read_dataset(files: dict[str, Path], settings: TrainRequest, captioning: bool) -> list[str]:
    """Check every file; the pictures without a caption of their own, when a model writes them."""
    dataset = read_uploaded(files)
    if not captioning:
        examples(dataset, settings.instance_prompt)
        return []
    return [e.name for e in examples(dataset, uncaptioned_ok=True) if not e.caption]


def _check_captioner(state: State, text: str) -> None:
    try:
        captioner = describe(state.store, state.store.resolve(text))
    except ModelNotFound:
        raise InvalidRequest(f"caption_with: model {text!r} not found; pull it first") from None
    if not captioner.can(Capability.VISION):
        raise InvalidRequest(
            f"caption_with: {captioner.name.display()} does not see pictures; "
            "name a vision chat model"
        )


# --- the job ------------------------------------------------------------------------------


async def _run(state: State, job: Job) -> None:
    try:
        job.say(f"reading {len(job.files)} dataset files")
        captions = await _captions(state, job)
        if not job.stop.is_set():
            await _train(state, job, captions)
    except LimnerError as error:
        job.lines.put_nowait({"error": without_paths(error.message)})
    except asyncio.CancelledError:
        log.info("training of %s stopped with the server", job.name.display())
    except Exception:
        log.exception("training of %s failed", job.name.display())
        job.lines.put_nowait({"error": "training failed; see the server log"})
    finally:
        job.lines.put_nowait(None)
        state.trainings.job = state.trainings.task = None


async def _captions(state: State, job: Job) -> dict[str, str]:
    """A caption for every picture without one, from the vision model (loaded, then let go)."""
    section = job.request.train
    assert section is not None
    if not section.caption_with or not job.uncaptioned:
        return {}
    store, written = state.store, {}
    captioner = store.resolve(section.caption_with)
    pictures = read_uploaded(job.files)
    async with state.scheduler.lease(captioner, keep_alive=0) as model:
        for number, picture in enumerate(job.uncaptioned, 1):
            if job.stop.is_set():
                break
            message = Message("user", section.caption_prompt or CAPTION_PROMPT, [pictures[picture]])
            text = "".join([
                step.text
                async for step in model.runner.chat([message], CAPTION_OPTIONS)
                if isinstance(step, Piece)
            ])  # fmt: skip
            caption = _first_sentence(text)
            if not caption:
                raise InvalidRequest(
                    f"{captioner.display()} wrote no caption for {picture!r}; caption it with a "
                    ".txt file or an instance prompt"
                )
            written[picture] = caption
            job.say(
                "captioning",
                file=picture,
                caption=caption,
                completed=number,
                total=len(job.uncaptioned),
            )
    return written


def _first_sentence(text: str) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line.strip("\"'“” ")[:MAX_CAPTION]


async def _train(state: State, job: Job, captions: dict[str, str]) -> None:
    base = job.base
    model = describe(state.store, base.name)
    options = LoadOptions(
        precision=job.settings.precision,
        adapter_scale=LoadOptions.from_dict(model.parameters).adapter_scale,
    )
    output = Path(tempfile.mkdtemp(prefix=".training-", dir=state.store.root))
    started, result = time.monotonic(), None
    try:
        async with state.scheduler.exclusive(f"training {job.name.display()}"):
            job.say(f"loading {base.name.display()} for training")
            # Always a local runner process, on a cluster too: training needs the store's
            # folder to write into, and takes this machine's whole budget (exclusive above).
            runner = await RunnerProcess.start(
                f"train:{model.format}",
                state.store.files(base.manifest),
                options,
                state.scheduler.load_timeout,
            )
            try:
                result = await _steps(runner, job, captions, output)
            finally:
                await runner.stop()
        seconds = time.monotonic() - started
        await _store(state, job, result, seconds, captions)
    finally:
        shutil.rmtree(output, ignore_errors=True)


async def _steps(
    runner: RunnerProcess, job: Job, captions: dict[str, str], output: Path
) -> TrainDone | None:
    """Relay the runner's steps; the final one, or None if stopped first."""
    steps = runner.train(Train(job.files, job.settings, output, captions))
    try:
        async for reply in steps:
            if isinstance(reply, TrainDone):
                return reply
            _relay(job, reply)
            if job.stop.is_set():
                break
    finally:
        await steps.aclose()
    return None


def _relay(job: Job, reply: TrainStep) -> None:
    if isinstance(reply, TrainProgress):
        job.step = reply.step
        job.losses.append(reply.loss)
        job.say("training", step=reply.step, total=reply.total, completed=reply.step,
                loss=reply.loss, learning_rate=reply.learning_rate,
                eta=round(reply.eta_seconds, 1))  # fmt: skip
    elif isinstance(reply, TrainCheckpoint):
        job.checkpoint = (reply.step, reply.path)
        job.say("checkpoint", step=reply.step)
    elif isinstance(reply, TrainValidation):
        job.say("validation", step=reply.step, image=base64.b64encode(reply.png).decode())


async def _store(
    state: State, job: Job, result: TrainDone | None, seconds: float, captions: dict[str, str]
) -> None:
    """The trained LoRA, or the last checkpoint of a stopped run, becomes the new model."""
    done = job.step if result is None else result.steps
    record: dict[str, Any] = {
        "base": job.base.name.display(),
        "completed": result is not None,
        "steps": done,
        "total": job.settings.steps,
        "final_loss": job.losses[-1] if job.losses else None,
        "losses": job.losses,
        "seconds": round(seconds, 2),
        "steps_per_second": round(done / seconds, 4) if seconds else None,
        "parameters": result.parameters if result else asdict(job.settings),
        "captions": captions,
    }
    if result is not None:
        adapter, kohya = result.path, result.path.with_name("lora_kohya.safetensors")
    elif job.checkpoint is not None:
        record["steps"] = job.checkpoint[0]
        record["losses"] = job.losses[: job.checkpoint[0]]
        record["final_loss"] = record["losses"][-1]
        adapter, kohya = job.checkpoint[1], None
    else:
        log.info(
            "training of %s stopped before its first checkpoint; nothing kept", job.name.display()
        )
        job.say("stopped before the first checkpoint; no model was created")
        return
    written = creating.trained(
        state.store, job.request, adapter, record, kohya if kohya and kohya.is_file() else None
    )
    for line in await to_thread.run_sync(list, written):
        job.lines.put_nowait(line.wire())
    if result is None:
        log.info(
            "training of %s stopped; kept its checkpoint of step %d",
            job.name.display(),
            record["steps"],
        )
