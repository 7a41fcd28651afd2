"""POST /api/chat and /api/generate: check, lease the model, stream the runner's steps.

Both endpoints share one path: the request becomes a list of messages (the model's stored
messages and system prompt first), pictures are checked here, options are merged
(Ollama's defaults < the model's params layer < the request), and the runner's pieces are
re-encoded as Ollama's chunks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import secrets
import string
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from limner import config, pictures
from limner.engines import Called, Done, Message, Piece, Tool, ToolCall, check_parameters
from limner.errors import InvalidRequest
from limner.names import ModelName
from limner.server.state import State, parse_body
from limner.server.streaming import created_at, respond
from limner.store.described import Capability, Described, describe
from limner.types import ChatRequest, GenerateRequest

log = logging.getLogger("limner.chat")


async def chat(request: Request) -> Response:
    body = await parse_body(request, ChatRequest)
    state: State = request.app.state.limner
    if not body.messages:
        name = stored_name(state, body.model)
        return await load_or_unload(state, name, keep_alive_seconds(body.keep_alive), chat=True)
    return await respond(chat_chunks(state, body), body.stream is not False, _aggregate_chat)


async def chat_chunks(state: State, body: ChatRequest) -> AsyncIterator[dict[str, Any]]:
    """A chat with at least one message as Ollama's chunks; every check is done before the
    first chunk, so that a caller can still answer an error with its HTTP status."""
    model = describe(state.store, stored_name(state, body.model))
    pictures.check_count(sum(len(msg.images or []) for msg in body.messages or []))
    messages = [
        _wire_message(msg.model_dump(), f"message {i}")
        for i, msg in enumerate(body.messages or [], 1)
    ]
    keep_alive = keep_alive_seconds(body.keep_alive)
    if model.draws:
        raise InvalidRequest(f"'{body.model}' draws pictures; send its prompt to /api/generate")
    _require_answers(model, messages, "chat")
    require_asked(model, body.tools, body.think)
    tools = [Tool(t.function.name, t.function.description or "", t.function.parameters or {})
             for t in body.tools or []]  # fmt: skip
    steps = _run(state, model, messages, body.options, body.format, keep_alive,
                 replace_system=None, tools=tools)  # fmt: skip
    async for chunk in _chunks(body.model, steps, _chat_text):
        yield chunk


async def complete(
    state: State, model: Described, body: GenerateRequest, keep_alive: float | None
) -> Response:
    """/api/generate's prompt to a chat model, answered as a one-turn chat."""
    message = _wire_message(
        {"role": "user", "content": body.prompt, "images": body.images}, "prompt"
    )
    _require_answers(model, [message], "generate")
    require_asked(model, None, body.think)
    steps = _run(
        state, model, [message], body.options, body.format, keep_alive, replace_system=body.system
    )
    return await respond(
        _chunks(body.model, steps, _generate_text), body.stream is not False, _aggregate_generate
    )


def stored_name(state: State, text: str) -> ModelName:
    """The stored model's name; 404 `model 'NAME' not found` with NAME as sent."""
    if not text:
        raise InvalidRequest("model is required")
    return state.store.resolve(text)


def keep_alive_seconds(value: float | str | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        raise InvalidRequest("keep_alive must be a number of seconds or a duration like '5m'")
    try:
        return config.parse_keep_alive(value)
    except InvalidRequest as exc:
        raise InvalidRequest(f"invalid keep_alive: {exc.message}") from None


def _require_answers(model: Described, messages: list[Message], endpoint: str) -> None:
    """Ollama's 400s, before anything loads: an embedding model does not chat, and a model
    without a projector does not see."""
    model.require(Capability.COMPLETION, endpoint)
    if any(message.images for message in messages):
        model.require(Capability.VISION, "images")


THINK_LEVELS = ("low", "medium", "high", "max")


def require_asked(model: Described, tools: list[Any] | None, think: bool | str | None) -> None:
    """Ollama's 400s for what the model cannot do: call tools, or think before answering."""
    if isinstance(think, str) and think not in THINK_LEVELS:
        raise InvalidRequest(
            f'invalid think value: "{think}" (must be "high", "medium", "low", true, or false)'
        )
    if think:
        model.require(Capability.THINKING, "thinking")
    if tools:
        model.require(Capability.TOOLS, "tools")


def _wire_message(message: dict[str, Any], label: str) -> Message:
    """A message for the runner: role lower-cased, pictures decoded and checked, the tool
    calls of an earlier answer kept."""
    images = [
        pictures.upright(data, f"{label} picture {number}")
        for number, data in enumerate(pictures.decode_base64(message.get("images") or [], label), 1)
    ]
    calls = [ToolCall(c["function"]["name"], c["function"].get("arguments") or {})
             for c in message.get("tool_calls") or []]  # fmt: skip
    role, content = message["role"].lower(), message.get("content") or ""
    return Message(role, content, images, calls, message.get("tool_name") or "")


async def load_or_unload(
    state: State, name: ModelName, keep_alive: float | None, chat: bool
) -> Response:
    """An empty prompt loads the model; with keep_alive 0 it unloads it (Ollama's rule)."""
    if keep_alive == 0:
        await state.scheduler.unload(name)
        reason = "unload"
    else:
        async with state.scheduler.lease(name, keep_alive):
            pass
        reason = "load"
    reply: dict[str, Any] = {
        "model": name.display(),
        "created_at": created_at(),
        "done": True,
        "done_reason": reason,
    }
    if chat:
        reply["message"] = {"role": "assistant", "content": ""}
    else:
        reply["response"] = ""
    return await respond(_once(reply), stream=False)


async def _once(item: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield item


@dataclass(frozen=True)
class Finished:
    """The end of a chat: the engine's Done, and the server's own durations (ns)."""

    done: Done
    load_duration: int
    total_duration: int


async def _run(
    state: State,
    model: Described,
    messages: list[Message],
    request_options: dict[str, Any] | None,
    format_: Any,
    keep_alive: float | None,
    replace_system: str | None,
    tools: list[Tool] | None = None,
) -> AsyncIterator[Piece | Called | Finished]:
    """The runner's pieces and calls, then the end of the answer with the durations added."""
    started = time.perf_counter_ns()
    merged = {**model.parameters, **(request_options or {}), "format": _format(format_)}
    options = check_parameters(merged)  # 400 on a badly typed option, before loading
    options.tools = tools or []
    messages = _with_model_context(model, messages, replace_system)
    num_ctx = options.num_ctx
    async with state.scheduler.lease(model, keep_alive, num_ctx=num_ctx) as loaded:
        if not num_ctx and loaded.context_length:  # the window the scheduler chose
            options = dataclasses.replace(options, num_ctx=loaded.context_length)
        load_duration = loaded.runner.load_duration if loaded.fresh else 0
        async for step in loaded.runner.chat(messages, options):
            if not isinstance(step, Done):
                yield step
                continue
            if step.truncated:
                log.info("%s: dropped %d oldest message(s) with %d picture(s) to fit the "
                         "%d-token window", model.name.display(), step.truncated["messages"],
                         step.truncated["images"], loaded.context_length)  # fmt: skip
            yield Finished(step, load_duration, time.perf_counter_ns() - started)


def _format(value: Any) -> str:
    """Options.format: "", "json", or a JSON schema as its JSON text (the engine enforces it,
    or refuses it naming what it cannot enforce)."""
    if value in (None, ""):
        return ""
    if value == "json":
        return "json"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    raise InvalidRequest(
        f'invalid format: {value!r}; expected "json" or a valid JSON Schema object'
    )


def _with_model_context(
    model: Described, messages: list[Message], replace_system: str | None
) -> list[Message]:
    """The model's stored messages and system prompt before the request's own."""
    history = [Message(s["role"], s.get("content", "")) for s in model.messages]
    system = replace_system if replace_system is not None else model.system
    if system and not (messages and messages[0].role == "system"):
        history.insert(0, Message("system", system))
    return history + messages


def _metrics(finished: Finished) -> dict[str, Any]:
    done = finished.done
    metrics = {
        "done_reason": done.done_reason,
        "total_duration": finished.total_duration,
        "load_duration": finished.load_duration,
        "prompt_eval_count": done.prompt_eval_count,
        "prompt_eval_duration": done.prompt_eval_duration,
        "eval_count": done.eval_count,
        "eval_duration": done.eval_duration,
        "image_tokens": done.image_tokens,
    }
    if done.truncated:  # only when they say something
        metrics["truncated"] = done.truncated
    if done.prompt_cached_count:
        metrics["prompt_cached_count"] = done.prompt_cached_count
    return metrics


def _chat_text(text: str) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": text}}


def _generate_text(text: str) -> dict[str, Any]:
    return {"response": text}


async def _chunks(
    model: str,
    steps: AsyncIterator[Piece | Called | Finished],
    text: Callable[[str], dict[str, Any]],
) -> AsyncIterator[dict[str, Any]]:
    """Runner steps as Ollama's chunks: tool calls in a chunk without text, and the last
    one carries the reason and the metrics."""
    index = 0
    async for step in steps:
        chunk: dict[str, Any] = {"model": model, "created_at": created_at()}
        if isinstance(step, Piece):
            yield {**chunk, **text(step.text), "done": False}
        elif isinstance(step, Called):
            calls = [_wire_call(call, index + i) for i, call in enumerate(step.calls)]
            index += len(calls)
            message = {"role": "assistant", "content": "", "tool_calls": calls}
            yield {**chunk, "message": message, "done": False}
        else:
            yield {**chunk, **text(""), "done": True, **_metrics(step)}


def _wire_call(call: ToolCall, index: int) -> dict[str, Any]:
    """A call as Ollama sends it: an id of its own, the arguments as an object."""
    call_id = "call_" + "".join(secrets.choice(CALL_ID_LETTERS) for _ in range(8))
    function = {"index": index, "name": call.name, "arguments": call.arguments}
    return {"id": call_id, "function": function}


CALL_ID_LETTERS = string.ascii_lowercase + string.digits


def _aggregate_chat(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    text = "".join(c["message"]["content"] for c in chunks)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    calls = [call for c in chunks for call in c["message"].get("tool_calls", [])]
    if calls:
        message["tool_calls"] = calls
    return {**chunks[-1], "message": message}


def _aggregate_generate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    return {**chunks[-1], "response": "".join(c["response"] for c in chunks)}
