"""Model management: /api/tags, /api/show, /api/ps, /api/copy, /api/delete, /api/blobs,
/api/create, /api/pull."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any

import anyio
from anyio import to_thread
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from limner.engines import check_parameters, drawing
from limner.errors import InvalidRequest, ModelNotFound
from limner.names import ModelName
from limner.server import train
from limner.server.connections import SHUTDOWN
from limner.server.state import State, parse_body
from limner.server.streaming import respond
from limner.store import create as creating
from limner.store import manifests as m
from limner.store import pull as pulling
from limner.store.blobs import disk_space, normalize
from limner.store.described import (
    Capability,
    Described,
    describe,
    stored_config,
)
from limner.store.store import Store
from limner.types import (
    CopyRequest,
    CreateRequest,
    DeleteRequest,
    ListedModel,
    ListResponse,
    ModelDetails,
    ProcessResponse,
    ProgressResponse,
    PullRequest,
    RunningModel,
    ShowRequest,
    ShowResponse,
)

ROLES = {"system", "user", "assistant"}
UPLOAD_CUT = "the server is shutting down; upload the blob again once it is back"


def _state(request: Request) -> State:
    state: State = request.app.state.limner
    return state


def details(cfg: dict[str, Any]) -> ModelDetails:
    """Ollama's `details` of a model, from its config blob."""
    return ModelDetails(
        parent_model=cfg.get("parent_model", ""),
        format=cfg.get("model_format", ""),
        family=cfg.get("model_family", ""),
        families=cfg.get("model_families"),
        parameter_size=cfg.get("model_type", ""),
        quantization_level=cfg.get("file_type", ""),
    )


async def tags(request: Request) -> Response:
    store = _state(request).store
    models = [
        ListedModel(
            name=e.name.display(),
            model=e.name.display(),
            modified_at=e.modified_at,
            size=e.manifest.size(),
            digest=e.digest,
            details=details(stored_config(store, e.manifest)),
        )
        for e in store.entries()
    ]
    return JSONResponse(ListResponse(models=models).wire())


async def show(request: Request) -> Response:
    body = await parse_body(request, ShowRequest)
    store = _state(request).store
    text = body.model or body.name or ""
    if not text:
        raise InvalidRequest("model is required")
    try:
        model = describe(store, store.resolve(text))
    except ModelNotFound:
        raise ModelNotFound(ModelName.parse(text).display()) from None
    reply = ShowResponse(
        license=store.text(model.manifest, m.LICENSE),
        modelfile=_modelfile(model, store.text(model.manifest, m.LICENSE)),
        parameters=_parameter_lines(model.parameters) if model.parameters else None,
        template=model.template or _file_text(store, model.manifest, "chat_template.jinja"),
        system=model.system,
        details=details(model.config),
        messages=model.messages or None,
        model_info=_with_drawing_defaults(model),
        projector_info=model.config.get("projector_info") or None,
        capabilities=[c for c in Capability if model.can(c)],  # Ollama's order
        modified_at=model.modified_at,
        training=store.json_layer(model.manifest, m.TRAINING),
    )
    return JSONResponse(reply.wire() | {"model_info": reply.model_info})


def _with_drawing_defaults(model: Described) -> dict[str, Any]:
    """model_info, with a drawing model's default steps and guidance as its engine reads them
    from its scheduler (a Turbo model: 1 step, guidance 0)."""
    info = dict(model.config.get("model_info", {}))
    family = model.family
    if model.draws and f"{family}.scheduler" in info:
        kind = drawing.sampling(
            str(info[f"{family}.scheduler"]), info.get(f"{family}.timestep_spacing")
        )
        info[f"{family}.default_steps"], info[f"{family}.default_guidance_scale"] = (
            drawing.SAMPLING[kind]
        )
    return info


def _file_text(store: Store, manifest: m.Manifest, name: str) -> str | None:
    path = store.files(manifest).get(name)
    return path.read_text() if path else None


def _parameter_lines(params: dict[str, Any]) -> str:
    """Ollama's `%-30s %#v` lines; a list gives one line per item."""
    lines = []
    for key, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {json.dumps(item)}")
    return "\n".join(lines)


def _modelfile(model: Described, license_text: str | None) -> str:
    """The model as a Modelfile that `limner create NAME -f` (and `ollama create`) reads back."""
    name = model.name.display()
    lines = [
        '# Modelfile generated by "limner show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {name}",
        "",
        f"FROM {name}",
    ]
    if model.template:
        lines.append(f'TEMPLATE """{model.template}"""')
    if model.system:
        lines.append(f'SYSTEM """{model.system}"""')
    for line in _parameter_lines(model.parameters).splitlines():
        lines.append(f"PARAMETER {line}")
    for message in model.messages:
        lines.append(f"MESSAGE {message.get('role')} {json.dumps(message.get('content', ''))}")
    if license_text:
        lines.append(f'LICENSE """{license_text}"""')
    return "\n".join(lines) + "\n"


async def ps(request: Request) -> Response:
    state = _state(request)
    models = []
    for loaded in state.scheduler.running():
        models.append(
            RunningModel(
                name=loaded.name.display(),
                model=loaded.name.display(),
                size=loaded.runner.memory or loaded.size,
                digest=loaded.digest,
                details=details(loaded.described.config),
                expires_at=_expiry(loaded.expires_at, loaded.keep_alive),
                size_vram=loaded.runner.vram,
                context_length=loaded.context_length,
            )
        )
    return JSONResponse(ProcessResponse(models=models).wire())


def _expiry(expires_at: float, keep_alive: float) -> datetime:
    """Local time with offset; 'forever' is ~292 years away, as Ollama's MaxInt64 ns."""
    local = datetime.now().astimezone()
    if expires_at == math.inf:
        ahead = keep_alive if keep_alive != math.inf else 9_223_372_036.0
        return local + timedelta(seconds=ahead)
    return datetime.fromtimestamp(expires_at).astimezone()


async def copy(request: Request) -> Response:
    body = await parse_body(request, CopyRequest)
    store = _state(request).store
    source = _checked(body.source, "source")
    destination = _checked(body.destination, "destination")
    found = store.find(source)
    if found is None:
        raise ModelNotFound(body.source, quote='"')
    store.copy(found, destination)
    return Response(status_code=200)


def _checked(text: str, what: str) -> ModelName:
    try:
        return ModelName.parse(text)
    except InvalidRequest:
        raise InvalidRequest(f'{what} "{text}" is invalid') from None


async def delete(request: Request) -> Response:
    body = await parse_body(request, DeleteRequest)
    state = _state(request)
    text = body.model or body.name or ""
    if not text:
        raise InvalidRequest("model is required")
    name = state.store.resolve(text)
    await state.scheduler.unload(name)
    state.store.delete(name)
    return Response(status_code=200)


async def blob_exists(request: Request) -> Response:
    digest = normalize(request.path_params["digest"])
    if not _state(request).store.blobs.exists(digest):
        return JSONResponse({"error": f'blob "{digest}" not found'}, status_code=404)
    return Response(status_code=200)


async def blob_upload(request: Request) -> Response:
    """Stream the body to a temporary file; it becomes a blob only if the digest matches."""
    blobs = _state(request).store.blobs
    digest = normalize(request.path_params["digest"])
    if blobs.exists(digest):
        return Response(status_code=200)
    size = request.headers.get("content-length", "")
    with disk_space(blobs.root, int(size) if size.isdigit() else None):
        incoming = blobs.incoming()
        try:  # a shutdown cuts an upload at once: the client sends it again, whole
            async for chunk in SHUTDOWN.until_cut(request.stream(), UPLOAD_CUT, at_once=True):
                incoming.write(chunk)
            incoming.commit(digest)
        finally:
            incoming.discard()
    return Response(status_code=201)


async def create(request: Request) -> Response:
    body = await parse_body(request, CreateRequest)
    store = _state(request).store
    if body.parameters is not None:
        check_parameters(body.parameters)
    for message in body.messages or []:
        if message.role.lower() not in ROLES:
            raise InvalidRequest(
                f"message role {message.role!r} must be one of system, user, assistant"
            )
    if body.train is not None:
        return await respond(await train.create(_state(request), body), body.stream is not False)
    progress = creating.create(store, body)
    # In a worker thread: converting and quantizing a real model takes minutes.
    return await respond(_in_thread(progress), body.stream is not False)


async def pull(request: Request) -> Response:
    """Ollama's /api/pull: a bad name is a 400; registry errors come as an `{"error"}` line."""
    body = await parse_body(request, PullRequest)
    progress = pulling.pull(
        _state(request).store, body.model or body.name or "", insecure=bool(body.insecure)
    )
    return await respond(_in_thread(progress), body.stream is not False)


async def _in_thread(progress: Iterator[ProgressResponse]) -> AsyncIterator[dict[str, Any]]:
    """A blocking progress iterator, each step taken in a worker thread.

    Closing it (the client went away) closes the iterator, which returns at least every
    `registry.PROGRESS_INTERVAL`, and so lets go of its downloads: a download no other pull
    waits on stops, and its finished parts stay for the next pull.
    """
    last: dict[str, Any] | None = None
    turn = threading.Lock()  # a step still running in its thread ends before the close

    def step() -> ProgressResponse | None:
        with turn:
            return next(progress, None)

    def close() -> None:
        with turn:
            getattr(progress, "close", lambda: None)()

    try:
        while (taken := await to_thread.run_sync(step)) is not None:
            line = taken.wire()
            if line != last:  # a layer's progress repeats while nothing arrives: sent once
                yield line
            last = line
    finally:
        with anyio.CancelScope(shield=True):  # cancelled or not, the downloads are let go
            await to_thread.run_sync(close)
