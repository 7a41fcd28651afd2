"""/v1/chat/completions and /v1/models through the official `openai` package, sync and async,
streaming and not, with pictures as data: URIs. The fake engine (at the seam) echoes the last
message and counts 576 prompt tokens a picture; the toy vision model proves that the picture
itself reaches a real model."""

from __future__ import annotations

import asyncio
import base64
import io
import random
from typing import Any

import httpx
import openai
import pytest

from helpers import add_fake, add_model, picture
from limner.store import Store
from limner.toys import shapes, weights

QUESTION = "what is in this picture"


def echo(text: str, pictures: int = 0) -> str:
    """The fake engine's answer: the pictures it was given, then the last message."""
    return f"I see {pictures} picture(s). You said: {text}"


@pytest.fixture
def client(store: Store, server: Any) -> openai.OpenAI:
    add_fake(store, "chat")
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def with_picture(text: str, png: bytes) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [
        {"type": "text", "text": text},
        {"type": "image_url", "image_url": {"url": data_uri(png)}},
    ]}]  # fmt: skip


def test_a_chat_answers_in_openais_shape(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hello there friend"}]
    )
    assert reply.object == "chat.completion" and reply.model == "chat"
    assert reply.id.startswith("chatcmpl-")
    [choice] = reply.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == echo("hello there friend")
    assert choice.finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_a_picture_reaches_the_model(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": QUESTION}]
    )
    seen = client.chat.completions.create(model="chat", messages=with_picture(QUESTION, picture()))  # type: ignore[arg-type]
    assert seen.choices[0].message.content == echo(QUESTION, pictures=1)
    assert plain.usage is not None and seen.usage is not None
    assert seen.usage.prompt_tokens == plain.usage.prompt_tokens + 576  # one picture's tokens


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "one two three four"}], max_tokens=2
    )
    content = reply.choices[0].message.content or ""
    assert echo("one two three four").startswith(content) and "four" not in content
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 2


def test_stop_ends_the_answer_before_it(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "one two three four"}], stop=["three"]
    )
    assert (reply.choices[0].message.content or "").strip() == echo("one two")


def test_streaming_sends_chunks_a_finish_and_the_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="chat", messages=with_picture("one two three", picture()), stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == echo("one two three", pictures=1)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].usage.prompt_tokens > 576
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1


def test_the_stream_is_server_sent_events_ending_with_done(server: Any, store: Store) -> None:
    add_fake(store, "chat")
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [e for e in reply.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"


def test_the_async_client_streams_too(store: Store, server: Any) -> None:
    add_fake(store, "chat")

    async def ask() -> str:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x") as client:
            stream = await client.chat.completions.create(
                model="chat",
                messages=with_picture("red circle", picture()),
                stream=True,  # type: ignore[arg-type]
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(ask()) == echo("red circle", pictures=1)


@pytest.mark.parametrize(
    ("change", "error", "says"),
    [
        ({"model": "nothere"}, openai.NotFoundError, "not found"),
        ({"messages": []}, openai.BadRequestError, "messages must not be empty"),
        ({"n": 2}, openai.BadRequestError, "n must be 1"),
        ({"logprobs": True}, openai.BadRequestError, "logprobs"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, openai.BadRequestError, "role"),
        ({"response_format": {"type": "yaml"}}, openai.BadRequestError, "response_format"),
        ({"max_tokens": 0}, openai.BadRequestError, "max_tokens"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
         openai.BadRequestError, "'text' and 'image_url'"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]},
         openai.BadRequestError, "data: URI"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}]}]},
         openai.BadRequestError, "base64"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}]}]},
         openai.BadRequestError, "data:image/png"),
        ({"messages": with_picture("x", b"not a picture at all")}, openai.BadRequestError, ""),
    ],
)  # fmt: skip
def test_bad_requests_get_openais_error_shape(
    client: openai.OpenAI, change: dict[str, Any], error: type[Exception], says: str
) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], **change}
    with pytest.raises(error) as caught:
        client.chat.completions.create(**body)
    assert isinstance(caught.value, openai.APIStatusError)
    details = caught.value.body
    assert isinstance(details, dict) and set(details) >= {"message", "type"}
    assert says in details["message"]


def test_models_are_listed_and_retrieved(client: openai.OpenAI, store: Store) -> None:
    add_fake(store, "someone/other:v2")
    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == {"chat:latest", "someone/other:v2"}
    assert listed["someone/other:v2"].owned_by == "someone"
    assert listed["chat:latest"].owned_by == "library" and listed["chat:latest"].created > 0
    assert client.models.retrieve("someone/other:v2").id == "someone/other:v2"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("ghost")


def test_an_empty_store_lists_an_empty_list(server: Any) -> None:
    assert httpx.get(f"{server.url}/v1/models").json() == {"object": "list", "data": []}


@pytest.mark.slow
def test_the_toy_vision_model_names_colours_through_the_openai_client(
    store: Store, server: Any
) -> None:
    folder = weights("see")
    add_model(store, "see", {p.name: p.read_bytes() for p in sorted(folder.iterdir())})
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    rng, right, count = random.Random(11), 0, 12
    for _ in range(count):
        spec = shapes.random_spec(rng)
        buffer = io.BytesIO()
        shapes.draw(spec).save(buffer, format="PNG")
        reply = client.chat.completions.create(
            model="see", temperature=0, messages=with_picture(shapes.QUESTIONS["colour"], buffer.getvalue())  # type: ignore[arg-type]
        )  # fmt: skip
        right += (reply.choices[0].message.content or "").strip() == spec.colour
    assert right >= count - 1
