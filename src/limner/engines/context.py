"""Fitting a chat into the context window, visibly.

When a conversation does not fit, whole turns are dropped from the oldest, each with its
pictures; every system message stays (moved ahead of what remains, as Ollama renders it), the
last message always stays, and `reserve` tokens are left for the answer (`num_predict` when it
is set). What was dropped is reported, never hidden. When even the system messages and the
last message leave less than `reserve`, they go ahead and the answer gets what is left (it
stops with "length"); when they do not fit at all, the request is refused with the number of
tokens it is over by.
Engines pass their own exact `measure` (template + tokenizer, 576 tokens per LLaVA-1.5
picture), so nothing here guesses a picture's cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from limner.engines import Message
from limner.errors import InvalidRequest


@dataclass
class Fitted:
    """The messages to render, their token count, and what was left out to get there."""

    messages: list[Message]
    tokens: int
    dropped_messages: int = 0
    dropped_images: int = 0

    def truncated(self) -> dict[str, int] | None:
        if not self.dropped_messages:
            return None
        return {"messages": self.dropped_messages, "images": self.dropped_images}


def fit(
    messages: list[Message], measure: Callable[[list[Message]], int], window: int, reserve: int
) -> Fitted:
    """The longest tail of `messages` (with every system message) that leaves `reserve` free."""
    if not messages:
        raise InvalidRequest("a chat needs at least one message")
    budget = window - max(reserve, 0)
    tokens = measure(messages)
    if tokens <= budget:
        return Fitted(messages, tokens)
    last = len(messages) - 1
    for start in _turn_starts(messages):
        kept = [m for m in messages[:start] if m.role == "system"] + messages[start:]
        tokens = measure(kept)
        if tokens <= budget or start == last:
            break
    if tokens > window:
        raise InvalidRequest(
            f"the last message does not fit: {tokens} tokens with the system messages, "
            f"{tokens - window} over the {window}-token context window; shorten it, send "
            "fewer pictures or raise num_ctx"
        )
    dropped = [m for m in messages[:start] if m.role != "system"]
    return Fitted(kept, tokens, len(dropped), sum(len(m.images) for m in dropped))


def _turn_starts(messages: list[Message]) -> list[int]:
    """Where a kept tail may begin: at a user message (so no answer is kept without its
    question), and finally at the last message whatever its role."""
    last = len(messages) - 1
    starts = [i for i in range(1, last) if messages[i].role == "user"]
    return [*starts, last]
