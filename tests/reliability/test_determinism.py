"""LD-10 Determinism under load (docs/reliability.md §6): four identical seeded requests sent at
once to a real engine at tiny size give the answer one request gives alone, byte for byte:
queueing, the runner's prompt cache and the requests before them change nothing."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import add_gguf, add_tiny_sd, picture
from limner.store import Store


def ask_at_once(url: str, body: dict[str, Any], count: int = 4) -> list[dict[str, Any]]:
    def one(_: int) -> dict[str, Any]:
        reply = httpx.post(url + "/api/generate", json=body, timeout=300)
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.slow
def test_four_seeded_chats_at_once_on_llama_cpp_answer_alike(
    store: Store, serve_thread: Any, tally: Any
) -> None:
    add_gguf(store, "tiny")
    server = serve_thread()
    body = {"model": "tiny", "prompt": "what is in the picture?", "stream": False,
            "images": [base64.b64encode(picture()).decode()],
            "options": {"seed": 42, "temperature": 0.9, "num_predict": 16}}  # fmt: skip
    alone = httpx.post(server.url + "/api/generate", json=body, timeout=300).json()
    answers = ask_at_once(server.url, body)
    same = [a["response"] == alone["response"] and a["eval_count"] == alone["eval_count"]
            for a in answers]  # fmt: skip
    tally(len(answers), sum(same), f"{alone['eval_count']} tokens each")
    assert alone["response"] and all(same), [a["response"] for a in answers]


@pytest.mark.slow
def test_four_seeded_drawings_at_once_are_identical(
    store: Store, serve_thread: Any, tally: Any, tmp_path: Path
) -> None:
    add_tiny_sd(store, tmp_path)
    server = serve_thread()
    body = {"model": "sd", "prompt": "a red cat", "stream": False, "width": 64, "height": 64,
            "steps": 2, "seed": 7}  # fmt: skip
    alone = httpx.post(server.url + "/api/generate", json=body, timeout=300).json()
    answers = ask_at_once(server.url, body)
    same = [a["image"] == alone["image"] for a in answers]
    other = httpx.post(server.url + "/api/generate", json={**body, "seed": 8}, timeout=300)
    tally(len(answers), sum(same))
    assert all(same)
    assert other.json()["image"] != alone["image"]  # the seed is what makes them alike
