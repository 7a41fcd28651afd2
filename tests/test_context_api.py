"""Windows through the HTTP API: truncation shows in the last chunk and the log, an impossible
prompt is a 400 with the overflow, and a follow-up is charged only for its new tokens."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import httpx
import ollama
import pytest

from helpers import add_gguf, picture
from limner.store import Store

pytest.importorskip("llama_cpp")


def pictured(text: str, color: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": text,
        "images": [base64.b64encode(picture(color=color)).decode()],
    }


def history() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "Answer briefly."},
        pictured("What colour is this?", "red"),
        {"role": "assistant", "content": "Red."},
        pictured("And this?", "blue"),
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Which came first?"},
    ]


def chat_lines(server: Any, messages: list[dict[str, Any]], **options: Any) -> list[dict[str, Any]]:
    body = {
        "model": "g",
        "messages": messages,
        "options": {"temperature": 0, "num_predict": 3, **options},
    }
    with httpx.stream("POST", f"{server.url}/api/chat", json=body, timeout=60) as reply:
        assert reply.status_code == 200
        return [json.loads(line) for line in reply.iter_lines() if line]


def test_a_truncated_chat_says_what_was_dropped(
    server: Any, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    add_gguf(store, "g")
    whole = chat_lines(server, history(), num_ctx=2048)[-1]
    assert "truncated" not in whole and whole["image_tokens"] == 1152
    with caplog.at_level(logging.INFO, logger="limner.chat"):
        last = chat_lines(server, history(), num_ctx=1000)[-1]
    assert last["done"] and last["truncated"] == {"messages": 2, "images": 1}
    assert last["image_tokens"] == 576
    assert "dropped 2 oldest message(s) with 1 picture(s)" in caplog.text


def test_a_last_message_over_the_window_is_a_400_with_the_overflow(
    server: Any, store: Store
) -> None:
    add_gguf(store, "g")
    body = {
        "model": "g",
        "messages": [
            pictured("Compare.", "red") | {"images": [base64.b64encode(picture()).decode()] * 2}
        ],
        "options": {"num_ctx": 1024},
        "stream": False,
    }
    reply = httpx.post(f"{server.url}/api/chat", json=body, timeout=60)
    assert reply.status_code == 400
    assert "over the 1024-token context window" in reply.json()["error"]


def test_a_follow_up_is_charged_only_for_its_new_tokens(server: Any, store: Store) -> None:
    add_gguf(store, "g")
    client = ollama.Client(host=server.url)
    first = [{"role": "user", "content": "What is this?", "images": [picture(color="green")]}]
    options = {"temperature": 0, "num_predict": 4}
    one = client.chat(model="g", messages=first, options=options)
    follow_up = [*first, {"role": "assistant", "content": one.message.content},
                 {"role": "user", "content": "Bright?"}]  # fmt: skip
    two = client.chat(model="g", messages=follow_up, options=options)
    assert one.prompt_eval_count is not None and one.prompt_eval_count > 576
    assert two.prompt_eval_count is not None and two.prompt_eval_count < 30
