"""The llama.cpp engine, run for real on the tiny LLaVA converted to GGUF + mmproj."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel

import helpers
from limner.engines import Done, LoadOptions, Message, Options, Piece
from limner.errors import InvalidImage, InvalidRequest
from limner.tiny import write_tiny_llava, write_tiny_llava_gguf

pytest.importorskip("llama_cpp")

from limner.engines.llava_llamacpp import LlavaLlamaCpp, _StopText, load, round_ctx

QUESTION = "What is in this picture?"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llava_gguf(tmp_path_factory.mktemp("tiny") / "gguf", seed=0)


@pytest.fixture(scope="module")
def engine(folder: Path) -> LlavaLlamaCpp:
    return load(folder, LoadOptions(num_ctx=2048))


def picture(color: str = "red", size: tuple[int, int] = (64, 48)) -> bytes:
    return helpers.picture(size=size, color=color)


def ask(
    engine: LlavaLlamaCpp,
    pictures: int = 1,
    cancelled: Callable[[], bool] = lambda: False,
    text: str = QUESTION,
    **options: object,
) -> tuple[str, Done]:
    messages = [Message("user", text, [picture() for _ in range(pictures)])]
    opts = Options.from_dict({"num_predict": 24, "temperature": 0, **options})
    steps = list(engine.chat(messages, opts, cancelled))
    done = steps[-1]
    assert isinstance(done, Done)
    assert all(isinstance(s, Piece) for s in steps[:-1])
    return "".join(s.text for s in steps[:-1] if isinstance(s, Piece)), done


def prompt(done: Done) -> int:
    return done.prompt_eval_count + done.prompt_cached_count


def test_a_picture_costs_576_tokens_as_in_transformers(engine: LlavaLlamaCpp) -> None:
    _, one = ask(engine, pictures=1, num_predict=1)
    _, two = ask(engine, pictures=2, num_predict=1)
    assert (one.image_tokens, two.image_tokens) == (576, 1152)
    assert prompt(two) - prompt(one) >= 576
    assert prompt(one) > 576  # BOS and the question come with the picture


def test_greedy_answers_repeat_and_seeded_samples_repeat(engine: LlavaLlamaCpp) -> None:
    assert ask(engine)[0] == ask(engine)[0]
    first = ask(engine, temperature=1.0, seed=7)[0]
    assert first == ask(engine, temperature=1.0, seed=7)[0]
    others = {ask(engine, temperature=1.0, seed=s)[0] for s in range(8, 12)}
    assert len(others | {first}) > 1


def test_num_predict_stops_with_length(engine: LlavaLlamaCpp) -> None:
    _, done = ask(engine, num_predict=5)
    assert (done.done_reason, done.eval_count) == ("length", 5)
    assert done.prompt_eval_duration > 0 and done.eval_duration > 0


def test_a_stop_string_ends_the_answer_and_is_not_shown(engine: LlavaLlamaCpp) -> None:
    full, _ = ask(engine, num_predict=40)
    stop = full.strip()[3:6]
    assert stop, "the tiny model's greedy answer is long enough to cut"
    cut, done = ask(engine, num_predict=40, stop=[stop])
    assert done.done_reason == "stop"
    assert stop not in cut
    assert full.startswith(cut)


def test_json_format_constrains_the_answer(engine: LlavaLlamaCpp) -> None:
    text, done = ask(engine, format="json", num_predict=300)
    if done.done_reason == "stop":
        json.loads(text)
    assert text.lstrip().startswith(("{", "["))


def test_the_answer_stops_with_length_at_the_end_of_a_smaller_window(
    engine: LlavaLlamaCpp,
) -> None:
    _, done = ask(engine, num_ctx=600, num_predict=-1)
    assert done.done_reason == "length"
    assert prompt(done) + done.eval_count == 600


def test_a_window_larger_than_the_loaded_one_is_refused(engine: LlavaLlamaCpp) -> None:
    with pytest.raises(InvalidRequest, match="larger than the loaded window of 2048"):
        ask(engine, num_ctx=4096)


def test_cancelling_stops_between_tokens(engine: LlavaLlamaCpp) -> None:
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 3

    _, done = ask(engine, cancelled=cancelled, num_predict=50)
    assert done.done_reason == "stop"
    assert done.eval_count <= 3


def test_a_broken_picture_is_named(engine: LlavaLlamaCpp) -> None:
    messages = [Message("user", QUESTION, [picture(), b"not a picture"])]
    with pytest.raises(InvalidImage, match="picture 2"):
        list(engine.chat(messages, Options(), lambda: False))


def test_the_media_marker_in_text_is_refused(engine: LlavaLlamaCpp) -> None:
    with pytest.raises(InvalidRequest, match="may not contain"):
        ask(engine, text="look <__media__> here")


def test_follow_up_turns_render_with_the_answer_between(engine: LlavaLlamaCpp) -> None:
    messages = [
        Message("system", "Answer briefly."),
        Message("user", QUESTION, [picture()]),
        Message("assistant", "A red square."),
        Message("user", "And its colour?"),
    ]
    steps = list(engine.chat(messages, Options(num_predict=3, temperature=0), lambda: False))
    done = steps[-1]
    assert isinstance(done, Done) and done.image_tokens == 576
    _, alone = ask(engine, num_predict=1)
    assert prompt(done) > prompt(alone) + 5


def test_the_window_is_rounded_to_what_llama_cpp_allocates(folder: Path) -> None:
    assert [round_ctx(n) for n in (1, 256, 700, 4096)] == [256, 256, 768, 4096]
    small = load(folder, LoadOptions(num_ctx=700))
    assert small.n_ctx == 768
    assert small.memory_bytes() > sum(p.stat().st_size for p in folder.glob("*.gguf"))


@pytest.mark.parametrize("quantize", ["q8_0", "q4_0"])
def test_quantized_tiny_models_answer(tmp_path: Path, quantize: str) -> None:
    engine = load(write_tiny_llava_gguf(tmp_path, quantize=quantize), LoadOptions(num_ctx=1024))
    _, done = ask(engine, num_predict=4)
    assert done.eval_count == 4 and done.image_tokens == 576


@pytest.mark.slow
def test_both_engines_count_the_same_picture_tokens(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from limner.engines import transformers_chat

    hf = write_tiny_llava(tmp_path / "hf")
    gguf = load(write_tiny_llava_gguf(tmp_path / "gguf"), LoadOptions(num_ctx=2048))
    torch_engine = transformers_chat.load(hf, LoadOptions())
    messages = [Message("user", QUESTION, [picture("blue", (80, 80)), picture()])]
    opts = Options(num_predict=2, temperature=0)
    counts = []
    for engine in (gguf, torch_engine):
        done = list(engine.chat(messages, opts, lambda: False))[-1]
        assert isinstance(done, Done)
        counts.append(done.image_tokens)
    assert counts == [1152, 1152]


def test_stop_text_holds_back_what_may_start_a_stop_and_partial_characters() -> None:
    text = _StopText(["END"])
    assert text.push(b"hello E") == ("hello ", False)
    assert text.push(b"N") == ("", False)
    assert text.push(b"D more") == ("", True)
    text = _StopText([])
    snowman = "☃".encode()
    assert text.push(snowman[:1]) == ("", False)
    assert text.push(snowman[1:]) == ("☃", False)
    assert text.flush() == ""


def test_a_gguf_with_its_vision_tower_inside_is_refused_naming_the_layout_that_works(
    tmp_path: Path,
) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "gemma3")
    writer.add_uint32("gemma3.vision.block_count", 27)  # as Ollama's library stores gemma3
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        InvalidRequest, match=r"vision tower inside the text model.*hf\.co/ggml-org"
    ):
        load(tmp_path, LoadOptions())


class Shape(BaseModel):
    color: Literal["red", "green", "blue"]
    sides: int
    filled: bool


def test_a_json_schema_constrains_every_answer_to_it(engine: LlavaLlamaCpp) -> None:
    schema = json.dumps(Shape.model_json_schema())
    question = [Message("user", "Describe the shape as JSON.", [picture()])]
    for seed in range(20):
        options = Options(format=schema, seed=seed, temperature=1.0, num_predict=300)
        steps = list(engine.chat(question, options, lambda: False))
        answer = "".join(s.text for s in steps if isinstance(s, Piece))
        Shape.model_validate_json(answer)  # required keys there, the enum kept, types right


def test_a_schema_the_grammar_cannot_express_is_a_400_naming_it(engine: LlavaLlamaCpp) -> None:
    bad = json.dumps({"type": "object", "properties": {"x": {"type": "tuple-of-things"}}})
    with pytest.raises(InvalidRequest, match="this JSON schema cannot be enforced"):
        list(engine.chat([Message("user", "hi")], Options(format=bad), lambda: False))
