"""JSON that Python's parser refuses in unusual ways is a 400 that says what is wrong, never a
500: a number of 5000 digits (past Python's int-string limit) or nesting 100000 deep, in a
request body or in a training set's metadata.jsonl."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from helpers import add_fake
from limner.engines.training import _metadata_line
from limner.errors import InvalidRequest
from limner.store import Store

HUGE = "9" * 5000


def test_a_5000_digit_number_in_a_body_is_a_400(server: Any, store: Store) -> None:
    add_fake(store, "fake")
    body = '{"model": "fake", "prompt": "hi", "options": {"seed": ' + HUGE + "}}"
    reply = httpx.post(f"{server.url}/api/generate", content=body)
    assert reply.status_code == 400
    assert reply.json()["error"] == (
        "invalid JSON in the request body: a number has more than 4300 digits"
    )


def test_metadata_lines_that_json_cannot_read_name_their_line() -> None:
    with pytest.raises(InvalidRequest, match="line 3 is not JSON we can read: a number has more"):
        line = '{"file_name": "a.png", "text": "x", "n": ' + HUGE + "}"
        _metadata_line(line, "metadata.jsonl line 3")
    with pytest.raises(InvalidRequest, match="line 4 is nested too deeply"):
        _metadata_line("[" * 100_000 + "]" * 100_000, "metadata.jsonl line 4")
