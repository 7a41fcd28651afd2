"""LLaVA-family vision chat on vLLM: continuous batching of requests with pictures on CUDA.

vLLM runs llava-hf checkpoints as they are (`LlavaForConditionalGeneration`). One
`LLMEngine` per loaded model; one thread owns it and loops over `step()`, which advances
every request in flight by one token (new requests join at the next step, finished ones
leave: continuous batching). `chat()` calls come from several runner threads at once
(`concurrent`); they hand their requests to the loop through a queue and read their own
outputs back, so the engine is only ever touched by its thread.

The contract is the other engines': Ollama's options (temperature, top_k, top_p, min_p,
seed, num_predict, stop, repeat_penalty, num_ctx at load), `Piece` steps as text streams
out, one `Done` with counts and durations; `cancelled()` aborts the request in vLLM.

vLLM is an optional extra (`limner[vllm]`, CUDA only). `vision_engine()` picks it for
Hugging Face-format models when it imports and a GPU is present; LIMNER_VISION_ENGINE
(`auto`, `vllm`, `transformers`) overrides the choice.
"""

from __future__ import annotations

import importlib
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from limner.engines import ChatStep, Done, LoadOptions, Message, Options, Piece
from limner.errors import InvalidRequest
from limner.pictures import open_rgb

MAX_PICTURES = 8  # per prompt (vLLM's limit_mm_per_prompt)
MAX_SEQUENCES = 32  # requests in one batch; the runner takes as many at once
POLL = 0.05  # seconds between looks at a request's cancelled() while it waits


def vision_engine(folder: Path, options: LoadOptions) -> Any:
    """The engine for a Hugging Face-format vision model: vLLM on a GPU when installed,
    else transformers; LIMNER_VISION_ENGINE=vllm|transformers decides instead."""
    choice = os.environ.get("LIMNER_VISION_ENGINE", "auto").strip().lower() or "auto"
    if choice not in ("auto", "vllm", "transformers"):
        raise InvalidRequest(
            f"LIMNER_VISION_ENGINE must be auto, vllm or transformers, not {choice!r}"
        )
    if choice == "vllm" or (choice == "auto" and _vllm_usable()):
        return load(folder, options)
    from limner.engines import transformers_chat

    return transformers_chat.load(folder, options)


def _vllm_usable() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def load(folder: Path, options: LoadOptions) -> LlavaVllm:
    try:
        vllm = importlib.import_module("vllm")
    except ImportError:
        raise InvalidRequest(
            "LIMNER_VISION_ENGINE=vllm, but vLLM is not installed: pip install 'limner[vllm]' "
            "(needs a CUDA GPU)"
        ) from None
    return LlavaVllm(vllm, Path(folder), options)


class LlavaVllm:
    """A loaded model on vLLM; `chat()` may be called from many threads at once."""

    concurrent = True
    max_concurrency = MAX_SEQUENCES

    def __init__(self, vllm: Any, folder: Path, options: LoadOptions) -> None:
        self.vllm = vllm
        arguments = vllm.EngineArgs(
            model=str(folder),
            max_model_len=options.num_ctx or None,  # None: the model's trained length
            limit_mm_per_prompt={"image": MAX_PICTURES},
            max_num_seqs=MAX_SEQUENCES,
            enable_prefix_caching=True,  # follow-ups reuse the picture and the history
        )
        self.engine = vllm.LLMEngine.from_engine_args(arguments)
        self.tokenizer = self.engine.get_tokenizer()
        self.context_length = int(self.engine.model_config.max_model_len)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<image>")
        self.on_gpu = True
        self._ids = itertools.count(1)
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()  # ("add"|"abort", ...)
        self._outputs: dict[str, queue.Queue[Any]] = {}
        self._wake = threading.Event()
        self.batch_sizes: list[int] = []  # requests in flight at each step, for tests and logs
        threading.Thread(target=self._loop, name="limner-vllm", daemon=True).start()

    def memory_bytes(self) -> int:
        import torch

        return int(torch.cuda.memory_allocated()) if torch.cuda.is_available() else 0

    # --- one request, on its caller's thread ---

    def chat(
        self, messages: list[Message], options: Options, cancelled: Callable[[], bool]
    ) -> Iterator[ChatStep]:
        started = time.perf_counter_ns()
        prompt, pictures = self._prompt(messages)
        request_id = f"limner-{next(self._ids)}"
        outputs: queue.Queue[Any] = queue.Queue()
        self._outputs[request_id] = outputs
        inputs = {"prompt": prompt, "multi_modal_data": {"image": pictures}} if pictures else prompt
        self._inbox.put(("add", (request_id, inputs, self._sampling(options))))
        self._wake.set()
        text, first_token, finished = "", 0, False
        try:
            while True:
                try:
                    output = outputs.get(timeout=POLL)
                except queue.Empty:
                    if cancelled():
                        return
                    continue
                if isinstance(output, Exception):
                    finished = True
                    raise output
                completion = output.outputs[0]
                first_token = first_token or time.perf_counter_ns()
                if len(completion.text) > len(text):
                    yield Piece(completion.text[len(text) :])
                    text = completion.text
                if output.finished:
                    finished = True
                    yield self._done(output, started, first_token)
                    return
                if cancelled():
                    return
        finally:
            self._outputs.pop(request_id, None)
            if not finished:  # cancelled, or the caller stopped reading: free its place
                self._inbox.put(("abort", request_id))
                self._wake.set()

    def _prompt(self, messages: list[Message]) -> tuple[str, list[Any]]:
        if not messages:
            raise InvalidRequest("a chat needs at least one message")
        conversation, pictures = [], []
        for message in messages:
            parts: list[dict[str, str]] = [{"type": "image"} for _ in message.images]
            parts.append({"type": "text", "text": message.content})
            conversation.append({"role": message.role, "content": parts})
            pictures += [open_rgb(data, "a picture").convert("RGB") for data in message.images]
        if len(pictures) > MAX_PICTURES:
            raise InvalidRequest(f"at most {MAX_PICTURES} pictures per chat on this engine")
        prompt: str = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        return prompt, pictures

    def _sampling(self, options: Options) -> Any:
        """Ollama's options as vLLM's SamplingParams (temperature 0 is greedy in both)."""
        if options.format:
            raise InvalidRequest(
                "format (JSON or a schema) is not supported on the vLLM engine yet"
            )
        return self.vllm.SamplingParams(
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k if options.top_k > 0 else -1,
            min_p=options.min_p,
            seed=options.seed if options.seed >= 0 else None,
            max_tokens=options.num_predict if options.num_predict >= 0 else None,
            stop=list(options.stop) or None,
            repetition_penalty=options.repeat_penalty,
        )

    def _done(self, output: Any, started: int, first_token: int) -> Done:
        finished = time.perf_counter_ns()
        completion = output.outputs[0]
        prompt_ids = list(output.prompt_token_ids or [])
        return Done(
            done_reason="length" if completion.finish_reason == "length" else "stop",
            prompt_eval_count=len(prompt_ids),
            eval_count=len(completion.token_ids),
            image_tokens=prompt_ids.count(self.image_token_id),
            prompt_eval_duration=first_token - started,
            eval_duration=finished - first_token,
            prompt_cached_count=int(getattr(output, "num_cached_tokens", 0) or 0),
        )

    # --- the loop that owns the engine ---

    def _loop(self) -> None:
        while True:
            if not self.engine.has_unfinished_requests() and self._inbox.empty():
                self._wake.wait()
                self._wake.clear()
            self._take_requests()
            if not self.engine.has_unfinished_requests():
                continue
            try:
                outputs = self.engine.step()
            except Exception as error:  # every request in flight gets it
                for waiting in list(self._outputs.values()):
                    waiting.put(error)
                continue
            self.batch_sizes.append(len(outputs))
            for output in outputs:
                reader = self._outputs.get(output.request_id)
                if reader is not None:
                    reader.put(output)

    def _take_requests(self) -> None:
        while True:
            try:
                kind, payload = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                request_id, inputs, sampling = payload
                try:
                    self.engine.add_request(request_id, inputs, sampling)
                except Exception as error:  # a bad request fails alone
                    refused = self._outputs.get(request_id)
                    if refused is not None:
                        refused.put(InvalidRequest(f"vLLM refused the request: {error}"))
            else:
                self.engine.abort_request(payload)
