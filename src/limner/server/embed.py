"""POST /api/embed and the legacy POST /api/embeddings: text in, vectors out.

Both lease an embedding model and send its runner one `Embed` request. /api/embed answers a
list of inputs with unit vectors (cut to `dimensions` first, then normalised again, as
Ollama does); /api/embeddings answers one prompt with the vector as the model pools it.
OpenAI's /v1/embeddings is a translation into `embed_vectors` (server/openai_embed.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from limner.engines import Embedded, check_parameters
from limner.errors import InvalidRequest
from limner.protocol import Embed
from limner.server.chat import keep_alive_seconds, stored_name
from limner.server.state import State, parse_body
from limner.store.described import Capability, Described, describe
from limner.types import EmbeddingsRequest, EmbeddingsResponse, EmbedRequest, EmbedResponse


@dataclass(frozen=True)
class Vectors:
    """What the runner embedded, and the server's durations (ns)."""

    embedded: Embedded
    load_duration: int
    total_duration: int


async def embed(request: Request) -> Response:
    body = await parse_body(request, EmbedRequest)
    state: State = request.app.state.limner
    inputs = texts(body.input)
    vectors = await embed_vectors(
        state, body.model, inputs, body.truncate is not False, body.options, body.keep_alive
    )
    if not inputs:  # only loaded: Ollama's answer carries no metrics
        return JSONResponse(EmbedResponse(model=body.model, embeddings=[]).wire())
    reply = EmbedResponse(
        model=body.model,
        embeddings=[normalized(v, body.dimensions) for v in vectors.embedded.vectors],
        total_duration=vectors.total_duration,
        load_duration=vectors.load_duration,
        prompt_eval_count=vectors.embedded.prompt_eval_count,
    )
    return JSONResponse(reply.wire())


async def embeddings(request: Request) -> Response:
    body = await parse_body(request, EmbeddingsRequest)
    state: State = request.app.state.limner
    inputs = [body.prompt] if body.prompt else []
    vectors = await embed_vectors(state, body.model, inputs, True, body.options, body.keep_alive)
    found = vectors.embedded.vectors
    return JSONResponse(EmbeddingsResponse(embedding=found[0] if found else []).wire())


def texts(value: Any) -> list[str]:
    """`input` as a list of strings: one string, or a list of them (Ollama's rule)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise InvalidRequest("invalid input type: send a string or a list of strings")


async def embed_vectors(
    state: State,
    model_name: str,
    inputs: list[str],
    truncate: bool,
    request_options: dict[str, Any] | None,
    keep_alive: Any,
) -> Vectors:
    """The runner's vectors for `inputs`; no inputs only loads the model."""
    started = time.perf_counter_ns()
    model = describe(state.store, stored_name(state, model_name))
    _require_embedding(model)
    options = check_parameters({**model.parameters, **(request_options or {})})
    seconds = keep_alive_seconds(keep_alive)
    async with state.scheduler.lease(model, seconds, num_ctx=options.num_ctx) as loaded:
        load_duration = loaded.runner.load_duration if loaded.fresh else 0
        embedded = Embedded([], 0)
        if inputs:
            async for step in loaded.runner.embed(Embed(inputs, truncate, options.num_ctx)):
                embedded = step
    return Vectors(embedded, load_duration, time.perf_counter_ns() - started)


def normalized(vector: list[float], dimensions: int | None = None) -> list[float]:
    """The vector cut to its first `dimensions` values, at unit length (a zero vector stays)."""
    if dimensions is not None:
        if not 0 < dimensions <= len(vector):
            raise InvalidRequest(f"dimensions must be between 1 and {len(vector)}")
        vector = vector[:dimensions]
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


def _require_embedding(model: Described) -> None:
    if model.draws:
        raise InvalidRequest(f'"{model.name.display()}" draws pictures; it does not embed text')
    model.require(Capability.EMBEDDING, "embeddings")
