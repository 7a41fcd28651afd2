"""The vLLM engine's wiring, on the CPU: a fake `vllm` module at the seam (vLLM needs CUDA)
stands in for LLMEngine, and the engine's own code is what runs: prompts with pictures,
Ollama's options as SamplingParams, one loop thread batching concurrent requests, streaming
deltas, aborts on cancel, and the choice between vLLM and transformers. The runner's side of
batching (several requests at once to one runner) is checked through a real server."""

from __future__ import annotations

import sys
import threading
import time
import types
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

import helpers
from helpers import add_fake
from limner.engines import Done, LoadOptions, Message, Options, Piece, llava_vllm
from limner.errors import InvalidRequest
from limner.store import Store

IMAGE_ID = 32000
ANSWER = ["a", "red", "circle", "on", "white"]


class FakeTokenizer:
    def apply_chat_template(self, conversation: list[dict[str, Any]], **_: Any) -> str:
        lines = []
        for turn in conversation:
            parts = ["<image>" if p["type"] == "image" else p["text"] for p in turn["content"]]
            lines.append(f"{turn['role'].upper()}: {' '.join(parts)}")
        return "\n".join(lines) + "\nASSISTANT:"

    def convert_tokens_to_ids(self, token: str) -> int:
        return IMAGE_ID


class FakeLLMEngine:
    """vLLM's LLMEngine as far as the engine uses it: one word per request per step."""

    def __init__(self, arguments: Any) -> None:
        self.arguments = arguments
        self.model_config = types.SimpleNamespace(max_model_len=4096)
        self.requests: dict[str, dict[str, Any]] = {}
        self.added: list[tuple[str, Any, Any]] = []
        self.aborted: list[str] = []
        self.steps: list[list[str]] = []  # the requests advanced at each step

    @classmethod
    def from_engine_args(cls, arguments: Any) -> FakeLLMEngine:
        return cls(arguments)

    def get_tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer()

    def add_request(self, request_id: str, inputs: Any, sampling: Any) -> None:
        self.added.append((request_id, inputs, sampling))
        self.requests[request_id] = {"words": [], "sampling": sampling, "inputs": inputs}

    def abort_request(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self.requests.pop(request_id, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[Any]:
        time.sleep(0.02)
        outputs = []
        self.steps.append(list(self.requests))
        for request_id, request in list(self.requests.items()):
            words = request["words"]
            words.append(ANSWER[len(words)])
            limit = request["sampling"].kwargs["max_tokens"]
            finish = "length" if limit is not None and len(words) >= limit else None
            finish = finish or ("stop" if len(words) == len(ANSWER) else None)
            pictures = len(request["inputs"]["multi_modal_data"]["image"]) if isinstance(
                request["inputs"], dict) else 0  # fmt: skip
            completion = types.SimpleNamespace(text=" ".join(words), token_ids=list(range(len(words))),
                                               finish_reason=finish)  # fmt: skip
            outputs.append(types.SimpleNamespace(
                request_id=request_id, outputs=[completion], finished=finish is not None,
                prompt_token_ids=[1, 2, 3] + [IMAGE_ID] * 576 * pictures))  # fmt: skip
            if finish:
                del self.requests[request_id]
        return outputs


class Recorded:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("vllm")
    module.LLMEngine = FakeLLMEngine  # type: ignore[attr-defined]
    module.EngineArgs = Recorded  # type: ignore[attr-defined]
    module.SamplingParams = Recorded  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


@pytest.fixture
def engine(fake_vllm: types.ModuleType, tmp_path: Path) -> llava_vllm.LlavaVllm:
    return llava_vllm.load(tmp_path, LoadOptions(num_ctx=2048))


def png(colour: str) -> bytes:
    return helpers.picture(size=(32, 32), color=colour)


def answer(engine: Any, messages: list[Message], options: Options) -> tuple[str, Done]:
    steps = list(engine.chat(messages, options, lambda: False))
    assert isinstance(steps[-1], Done)
    return "".join(s.text for s in steps if isinstance(s, Piece)), steps[-1]


def test_the_engine_is_built_from_the_folder_and_the_window(engine: Any, tmp_path: Path) -> None:
    arguments = engine.engine.arguments.kwargs
    assert arguments["model"] == str(tmp_path) and arguments["max_model_len"] == 2048
    assert arguments["limit_mm_per_prompt"] == {"image": llava_vllm.MAX_PICTURES}
    assert engine.context_length == 4096 and engine.max_concurrency == llava_vllm.MAX_SEQUENCES


def test_a_question_with_a_picture_streams_its_answer_and_counts(engine: Any) -> None:
    question = Message("user", "What is this?", [png("red")])
    text, done = answer(engine, [question], Options(temperature=0))
    assert text == "a red circle on white" and done.done_reason == "stop"
    assert done.eval_count == 5 and done.image_tokens == 576 and done.prompt_eval_count == 579
    [(_, inputs, _)] = engine.engine.added
    assert inputs["prompt"] == "USER: <image> What is this?\nASSISTANT:"
    [picture] = inputs["multi_modal_data"]["image"]
    assert picture.size == (32, 32) and picture.mode == "RGB"


def test_ollamas_options_become_sampling_params(engine: Any) -> None:
    options = Options(temperature=0.2, top_k=0, top_p=0.5, min_p=0.1, seed=7, num_predict=2,
                      stop=["circle"], repeat_penalty=1.1)  # fmt: skip
    text, done = answer(engine, [Message("user", "hi")], options)
    assert text == "a red" and done.done_reason == "length" and done.eval_count == 2
    [(_, inputs, sampling)] = engine.engine.added
    assert inputs == "USER: hi\nASSISTANT:"  # no pictures: a plain prompt
    assert sampling.kwargs == {"temperature": 0.2, "top_p": 0.5, "top_k": -1, "min_p": 0.1,
                               "seed": 7, "max_tokens": 2, "stop": ["circle"],
                               "repetition_penalty": 1.1}  # fmt: skip
    _, _ = answer(engine, [Message("user", "hi")], Options())
    assert engine.engine.added[-1][2].kwargs["seed"] is None  # -1: vLLM's own randomness


def test_concurrent_chats_share_steps_continuous_batching(engine: Any) -> None:
    results: dict[int, str] = {}

    def chat(number: int) -> None:
        results[number], _ = answer(engine, [Message("user", f"q{number}", [png("red")])],
                                    Options())  # fmt: skip

    threads = [threading.Thread(target=chat, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {n: "a red circle on white" for n in range(4)}
    assert max(len(step) for step in engine.engine.steps) >= 2  # several requests per step
    assert max(engine.batch_sizes) >= 2


def test_a_cancelled_chat_is_aborted_in_vllm(engine: Any) -> None:
    seen: list[str] = []
    steps = engine.chat([Message("user", "go")], Options(), lambda: bool(seen))
    for step in steps:
        if isinstance(step, Piece):
            seen.append(step.text)
    assert seen == ["a"]
    deadline = time.monotonic() + 5
    while not engine.engine.aborted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.engine.aborted == [engine.engine.added[0][0]]


def test_json_mode_and_too_many_pictures_are_refused(engine: Any) -> None:
    with pytest.raises(InvalidRequest, match="format"):
        list(engine.chat([Message("user", "hi")], Options(format="json"), lambda: False))
    many = [png("red")] * (llava_vllm.MAX_PICTURES + 1)
    with pytest.raises(InvalidRequest, match="at most"):
        list(engine.chat([Message("user", "hi", many)], Options(), lambda: False))


def test_the_engine_is_chosen_by_vllm_and_a_gpu_or_by_the_variable(
    fake_vllm: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from limner.engines import transformers_chat

    monkeypatch.setattr(transformers_chat, "load", lambda folder, options: "transformers")
    monkeypatch.setenv("LIMNER_VISION_ENGINE", "vllm")
    assert isinstance(llava_vllm.vision_engine(tmp_path, LoadOptions()), llava_vllm.LlavaVllm)
    monkeypatch.setenv("LIMNER_VISION_ENGINE", "transformers")
    assert llava_vllm.vision_engine(tmp_path, LoadOptions()) == "transformers"
    monkeypatch.setenv("LIMNER_VISION_ENGINE", "auto")
    monkeypatch.setattr(llava_vllm, "_vllm_usable", lambda: False)  # no GPU here
    assert llava_vllm.vision_engine(tmp_path, LoadOptions()) == "transformers"
    monkeypatch.setattr(llava_vllm, "_vllm_usable", lambda: True)
    assert isinstance(llava_vllm.vision_engine(tmp_path, LoadOptions()), llava_vllm.LlavaVllm)
    monkeypatch.setenv("LIMNER_VISION_ENGINE", "tensorrt")
    with pytest.raises(InvalidRequest, match="LIMNER_VISION_ENGINE"):
        llava_vllm.vision_engine(tmp_path, LoadOptions())


def test_without_vllm_asking_for_it_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import fails
    monkeypatch.setenv("LIMNER_VISION_ENGINE", "vllm")
    with pytest.raises(InvalidRequest, match=r"limner\[vllm\]"):
        llava_vllm.vision_engine(tmp_path, LoadOptions())


def test_a_runner_whose_engine_batches_takes_several_requests_at_once(
    store: Store, server: Any
) -> None:
    """The runner side of batching: an engine that says it is concurrent (here the fake, as
    vLLM's does) gets requests on threads, and the scheduler hands it several at once."""
    add_fake(store, "batching", token_delay=0.05, concurrent=4)
    add_fake(store, "serial", token_delay=0.05)
    timings = {}
    for model in ("batching", "serial"):
        httpx.post(f"{server.url}/api/generate", json={"model": model, "prompt": "x"}, timeout=30)
        started = time.monotonic()
        body = {"model": model, "prompt": "SLOW", "stream": False, "options": {"num_predict": 20}}
        post = partial(httpx.post, f"{server.url}/api/generate", json=body, timeout=60)
        threads = [threading.Thread(target=post) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        timings[model] = time.monotonic() - started
    # 4 x 20 words x 0.05 s: about 1 s side by side, 4 s one after another.
    assert timings["batching"] < 2.0 < timings["serial"], timings
