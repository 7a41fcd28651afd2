"""Fitting a conversation into the window: whole oldest turns go first, visibly."""

from __future__ import annotations

import pytest

from limner.engines import Message
from limner.engines.context import fit
from limner.errors import InvalidRequest

PICTURE = 576


def cost(messages: list[Message]) -> int:
    """10 tokens per message plus 576 per picture: the shape of a real count, not a guess."""
    return sum(10 + PICTURE * len(m.images) for m in messages)


def chat(*turns: tuple[str, int]) -> list[Message]:
    return [Message(role, f"m{i}", [b"png"] * pictures) for i, (role, pictures) in enumerate(turns)]


def test_a_chat_that_fits_is_untouched() -> None:
    messages = chat(("system", 0), ("user", 1), ("assistant", 0), ("user", 0))
    fitted = fit(messages, cost, window=1000, reserve=0)
    assert fitted.messages == messages and fitted.tokens == 616 and fitted.truncated() is None


def test_oldest_turns_go_first_with_their_pictures_and_systems_stay() -> None:
    messages = chat(
        ("system", 0), ("user", 1), ("assistant", 0), ("system", 0), ("user", 1),
        ("assistant", 0), ("user", 0),
    )  # fmt: skip
    fitted = fit(messages, cost, window=700, reserve=0)
    assert [m.content for m in fitted.messages] == ["m0", "m3", "m4", "m5", "m6"]
    assert fitted.truncated() == {"messages": 2, "images": 1}
    assert fitted.tokens == cost(fitted.messages) <= 700


def test_room_is_kept_for_num_predict() -> None:
    messages = chat(("user", 0), ("assistant", 0), ("user", 0))
    assert fit(messages, cost, window=30, reserve=0).truncated() is None
    fitted = fit(messages, cost, window=30, reserve=15)
    assert [m.content for m in fitted.messages] == ["m2"]
    assert fitted.truncated() == {"messages": 2, "images": 0}


def test_an_answer_is_never_kept_without_its_question() -> None:
    messages = chat(("user", 0), ("assistant", 0), ("user", 0), ("assistant", 0), ("user", 0))
    fitted = fit(messages, cost, window=35, reserve=0)
    assert [m.role for m in fitted.messages] == ["user", "assistant", "user"]


def test_the_last_message_stays_even_when_the_answer_gets_less_than_reserved() -> None:
    messages = chat(("system", 0), ("user", 1), ("user", 0))
    fitted = fit(messages, cost, window=25, reserve=100)
    assert [m.content for m in fitted.messages] == ["m0", "m2"]


def test_a_last_message_that_cannot_fit_is_refused_with_the_overflow() -> None:
    messages = chat(("system", 0), ("user", 0), ("user", 2))
    with pytest.raises(InvalidRequest, match=r"1172 tokens .* 172 over the 1000-token"):
        fit(messages, cost, window=1000, reserve=0)
