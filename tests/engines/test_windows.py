"""Context windows on both LLaVA engines: visible truncation, refusals with the overflow,
length stops, and follow-ups that reuse what was already computed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import helpers
from limner.engines import Done, LoadOptions, Message, Options, Piece
from limner.errors import InvalidRequest
from limner.tiny import write_tiny_llava, write_tiny_llava_gguf

pytest.importorskip("llama_cpp")
pytest.importorskip("transformers")

SYSTEM = Message("system", "You answer briefly.")


def picture(color: str) -> bytes:
    return helpers.picture(size=(48, 48), color=color)


@pytest.fixture(scope="module", params=["transformers", "llama.cpp"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("tiny")
    if request.param == "transformers":
        from limner.engines import transformers_chat

        yield transformers_chat.load(write_tiny_llava(folder / "hf"), LoadOptions())
    else:
        from limner.engines import llava_llamacpp

        yield llava_llamacpp.load(write_tiny_llava_gguf(folder / "gguf"), LoadOptions(num_ctx=4096))


def run(engine: Any, messages: list[Message], **options: Any) -> tuple[str, Done]:
    opts = Options.from_dict({"temperature": 0, "num_predict": 4, **options})
    steps = list(engine.chat(messages, opts, lambda: False))
    done = steps[-1]
    assert isinstance(done, Done)
    return "".join(s.text for s in steps if isinstance(s, Piece)), done


def prompt(done: Done) -> int:
    """The whole prompt: what was evaluated and what was reused from the cache."""
    return done.prompt_eval_count + done.prompt_cached_count


def long_chat() -> list[Message]:
    return [
        SYSTEM,
        Message("user", "What colour is this?", [picture("red")]),
        Message("assistant", "It is red."),
        Message("user", "And this one?", [picture("blue")]),
        Message("assistant", "Blue."),
        Message("user", "Which was first?"),
    ]


def test_truncation_drops_oldest_turns_keeps_system_and_last_and_says_so(engine: Any) -> None:
    _, whole = run(engine, long_chat(), num_ctx=4096)
    assert whole.truncated is None and whole.image_tokens == 1152
    _, cut = run(engine, long_chat(), num_ctx=1000)  # room for one picture, not two
    assert cut.truncated == {"messages": 2, "images": 1}
    assert cut.image_tokens == 576
    assert prompt(cut) + 4 <= 1000
    kept = [SYSTEM, *long_chat()[3:]]
    _, same = run(engine, kept, num_ctx=4096)
    assert prompt(same) == prompt(cut)  # exactly the kept messages


def test_a_last_message_that_cannot_fit_is_a_400_with_the_overflow(engine: Any) -> None:
    two = [SYSTEM, Message("user", "Compare these.", [picture("red"), picture("blue")])]
    with pytest.raises(InvalidRequest, match=r"\d+ over the 1024-token context window"):
        run(engine, two, num_ctx=1024)


def test_an_answer_that_reaches_the_window_stops_with_length(engine: Any) -> None:
    _, done = run(engine, [Message("user", "Hi", [picture("red")])], num_ctx=600, num_predict=-1)
    assert done.done_reason == "length"
    assert prompt(done) + done.eval_count == 600


def conversation(color: str, answer: str | None = None) -> list[Message]:
    first = [SYSTEM, Message("user", f"Describe the {color} picture.", [picture(color)])]
    if answer is None:
        return first
    return [*first, Message("assistant", answer), Message("user", "Is it bright?")]


def test_a_follow_up_reuses_the_picture_and_the_history(engine: Any) -> None:
    answer, first = run(engine, conversation("green"))
    assert first.image_tokens == 576
    _, follow_up = run(engine, conversation("green", answer))
    assert follow_up.image_tokens == 576
    assert follow_up.prompt_cached_count >= prompt(first) - 1  # the first turn, picture and all
    assert follow_up.prompt_eval_count < 40  # only the answer and the new question


def test_interleaved_conversations_answer_as_when_run_alone(engine: Any) -> None:
    def turns(color: str) -> tuple[str, str]:
        answer, _ = run(engine, conversation(color), seed=3)
        again, _ = run(engine, conversation(color, answer), seed=3)
        return answer, again

    alone = {color: turns(color) for color in ("red", "blue")}
    red_1, _ = run(engine, conversation("red"), seed=3)
    blue_1, _ = run(engine, conversation("blue"), seed=3)
    red_2, red_done = run(engine, conversation("red", red_1), seed=3)
    blue_2, _ = run(engine, conversation("blue", blue_1), seed=3)
    assert {"red": (red_1, red_2), "blue": (blue_1, blue_2)} == alone
    assert red_done.prompt_cached_count < 576  # blue's state was there: red's was rebuilt
