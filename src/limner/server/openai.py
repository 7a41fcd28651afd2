"""OpenAI's images API as a translation into the native drawing handler.

POST /v1/images/generations (JSON) and /v1/images/edits (multipart as OpenAI's API, or
JSON) become native drawing requests; the final pictures come back in OpenAI's shape,
`{"created", "data": [{"b64_json"}]}`. OpenAI masks mark the area to change with
transparent pixels; the native mask is white there. Errors use OpenAI's error shape.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from limner import pictures
from limner.engines.drawing import nth_seed
from limner.errors import InvalidRequest, LimnerError
from limner.server import drawing
from limner.server.state import State, loads
from limner.store.described import describe
from limner.types import GenerateRequest

MAX_IMAGES_PER_REQUEST = 10
ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


async def generations(request: Request) -> Response:
    try:
        fields = await _json(request)
        return await _draw(request, fields, picture=None, mask=None)
    except LimnerError as exc:
        return openai_error(exc)


async def edits(request: Request) -> Response:
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            fields, picture, mask = await _multipart(request)
        else:
            fields = await _json(request)
            picture = _data_uri_bytes(fields.get("image"), "image")
            mask = _data_uri_bytes(fields.get("mask"), "mask") if fields.get("mask") else None
        if picture is None:
            raise InvalidRequest("image is required")
        return await _draw(request, fields, picture, mask)
    except LimnerError as exc:
        return openai_error(exc)


def openai_error(exc: LimnerError) -> JSONResponse:
    kind = ERROR_TYPES.get(exc.status, "api_error")
    body = {"error": {"message": exc.message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=exc.status)


async def _json(request: Request) -> dict[str, Any]:
    data = loads(await request.body() or b"null")
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


async def _multipart(request: Request) -> tuple[dict[str, Any], bytes | None, bytes | None]:
    form = await request.form()
    fields: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    for key, value in form.multi_items():
        name = key.removesuffix("[]")  # newer clients send image[]
        if isinstance(value, UploadFile):
            files.setdefault(name, await value.read())
        else:
            fields[name] = value
    for key in ("n", "seed", "steps"):
        if key in fields:
            fields[key] = _form_integer(fields[key], key)
    return fields, files.get("image"), files.get("mask")


def _form_integer(text: str, name: str) -> int:
    """A form field's number: multipart sends every field as text."""
    try:
        return int(text)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an integer") from None


def _integer(value: Any, name: str) -> int:
    """A JSON number that is whole: 2, never "2", 2.5 or true."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidRequest(f"'{name}' must be an integer, got {value!r:.40}")


def _data_uri_bytes(value: Any, name: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a base64 string or a data: URI")
    if value.startswith(("http://", "https://")):
        raise InvalidRequest(f"'{name}' URLs are not supported; send base64 or a data: URI")
    return pictures.from_base64(value, f"'{name}'", data_uri=True)


async def _draw(
    request: Request, fields: dict[str, Any], picture: bytes | None, mask: bytes | None
) -> Response:
    state: State = request.app.state.limner
    native = _native_request(fields, picture, mask)
    model = describe(state.store, state.store.resolve(native.model))
    if not model.draws:
        raise InvalidRequest(f"'{native.model}' does not draw pictures")
    checked = drawing.check(native, model.config)
    count = _integer(fields.get("n", 1), "n")
    if not 1 <= count <= MAX_IMAGES_PER_REQUEST:
        raise InvalidRequest(f"n must be between 1 and {MAX_IMAGES_PER_REQUEST}")
    data = []
    for index in range(count):
        each = dataclasses.replace(checked, seed=nth_seed(checked.seed, index))
        async for step in drawing.draw(state, model, each, keep_alive=None):
            if isinstance(step, drawing.Drawn):
                png = drawing.base64_png(step.result.png)
                data.append({"b64_json": png, "revised_prompt": native.prompt})
    return JSONResponse({"created": int(time.time()), "data": data})


def _native_request(
    fields: dict[str, Any], picture: bytes | None, mask: bytes | None
) -> GenerateRequest:
    if not fields.get("model"):
        raise InvalidRequest("model is required")
    if not fields.get("prompt"):
        raise InvalidRequest("prompt is required")
    if fields.get("response_format", "b64_json") != "b64_json":
        raise InvalidRequest(
            "only response_format 'b64_json' is supported; the pictures are also kept in "
            "/api/gallery"
        )
    width, height = _size(fields.get("size"))
    native: dict[str, Any] = {
        "model": fields["model"], "prompt": fields["prompt"], "width": width, "height": height,
        "seed": _integer(fields["seed"], "seed") if "seed" in fields else None,
        "negative_prompt": fields.get("negative_prompt"), "steps": fields.get("steps"),
    }  # fmt: skip
    if picture is not None:
        native["images"] = [base64.b64encode(_rgb_png(picture, "image")).decode()]
        painted = _mask_from_alpha(mask if mask is not None else picture)
        if painted is not None:
            native["mask"] = base64.b64encode(painted).decode()
    try:
        return GenerateRequest.model_validate(native)
    except ValueError as exc:
        raise InvalidRequest(f"invalid image request: {exc}") from None


def _size(size: Any) -> tuple[int | None, int | None]:
    if size in (None, "", "auto"):
        return None, None
    try:
        width, height = (int(side) for side in str(size).lower().split("x"))
    except ValueError:
        raise InvalidRequest(f"size must look like '512x512', got {size!r}") from None
    if width < 1 or height < 1:
        raise InvalidRequest(f"size must look like '512x512', got {size!r}")
    return width, height


def _rgb_png(data: bytes, label: str) -> bytes:
    buffer = io.BytesIO()
    pictures.check(data, label).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _mask_from_alpha(data: bytes) -> bytes | None:
    """OpenAI's mask: transparent pixels are edited. Ours: white repaints. None if opaque."""
    picture = pictures.check(data, "mask")
    if "A" not in picture.getbands():
        return None
    alpha = picture.getchannel("A")
    lowest, _ = alpha.getextrema()
    if isinstance(lowest, int | float) and lowest > 0:
        return None  # nothing transparent: nothing to edit in place
    white_where_clear = alpha.point(lambda a: 255 if a == 0 else 0)
    buffer = io.BytesIO()
    white_where_clear.save(buffer, format="PNG")
    return buffer.getvalue()
