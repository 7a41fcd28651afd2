"""What a model cannot do is a 400 in Ollama's words, before anything loads: tools and
thinking (no model of limner's thinks yet; tools are checked against the template: test_tools.py),
through the official `ollama` and `openai` clients."""

from __future__ import annotations

from typing import Any

import ollama
import openai
import pytest

from helpers import add_fake
from limner.store import Store

TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
HELLO = [{"role": "user", "content": "hello"}]


def test_tools_and_thinking_are_400s_naming_what_the_model_does_not_support(
    server: Any, store: Store
) -> None:
    add_fake(store, "fake")
    client = ollama.Client(host=server.url)
    assert set(client.show("fake").capabilities or []) == {"completion", "vision"}
    with pytest.raises(ollama.ResponseError, match='"fake:latest" does not support tools') as e:
        client.chat(model="fake", messages=HELLO, tools=[TOOL])
    assert e.value.status_code == 400
    with pytest.raises(ollama.ResponseError, match='"fake:latest" does not support thinking'):
        client.chat(model="fake", messages=HELLO, think=True)
    with pytest.raises(ollama.ResponseError, match='"fake:latest" does not support thinking'):
        client.generate(model="fake", prompt="hello", think="high")
    with pytest.raises(ollama.ResponseError, match="invalid think value"):
        client.chat(model="fake", messages=HELLO, think="extreme")  # type: ignore[arg-type]
    # Asking for neither still answers.
    assert client.chat(model="fake", messages=HELLO, think=False, tools=[]).done


def test_openai_tools_on_a_model_without_them_is_a_400(server: Any, store: Store) -> None:
    add_fake(store, "fake")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        client.chat.completions.create(model="fake", messages=HELLO, tools=[TOOL])  # type: ignore[list-item]
