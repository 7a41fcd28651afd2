"""The transformers LLaVA engine, run for real on the tiny random-weight BakLLaVA."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel
from tokenizers import Tokenizer

import helpers
from limner.engines import Done, LoadOptions, Message, Options, Piece
from limner.errors import InvalidImage, InvalidRequest
from limner.tiny import write_tiny_llava

pytest.importorskip("transformers")

from limner.engines.transformers_chat import (
    TransformersChat,
    _Detokenizer,
    _JsonGrammar,
    _TextStream,
    load,
)

QUESTION = "What is in this picture?"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llava(tmp_path_factory.mktemp("tiny") / "llava", seed=0)


@pytest.fixture(scope="module")
def engine(folder: Path) -> TransformersChat:
    return load(folder, LoadOptions())


def picture(fmt: str = "PNG", mode: str = "RGB", color: object = "red") -> bytes:
    return helpers.picture(fmt, (64, 48), color, mode)


def ask(
    engine: TransformersChat,
    pictures: int = 1,
    cancelled: Callable[[], bool] = lambda: False,
    **options: object,
) -> tuple[str, Done, list[Piece | Done]]:
    messages = [Message("user", QUESTION, [picture() for _ in range(pictures)])]
    opts = Options.from_dict({"num_predict": 24, "temperature": 0, **options})
    steps = list(engine.chat(messages, opts, cancelled))
    done = steps[-1]
    assert isinstance(done, Done)
    text = "".join(s.text for s in steps if isinstance(s, Piece))
    return text, done, steps


def prompt_tokens(done: Done) -> int:
    """The whole prompt: evaluated now, or reused from the previous turn's cache."""
    return done.prompt_eval_count + done.prompt_cached_count


def test_prompt_counts_576_tokens_per_picture(engine: TransformersChat, folder: Path) -> None:
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for n in (0, 1, 2):
        _, done, _ = ask(engine, pictures=n, num_predict=1)
        prompt = "USER: " + "<image>\n" * n + QUESTION + " ASSISTANT:"
        # Each "<image>" is one token in the text and 576 in what the model reads.
        assert done.image_tokens == 576 * n
        assert prompt_tokens(done) == len(raw.encode(prompt).ids) + 575 * n


def test_pictures_in_every_turn_and_a_system_prompt(engine: TransformersChat) -> None:
    messages = [
        Message("system", "Answer briefly."),
        Message("user", "First?", [picture()]),
        Message("assistant", "A red card."),
        Message("user", "And now?", [picture(color="blue"), picture(color="green")]),
    ]
    steps = list(engine.chat(messages, Options(num_predict=3, temperature=0), lambda: False))
    done = steps[-1]
    assert isinstance(done, Done)
    assert done.image_tokens == 3 * 576
    assert done.eval_count == 3


def test_streams_pieces_then_one_done(engine: TransformersChat) -> None:
    text, done, steps = ask(engine, num_predict=16)
    assert all(isinstance(s, Piece) and s.text for s in steps[:-1])
    assert sum(isinstance(s, Done) for s in steps) == 1
    assert len(steps) > 3
    assert done.done_reason == "length" and done.eval_count == 16
    assert text
    assert done.prompt_eval_duration > 0 and done.eval_duration > 0


def test_greedy_is_repeatable(engine: TransformersChat) -> None:
    assert ask(engine)[0] == ask(engine)[0]


def test_seed_makes_sampling_repeatable(engine: TransformersChat) -> None:
    first = ask(engine, temperature=0.8, seed=42)[0]
    assert ask(engine, temperature=0.8, seed=42)[0] == first
    assert ask(engine, temperature=0.8, seed=43)[0] != first
    assert first != ask(engine)[0]  # sampling is not greedy


def test_sampling_options_change_the_answer(engine: TransformersChat) -> None:
    greedy = ask(engine)[0]
    assert ask(engine, repeat_penalty=1.5, repeat_last_n=64)[0] != greedy
    # top_k=1 keeps only the best token: sampling becomes greedy whatever the seed.
    assert ask(engine, temperature=1.0, top_k=1, seed=5)[0] == greedy
    assert ask(engine, temperature=1.0, top_p=0.0001, seed=6)[0] == greedy
    assert ask(engine, temperature=1.0, min_p=0.9999, seed=7)[0] == greedy


def test_stop_string_cuts_the_answer(engine: TransformersChat) -> None:
    full, _, _ = ask(engine, num_predict=24)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full.index(stop)
    text, done, steps = ask(engine, num_predict=24, stop=[stop])
    assert text == full[:cut]
    assert stop not in "".join(s.text for s in steps if isinstance(s, Piece))
    assert done.done_reason == "stop"
    assert done.eval_count < 24


def test_stop_string_spanning_pieces_is_never_emitted(folder: Path) -> None:
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = tok.encode("The cat sat on the mat.", add_special_tokens=False).ids
    stream = _TextStream(_Detokenizer(_hf_tokenizer(folder)), ["on the m"])
    pieces = []
    for n in range(1, len(ids) + 1):
        piece, stopped = stream.update(ids[:n])
        pieces.append(piece)
        if stopped:
            break
    assert stopped
    assert "".join(pieces) == "The cat sat "
    assert stream.flush() == ""


def test_partial_characters_are_held_back(folder: Path) -> None:
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = tok.encode("naïve ☃", add_special_tokens=False).ids
    stream = _TextStream(_Detokenizer(_hf_tokenizer(folder)), [])
    pieces = [stream.update(ids[:n])[0] for n in range(1, len(ids) + 1)]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + stream.flush() == "naïve ☃"


def test_num_predict_limits_the_answer(engine: TransformersChat) -> None:
    _, done, _ = ask(engine, num_predict=5)
    assert done.eval_count == 5
    assert done.done_reason == "length"


def test_context_window_limits_the_answer(engine: TransformersChat) -> None:
    prompt = prompt_tokens(ask(engine, num_predict=1)[1])
    _, done, _ = ask(engine, num_ctx=prompt + 3, num_predict=10)
    assert done.eval_count == 3
    assert done.done_reason == "length"
    with pytest.raises(InvalidRequest, match="context window"):
        ask(engine, num_ctx=prompt - 1)


def test_cancel_stops_between_tokens(engine: TransformersChat) -> None:
    polls = 0

    def cancelled() -> bool:
        nonlocal polls
        polls += 1
        return polls > 3

    _, done, _ = ask(engine, num_predict=20, cancelled=cancelled)
    assert 1 <= done.eval_count < 20
    _, done, steps = ask(engine, num_predict=20, cancelled=lambda: True)
    assert done.eval_count == 0 and len(steps) == 1


@pytest.mark.parametrize(
    ("fmt", "mode"), [("JPEG", "RGB"), ("WEBP", "RGB"), ("PNG", "RGBA"), ("PNG", "P")]
)
def test_picture_formats(engine: TransformersChat, fmt: str, mode: str) -> None:
    message = Message("user", QUESTION, [picture(fmt, mode, color=3 if mode == "P" else "red")])
    done = list(engine.chat([message], Options(num_predict=2), lambda: False))[-1]
    assert isinstance(done, Done) and done.image_tokens == 576


@pytest.mark.parametrize(
    "data", [b"not a picture", picture()[:60], picture("GIF", "P", 1), b""], ids=str
)
def test_undecodable_pictures_are_invalid(engine: TransformersChat, data: bytes) -> None:
    message = Message("user", QUESTION, [picture(), data])
    with pytest.raises(InvalidImage, match="picture 2 "):
        list(engine.chat([message], Options(num_predict=2), lambda: False))


def test_bad_requests(engine: TransformersChat) -> None:
    with pytest.raises(InvalidRequest, match="<image>"):
        list(engine.chat([Message("user", "a <image> b")], Options(), lambda: False))
    with pytest.raises(InvalidRequest, match="format"):
        list(engine.chat([Message("user", "hi")], Options(format="xml"), lambda: False))
    with pytest.raises(InvalidRequest, match="message"):
        list(engine.chat([], Options(), lambda: False))


def test_json_format_constrains_a_random_model(engine: TransformersChat) -> None:
    free = ask(engine, temperature=0.8, seed=1, num_predict=30)[0]
    with pytest.raises(ValueError):
        json.loads(free)  # unconstrained, the random model writes no JSON
    for options in [{"temperature": 0}, *({"temperature": 0.8, "seed": s} for s in range(4))]:
        text, done, _ = ask(engine, format="json", num_predict=30, **options)
        assert isinstance(json.loads(text), dict), text
        assert done.done_reason == "stop" and done.eval_count <= 30
    # Even a tight budget closes the object in time.
    text, _, _ = ask(engine, format="json", num_predict=6, temperature=0.8, seed=9)
    assert isinstance(json.loads(text), dict), text


@pytest.mark.parametrize(
    "document",
    ['{"a": [1, -2.5e+3, true, null, {"b": "x\\n\\u00e9"}], "c": {}}', "{}", ' {"k":[]} '],
)
def test_json_grammar_accepts_json(document: str) -> None:
    state = _JsonGrammar.feed(_JsonGrammar(["x"]).state, document.rstrip())
    assert state is not None and state.mode == "done"


@pytest.mark.parametrize("prefix", ["[1]", '{"a" 1', '{"a":01', '{"a":tru3', '{"a":1,}', '{"\x01'])
def test_json_grammar_rejects_invalid_prefixes(prefix: str) -> None:
    assert _JsonGrammar.feed(_JsonGrammar(["x"]).state, prefix) is None


@pytest.mark.parametrize("prefix", ['{"a":[1,{"b":"x', '{"a', '{"a":-', '{"a":"\\u00', '{"a":[t'])
def test_json_grammar_closes_any_prefix(prefix: str) -> None:
    state = _JsonGrammar.feed(_JsonGrammar(["x"]).state, prefix)
    assert state is not None
    closed = prefix + _JsonGrammar.closing(state)
    assert isinstance(json.loads(closed), dict)


def test_memory_is_parameter_bytes(engine: TransformersChat) -> None:
    assert engine.memory_bytes() == 4 * sum(p.numel() for p in engine.model.parameters())
    assert engine.memory_bytes() > 800_000


def _hf_tokenizer(folder: Path) -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


class Shape(BaseModel):
    color: Literal["red", "green", "blue"]
    sides: int
    filled: bool


def test_a_json_schema_constrains_every_answer_to_it(engine: TransformersChat) -> None:
    schema = Shape.model_json_schema()
    for seed in range(20):
        text, _, _ = ask(engine, format=json.dumps(schema), num_predict=300, temperature=1.0,
                         seed=seed)  # fmt: skip
        Shape.model_validate_json(text)  # required keys there, the enum kept, types right


def test_a_schema_llguidance_cannot_enforce_is_a_400(engine: TransformersChat) -> None:
    bad = json.dumps({"type": "object", "properties": {"x": {"type": "tuple-of-things"}}})
    with pytest.raises(InvalidRequest, match="this JSON schema cannot be enforced"):
        ask(engine, format=bad)
