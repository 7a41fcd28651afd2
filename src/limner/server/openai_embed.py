"""OpenAI's POST /v1/embeddings as a translation into the native embedding (server/embed.py).

`input` is a string or a list of strings (token arrays are refused: limner tokenises
itself); vectors are unit length, cut to `dimensions` when asked, as floats or as base64 of
little-endian float32 (`encoding_format`). Errors use OpenAI's shape.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from limner.errors import InvalidRequest, LimnerError
from limner.server import embed
from limner.server.openai import openai_error
from limner.server.state import State, parse_body
from limner.types import OpenAIEmbeddingRequest

ENCODINGS = ("float", "base64")


async def embeddings(request: Request) -> Response:
    try:
        body = await parse_body(request, OpenAIEmbeddingRequest)
        state: State = request.app.state.limner
        inputs = _inputs(body.input)
        encoding = body.encoding_format or "float"
        if encoding not in ENCODINGS:
            raise InvalidRequest(
                f"Invalid value for 'encoding_format' = {encoding}. "
                f"Supported values: {list(ENCODINGS)}."
            )
        vectors = await embed.embed_vectors(state, body.model, inputs, True, None, None)
        found = [embed.normalized(v, body.dimensions) for v in vectors.embedded.vectors]
    except LimnerError as exc:
        return openai_error(exc)
    tokens = vectors.embedded.prompt_eval_count
    return JSONResponse({
        "object": "list",
        "data": [_item(index, vector, encoding) for index, vector in enumerate(found)],
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })  # fmt: skip


def _inputs(value: Any) -> list[str]:
    if value in ("", []) or value is None:
        raise InvalidRequest("invalid input: send a string or a non-empty list of strings")
    return embed.texts(value)


def _item(index: int, vector: list[float], encoding: str) -> dict[str, Any]:
    data: list[float] | str = vector
    if encoding == "base64":
        data = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return {"object": "embedding", "embedding": data, "index": index}
