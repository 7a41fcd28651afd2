"""OpenAI's chat API as a translation into the native chat: POST /v1/chat/completions,
GET /v1/models and GET /v1/models/{model}.

A request becomes a native `ChatRequest` (pictures from `image_url` parts given as `data:`
URIs; an array content becomes one message, its text parts joined, rather than Ollama's one
message per part, so that LLaVA sees the question with its picture), runs through
`chat.chat_chunks`, and Ollama's chunks are re-encoded: one `chat.completion`, or SSE
`chat.completion.chunk` events ending with `data: [DONE]`. Errors use OpenAI's shape.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from limner import pictures
from limner.errors import InvalidRequest, LimnerError, without_paths
from limner.names import ModelName
from limner.server import chat
from limner.server.openai import openai_error
from limner.server.state import State, parse_body
from limner.types import (
    ChatRequest,
    Message,
    OpenAIChatRequest,
    OpenAIMessage,
    OpenAIToolCall,
    ToolCall,
    ToolCallFunction,
)

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
         "tool": "tool"}  # fmt: skip
FINISH_REASONS = {"stop": "stop", "length": "length"}
FINGERPRINT = "fp_limner"


async def chat_completions(request: Request) -> Response:
    try:
        body = await parse_body(request, OpenAIChatRequest)
        state: State = request.app.state.limner
        chunks = chat.chat_chunks(state, native_request(body))
        first = await anext(chunks)  # every check has run: errors still get their status
    except LimnerError as exc:
        return openai_error(exc)
    reply = _Reply(body.model, include_usage=bool((body.stream_options or {}).get("include_usage")))
    if body.stream:
        return StreamingResponse(_events(reply, first, chunks), media_type="text/event-stream")
    collected = [first]
    async for chunk in chunks:
        collected.append(chunk)
    return JSONResponse(reply.completion(collected))


async def list_models(request: Request) -> Response:
    state: State = request.app.state.limner
    data = [_model(entry.name, entry.modified_at.timestamp()) for entry in state.store.entries()]
    return JSONResponse({"object": "list", "data": data})  # a list even when empty


async def show_model(request: Request) -> Response:
    state: State = request.app.state.limner
    text = request.path_params["model"]
    try:
        entry = state.store.entry(state.store.resolve(text))
    except LimnerError as exc:
        return openai_error(exc)
    return JSONResponse(_model(entry.name, entry.modified_at.timestamp(), shown=text))


# --- the request ---------------------------------------------------------------------------


def native_request(body: OpenAIChatRequest) -> ChatRequest:
    """The native chat request that `body` asks for; 400 for what limner does not do."""
    if not body.model:
        raise InvalidRequest("model is required")
    if not body.messages:
        raise InvalidRequest("messages must not be empty")
    if body.n not in (None, 1):
        raise InvalidRequest(f"n must be 1: limner answers once per request, not {body.n} times")
    if body.logprobs:
        raise InvalidRequest("logprobs are not supported")
    options: dict[str, Any] = {
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
    }
    limit = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    if limit is not None:
        if limit < 1:
            raise InvalidRequest(f"max_tokens must be at least 1, not {limit}")
        options["num_predict"] = limit
    if body.seed is not None:
        options["seed"] = body.seed
    if body.stop is not None:
        options["stop"] = [body.stop] if isinstance(body.stop, str) else body.stop
    called: dict[str, str] = {}  # tool call id -> the function it called
    messages = [
        _message(message, number, called) for number, message in enumerate(body.messages, 1)
    ]
    tools = None if body.tool_choice == "none" else body.tools
    return ChatRequest(model=body.model, messages=messages, options=options, stream=True,
                       format=_format(body.response_format), tools=tools)  # fmt: skip


def _message(message: OpenAIMessage, number: int, called: dict[str, str]) -> Message:
    """One native message; a tool's answer is named after the call it answers."""
    role = ROLES.get(message.role.lower())
    if role is None:
        raise InvalidRequest(
            f"messages[{number - 1}].role must be one of {', '.join(ROLES)}, not {message.role!r}"
        )
    calls = [_native_call(call, f"messages[{number - 1}]") for call in message.tool_calls or []]
    called.update((call.id, call.function.name) for call in message.tool_calls or [] if call.id)
    tool_name = message.name or called.get(message.tool_call_id or "")
    if message.content is None or isinstance(message.content, str):
        return Message(role=role, content=message.content or "", tool_calls=calls or None,
                       tool_name=tool_name, tool_call_id=message.tool_call_id)  # fmt: skip
    texts, images = [], []
    for part in message.content:
        where = f"messages[{number - 1}].content"
        if part.type == "text":
            texts.append(part.text or "")
        elif part.type == "image_url":
            images.append(_picture(part.image_url, where))
        else:
            raise InvalidRequest(f"{where}: parts of type {part.type!r} are not supported; "
                                 "send 'text' and 'image_url' parts")  # fmt: skip
    return Message(role=role, content="\n".join(texts), images=images or None,
                   tool_calls=calls or None, tool_name=tool_name)  # fmt: skip


def _native_call(call: OpenAIToolCall, where: str) -> ToolCall:
    """OpenAI's call (arguments as JSON text) as Ollama's (arguments as an object)."""
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidRequest(f"{where}.tool_calls: arguments must be a JSON object as text")
    return ToolCall(id=call.id, function=ToolCallFunction(name=call.function.name,
                                                          arguments=arguments))  # fmt: skip


def _openai_calls(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    """A native chunk's calls as OpenAI's: arguments as JSON text."""
    return [
        {"id": call["id"], "index": call["function"]["index"], "type": "function",
         "function": {"name": call["function"]["name"],
                      "arguments": json.dumps(call["function"]["arguments"])}}
        for call in chunk["message"].get("tool_calls", [])
    ]  # fmt: skip


def _picture(image_url: dict[str, Any] | str | None, where: str) -> str:
    """The base64 of a `data:` URI; web addresses are refused (limner fetches nothing)."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{where}: an image_url part needs a url")
    return pictures.encode(pictures.from_url(url, f"{where}: the image_url"))


def _format(response_format: dict[str, Any] | None) -> str | dict[str, Any] | None:
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (response_format or {}).get("json_schema", {}).get("schema")
        return schema if isinstance(schema, dict) else "json"
    raise InvalidRequest(
        f"response_format.type must be text, json_object or json_schema, not {kind!r}"
    )


# --- the answer ----------------------------------------------------------------------------


class _Reply:
    """One answer's identity, shared by every chunk: id, model and creation time."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.model, self.include_usage = model, include_usage
        self.created = int(time.time())

    def completion(self, chunks: list[dict[str, Any]]) -> dict[str, Any]:
        last = chunks[-1]
        text = "".join(chunk["message"]["content"] for chunk in chunks)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        calls = [call for chunk in chunks for call in _openai_calls(chunk)]
        if calls:
            message["tool_calls"] = calls
        choice = {"index": 0, "message": message, "logprobs": None,
                  "finish_reason": "tool_calls" if calls else _finish(last)}  # fmt: skip
        return {**self._head("chat.completion"), "choices": [choice], "usage": _usage(last)}

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {**self._head("chat.completion.chunk"), "choices": [choice]}

    def usage_chunk(self, last: dict[str, Any]) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": _usage(last)}

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": FINGERPRINT}  # fmt: skip


async def _events(
    reply: _Reply, first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[bytes]:
    """SSE: a role chunk, content chunks, a finish chunk, the usage if asked, [DONE]."""
    yield _event(reply.chunk({"role": "assistant", "content": ""}))
    chunk, any_calls = first, False
    try:
        while True:
            if chunk["done"]:
                yield _event(reply.chunk({}, "tool_calls" if any_calls else _finish(chunk)))
                if reply.include_usage:
                    yield _event(reply.usage_chunk(chunk))
                break
            if chunk["message"]["content"]:
                yield _event(reply.chunk({"content": chunk["message"]["content"]}))
            if calls := _openai_calls(chunk):
                any_calls = True
                yield _event(reply.chunk({"tool_calls": calls}))
            chunk = await anext(rest)
    except LimnerError as exc:
        error = {"message": without_paths(exc.message), "type": "api_error"}
        yield _event({"error": error})
    yield b"data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> bytes:
    return (
        b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    )


def _finish(last: dict[str, Any]) -> str:
    return FINISH_REASONS.get(str(last.get("done_reason")), "stop")


def _usage(last: dict[str, Any]) -> dict[str, int]:
    prompt, completion = last.get("prompt_eval_count") or 0, last.get("eval_count") or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


def _model(name: ModelName, modified: float, shown: str | None = None) -> dict[str, Any]:
    return {"id": shown or name.display(), "object": "model", "created": int(modified),
            "owned_by": name.namespace}  # fmt: skip
