"""POST /api/generate: one endpoint, two kinds of model.

A prompt to a chat model is answered as a one-turn chat (chat.py); a prompt to a drawing
model is drawn (drawing.py). An empty prompt loads the model, or unloads it with
keep_alive 0, as Ollama does.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from limner.errors import InvalidRequest
from limner.server import chat, drawing
from limner.server.state import State, parse_body
from limner.server.streaming import respond
from limner.store.described import describe
from limner.types import GenerateRequest


async def generate(request: Request) -> Response:
    body = await parse_body(request, GenerateRequest)
    state: State = request.app.state.limner
    name = chat.stored_name(state, body.model)
    if body.raw:
        raise InvalidRequest(
            "raw mode is not supported by limner's LLaVA engines; send the prompt without raw"
        )
    keep_alive = chat.keep_alive_seconds(body.keep_alive)
    if not body.prompt and not body.images:
        return await chat.load_or_unload(state, name, keep_alive, chat=False)
    model = describe(state.store, name)
    if not model.draws:
        return await chat.complete(state, model, body, keep_alive)
    checked = drawing.check(body, model.config)
    lines = drawing.chunks(body.model, drawing.draw(state, model, checked, keep_alive))
    return await respond(lines, body.stream is not False)
