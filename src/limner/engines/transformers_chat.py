"""Chat on transformers, fp32 on CPU: vision families through `AutoModelForImageTextToText`
and their own processor (LLaVA-1.5/BakLLaVA, LLaVA-NeXT, Qwen2-VL and Qwen2.5-VL, Gemma 3,
Idefics3/SmolVLM, Mistral 3, ...), text-only models through `AutoModelForCausalLM`.

This module knows nothing about HTTP or the store layout: it receives a Hugging Face model
folder (config.json, safetensors weights, tokenizer and processor files, the chat template)
and yields `Piece` steps as text streams out, then one `Done` with counts and durations.

Generation is a hand-written token loop over a KV cache rather than `model.generate`, so that
`cancelled()` is polled between tokens and sampling (Ollama's options, JSON mode) is ours:

    engine = load(Path("tiny-llava"), LoadOptions())
    for step in engine.chat([Message("user", "What is this?", [png])], Options(), lambda: False):
        print(step)

Counting follows the processor, picture by picture: a LLaVA-1.5 picture is 576 `<image>`
tokens for a CLIP-336/14 tower whatever its size (counted without decoding it); the dynamic
families (Qwen2-VL, LLaVA-NeXT, Idefics3) cost what the processor makes of that picture.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import llguidance.hf
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
)
from transformers.utils import logging as transformers_logging

from limner.engines import (
    ChatStep,
    Done,
    LoadOptions,
    Message,
    Options,
    Piece,
    Tool,
    schema_of,
    tool_calls,
)
from limner.engines.context import fit
from limner.engines.processors import load_processor
from limner.engines.structured import SchemaMatcher, compile_schema
from limner.engines.templates import jinja_message
from limner.errors import InvalidRequest
from limner.pictures import open_rgb


def load(folder: Path, options: LoadOptions) -> TransformersChat:
    """Load the model and processor in `folder`; runtime options arrive with each chat."""
    return TransformersChat(Path(folder))


def sees(config: Any) -> bool:
    """Whether a model config has a vision tower (then a processor turns pictures into tokens)."""
    return getattr(config, "vision_config", None) is not None


class TransformersChat:
    """A loaded chat model: `chat()` streams one answer at a time."""

    def __init__(self, folder: Path) -> None:
        # A runner's log is no terminal: no progress bars.
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        # fp32 on a CPU; on CUDA half precision, as every LLaVA is served there.
        self.on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.on_gpu else "cpu")
        dtype = torch.float32
        if self.on_gpu:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        self.vision = sees(config)
        self.family: str = config.model_type
        kind = AutoModelForImageTextToText if self.vision else AutoModelForCausalLM
        # from_pretrained leaves the model in eval mode (no dropout).
        self.model = kind.from_pretrained(folder, local_files_only=True, dtype=dtype)
        self.model.to(self.device)  # type: ignore[arg-type]
        if self.vision:
            self.processor: Any = load_processor(folder, config.model_type)
            self.tokenizer = self.processor.tokenizer
            self.image_token_id: int = _image_token_id(config)
        else:
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.image_token_id = -1
        text_config = self.model.config.get_text_config()
        self.context_length: int = text_config.max_position_embeddings
        eos = self.model.generation_config.eos_token_id
        eos = self.tokenizer.eos_token_id if eos is None else eos
        self.eos_ids: set[int] = set(eos) if isinstance(eos, list) else {eos}
        self.banned = self._banned_mask(text_config.vocab_size)
        self.detokenizer = _Detokenizer(self.tokenizer)
        self._json_pieces: list[str | None] | None = None  # built on the first JSON request
        self._llg_tokenizer: Any = None  # llguidance's view of the vocabulary, on first use
        self._schema: tuple[str, str] | None = None  # the last schema and its grammar
        # LLaVA-1.5's pictures all cost the same: counted without decoding, reused one by one.
        self.image_cost = self._image_cost() if self.family == "llava" else 0
        self._last_inputs: tuple[Any, Any] | None = None  # (prompt and pictures, inputs)
        self.cache: Any = None  # the last conversation's KV cache...
        self.cached: list[Any] = []  # ...and what it holds, one key per position

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def chat(
        self, messages: list[Message], options: Options, cancelled: Callable[[], bool]
    ) -> Iterator[ChatStep]:
        """Stream the assistant's answer to `messages`, then one `Done`."""
        started = time.perf_counter_ns()
        _check_options(options)
        num_ctx = options.num_ctx or self.context_length

        # 1. Prompt: the oldest turns dropped if it does not fit (keeping room for num_predict),
        # then the model's chat template, pictures decoded and preprocessed.
        measure = functools.partial(self._count, tools=options.tools)
        fitted = fit(messages, measure, num_ctx, reserve=max(options.num_predict, 0))
        inputs = self._inputs(fitted.messages, options.tools)
        prompt_ids: list[int] = inputs["input_ids"][0].tolist()
        prompt_count = len(prompt_ids)
        image_tokens = prompt_ids.count(self.image_token_id)

        reused = 0

        def done(reason: str, generated: list[int], prefilled: int, finished: int) -> Done:
            return Done(
                done_reason=reason,
                prompt_eval_count=prompt_count - reused,
                prompt_cached_count=reused,
                eval_count=len(generated),
                image_tokens=image_tokens,
                prompt_eval_duration=prefilled - started,
                eval_duration=finished - prefilled,
                truncated=fitted.truncated(),
            )

        # How many tokens the answer may have: what the window leaves, and num_predict if set.
        limit = num_ctx - prompt_count
        if options.num_predict >= 0:
            limit = min(limit, options.num_predict)
        if limit == 0 or cancelled():
            now = time.perf_counter_ns()
            yield done("length" if limit == 0 else "stop", [], now, now)
            return

        # 2. Prefill: what the cache does not hold yet (a follow-up reuses the last turn).
        digests = [hashlib.sha256(d).hexdigest() for m in fitted.messages for d in m.images]
        keys = _position_keys(prompt_ids, self.image_token_id, digests, self.image_cost)
        out, reused = self._prefill(inputs.to(self.device), keys)
        prefilled = time.perf_counter_ns()

        # 3. Decode one token at a time until a stop, the end-of-sequence token or a limit.
        sampler = _Sampler(options, self.banned, num_ctx)
        history = [t for t in prompt_ids if t != self.image_token_id]  # for repeat_penalty
        text = _TextStream(self.detokenizer, options.stop)
        grammar = _JsonGrammar(self._pieces_for_json()) if options.format == "json" else None
        schema = self._schema_matcher(options)
        generated: list[int] = []
        reason = "stop"
        while True:
            scores = sampler.scores(out.logits[0, -1].float().cpu(), history)
            if schema is not None:
                schema.restrict(scores)
            if grammar is None:
                token: int | None = sampler.pick(scores)
            else:
                token = grammar.pick(sampler.order(scores), budget=limit - len(generated) - 1)
            if token is None or token in self.eos_ids:
                break
            if schema is not None:
                schema.consume(token)
            generated.append(token)
            history.append(token)
            piece, hit_stop = text.update(generated)
            if piece:
                yield Piece(piece)
            complete = (grammar is not None and grammar.complete) or (
                schema is not None and schema.done
            )
            if hit_stop or complete:
                break
            if len(generated) >= limit:
                reason = "length"
                break
            if cancelled():
                break
            self.cached = []  # until the step is done
            with torch.inference_mode():
                ids = torch.tensor([[token]], device=self.device)
                out = self.model(input_ids=ids, cache=out.cache, use_cache=True)
            keys.append(token)
            self.cached = keys

        # 4. Text held back for a possible stop string or a partial character is real output.
        rest = text.flush()
        if rest:
            yield Piece(rest)
        yield done(reason, generated, prefilled, time.perf_counter_ns())

    def _prefill(self, inputs: Any, keys: list[Any]) -> tuple[Any, int]:
        """Run the prompt through the model from where it differs from the cached one.

        The cache holds the last conversation (token ids, pictures as their digests); a
        follow-up about the same picture runs only its new tokens and no picture again. A
        sliding-window cache that has already dropped states cannot be rewound: then, and for
        any other conversation, the prompt runs whole.
        """
        reuse = _boundary(keys, _common_prefix(self.cached, keys, len(keys) - 1))
        if not self.image_cost and not _reusable(self.cached, keys, reuse):
            reuse = 0
        self.cached = []  # until the new state is complete
        if reuse:
            try:
                self.cache.crop(reuse - self.cache.get_seq_length())
            except (RuntimeError, ValueError):
                reuse = 0
        with torch.inference_mode():
            if reuse:
                ids = inputs["input_ids"][:, reuse:]
                out = self.model(
                    input_ids=ids,
                    pixel_values=self._pictures_after(inputs, keys, reuse),
                    cache=self.cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            else:
                out = self.model(**inputs, use_cache=True, logits_to_keep=1)
        self.cache, self.cached = out.cache, list(keys)
        return out, reuse

    def _pictures_after(self, inputs: Any, keys: list[Any], reuse: int) -> Any:
        """The pixels of the pictures the reused cache does not hold: LLaVA's are cut picture
        by picture; other families reuse only when it holds them all (`_reusable`)."""
        pixels = inputs.get("pixel_values")
        if pixels is None or not self.image_cost:
            return None
        rest = pixels[sum(isinstance(k, tuple) for k in keys[:reuse]) // self.image_cost :]
        return rest if len(rest) else None

    def _count(self, messages: list[Message], tools: Sequence[Tool] = ()) -> int:
        """The prompt's exact token count, pictures included (LLaVA's without decoding one)."""
        if not self.image_cost:
            return len(self._inputs(messages, tools)["input_ids"][0])
        ids = self.tokenizer(self._render(messages, tools))["input_ids"]
        pictures = sum(len(m.images) for m in messages)
        return len(ids) + pictures * (self.image_cost - 1)

    def _inputs(self, messages: list[Message], tools: Sequence[Tool] = ()) -> Any:
        """The model's inputs for `messages`; the last ones are kept, since counting a prompt
        to fit it and running it process the same pictures."""
        text = self._render(messages, tools)
        key = (text, tuple(hashlib.sha256(d).digest() for m in messages for d in m.images))
        if self._last_inputs is not None and self._last_inputs[0] == key:
            return self._last_inputs[1]
        inputs = self._processed(text, messages)
        self._last_inputs = (key, inputs)
        return inputs

    def _processed(self, text: str, messages: list[Message]) -> Any:
        if self.processor is None:
            bos = self.tokenizer.bos_token
            starts = bool(bos) and text.startswith(bos)  # the template wrote it already
            return self.tokenizer(text, return_tensors="pt", add_special_tokens=not starts)
        pictures = [
            open_rgb(data, f"picture {number}")
            for number, data in enumerate((d for m in messages for d in m.images), 1)
        ]
        return self.processor(text=text, images=pictures or None, return_tensors="pt")

    @functools.cached_property
    def tool_tag(self) -> str:
        """What this model's template writes before a tool call (tool_calls.tag_of)."""
        return tool_calls.tag_of(self._render)

    def _render(self, messages: list[Message], tools: Sequence[Tool] = ()) -> str:
        if not messages:
            raise InvalidRequest("a chat needs at least one message")
        extra = {"tools": [tool.wire() for tool in tools]} if tools else {}
        if self.processor is None:
            if any(message.images for message in messages):
                raise InvalidRequest("this model has no vision tower, so it cannot see pictures")
            plain = [jinja_message(m.role, m.content, m.tool_calls, m.tool_name) for m in messages]
            text: str = self.tokenizer.apply_chat_template(
                plain, add_generation_prompt=True, tokenize=False, **extra
            )
            return text
        conversation = []
        for message in messages:
            if self.processor.image_token in message.content:
                raise InvalidRequest(
                    f"message text may not contain {self.processor.image_token!r}; "
                    "attach pictures through the message's images instead"
                )
            # The families' templates render a turn's pictures first, then its text.
            parts: list[dict[str, str]] = [{"type": "image"} for _ in message.images]
            parts.append({"type": "text", "text": message.content})
            conversation.append(
                jinja_message(message.role, parts, message.tool_calls, message.tool_name)
            )
        prompt: str = self.processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False, **extra
        )
        return prompt

    def _image_cost(self) -> int:
        """Tokens one picture takes in the prompt (576 for CLIP-336/14), from the processor."""
        blank = Image.new("RGB", (64, 64))
        token = self.processor.image_token
        with_picture = self.processor(text=token, images=[blank], return_tensors="pt")
        return len(with_picture["input_ids"][0]) - len(self.tokenizer(token)["input_ids"]) + 1

    def _banned_mask(self, rows: int) -> torch.Tensor:
        # Ids the model may score but must never emit: padded-vocab rows past the tokenizer
        # (random and fine-tuned models do pick them), picture placeholders, <pad>, <s>, <unk>.
        banned = set(range(len(self.tokenizer), rows)) | {self.image_token_id}
        banned |= set(self.tokenizer.all_special_ids) - self.eos_ids
        mask = torch.zeros(rows)
        mask[sorted(i for i in banned if 0 <= i < rows)] = float("-inf")
        return mask

    def _schema_matcher(self, options: Options) -> SchemaMatcher | None:
        """llguidance's matcher for the request's JSON schema, if it has one."""
        schema = schema_of(options)
        if schema is None:
            return None
        if self._llg_tokenizer is None:  # about a second for a real vocabulary: once
            self._llg_tokenizer = llguidance.hf.from_tokenizer(
                self.tokenizer, n_vocab=len(self.banned), eos_token=sorted(self.eos_ids)
            )
        if self._schema is None or self._schema[0] != schema:  # compiled once per schema
            self._schema = (schema, compile_schema(self._llg_tokenizer, schema))
        return SchemaMatcher(self._llg_tokenizer, self._schema[1])

    def _pieces_for_json(self) -> list[str | None]:
        if self._json_pieces is None:
            self._json_pieces = self.detokenizer.pieces()
        return self._json_pieces


def _image_token_id(config: Any) -> int:
    """The placeholder token a processor repeats for a picture's embeddings."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise InvalidRequest(f"the {config.model_type} config names no image token")


def _position_keys(ids: list[int], image_id: int, digests: list[str], cost: int) -> list[Any]:
    """One key per prompt position: the token id, or for a picture's token (digest, index):
    that picture's digest when each costs `cost` tokens, else (tokens of several pictures
    cannot be told apart) the digest of all the prompt's pictures."""
    everything = hashlib.sha256("".join(digests).encode()).hexdigest()
    keys: list[Any] = []
    seen = 0
    for token in ids:
        if token == image_id:
            keys.append((digests[seen // cost], seen % cost) if cost else (everything, seen))
            seen += 1
        else:
            keys.append(token)
    return keys


def _reusable(cached: list[Any], keys: list[Any], reuse: int) -> bool:
    """For families whose pictures cannot be cut out of the processor's output: the cache is
    reused only when the new prompt has the same pictures, all within the reused part (their
    position state, as Qwen2-VL's rotary deltas, then still holds)."""
    pictures = {key[0] for key in keys if isinstance(key, tuple)}
    before = {key[0] for key in cached if isinstance(key, tuple)}
    return pictures == before and not any(isinstance(key, tuple) for key in keys[reuse:])


def _common_prefix(old: list[Any], new: list[Any], most: int) -> int:
    same = 0
    for a, b in zip(old, new, strict=False):
        if a != b or same >= most:
            break
        same += 1
    return same


def _boundary(keys: list[Any], position: int) -> int:
    """`position`, moved back to the first token of the picture it falls inside, if any."""
    while 0 < position < len(keys) and isinstance(keys[position], tuple) and keys[position][1]:
        position -= 1
    return position


def _check_options(options: Options) -> None:
    schema_of(options)  # a 400 for a format that is neither JSON nor a schema
    if options.num_ctx < 0:
        raise InvalidRequest(
            f"num_ctx must be 0 (the model's own) or positive, not {options.num_ctx}"
        )


class _Sampler:
    """Ollama's sampling options over one step's logits (llama.cpp's order: penalties,
    top_k, top_p, min_p, then temperature). Temperature 0 is greedy."""

    def __init__(self, options: Options, banned: torch.Tensor, num_ctx: int) -> None:
        self.options = options
        self.banned = banned
        self.last_n = num_ctx if options.repeat_last_n == -1 else max(options.repeat_last_n, 0)
        self.generator = torch.Generator()
        if options.seed >= 0:
            self.generator.manual_seed(options.seed)
        else:
            self.generator.seed()

    def scores(self, logits: torch.Tensor, history: list[int]) -> torch.Tensor:
        """Logits with banned ids at -inf and the repeat penalty applied."""
        scores = logits.float() + self.banned
        penalty = self.options.repeat_penalty
        if penalty != 1.0 and self.last_n > 0 and history:
            seen = torch.tensor(sorted(set(history[-self.last_n :])))
            picked = scores[seen]
            scores[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
        return scores

    def pick(self, scores: torch.Tensor) -> int:
        return int(torch.argmax(self._keys(scores)))

    def order(self, scores: torch.Tensor) -> Iterator[int]:
        """Every allowed id, most wanted first: the sampling order, then the filtered-out
        ids by score (for the JSON grammar, which may refuse all sampled candidates)."""
        keys = self._keys(scores)
        sampled = torch.isfinite(keys)
        yield from _ranked(keys, sampled)
        yield from _ranked(scores, torch.isfinite(scores) & ~sampled)

    def _keys(self, scores: torch.Tensor) -> torch.Tensor:
        # Greedy ranks by score. Sampling ranks by log p + Gumbel noise: the first key is a
        # draw from p, and the order is a draw without replacement (the Gumbel-max trick).
        if self.options.temperature <= 0:
            return scores
        kept = self._filter(scores)
        noise = torch.empty_like(kept).exponential_(generator=self.generator)
        return kept / self.options.temperature - torch.log(noise)

    def _filter(self, scores: torch.Tensor) -> torch.Tensor:
        top_k, top_p, min_p = self.options.top_k, self.options.top_p, self.options.min_p
        if 0 < top_k < scores.numel():
            kth = torch.topk(scores, top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if 0 < top_p < 1:
            # Keep the smallest set of best tokens whose probability reaches top_p.
            sorted_probs, ids = torch.sort(probs, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            scores = scores.clone()
            scores[ids[before >= top_p]] = float("-inf")
        if min_p > 0:
            scores = scores.masked_fill(probs < min_p * probs.max(), float("-inf"))
        return scores


def _ranked(values: torch.Tensor, where: torch.Tensor) -> Iterator[int]:
    ids = torch.nonzero(where).flatten()
    yield from ids[torch.argsort(values[ids], descending=True, stable=True)].tolist()


class _Detokenizer:
    """Token ids to text. Decoders strip the first space of an answer, so ids from the middle
    of one are decoded after a fixed anchor token whose text is then cut off."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.anchor: list[int] = tokenizer.encode("a", add_special_tokens=False)
        self.anchor_text: str = tokenizer.decode(self.anchor)

    def decode(self, ids: list[int], mid_answer: bool) -> str:
        if not mid_answer:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True))
        text = self.tokenizer.decode([*self.anchor, *ids], skip_special_tokens=True)
        return str(text[len(self.anchor_text) :])

    def pieces(self) -> list[str | None]:
        """The text each id adds mid-answer; None where it adds nothing or part of a character."""
        texts = self.tokenizer.batch_decode(
            [[*self.anchor, i] for i in range(len(self.tokenizer))], skip_special_tokens=True
        )
        cut = len(self.anchor_text)
        return [t[cut:] if len(t) > cut and "\ufffd" not in t else None for t in texts]


class _TextStream:
    """Generated ids to text deltas. Holds back a trailing partial UTF-8 character (U+FFFD
    while its bytes are incomplete) and any tail that could be the start of a stop string."""

    def __init__(self, detokenizer: _Detokenizer, stops: list[str]) -> None:
        self.detokenizer = detokenizer
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0  # characters of self.text already emitted
        # Text of the first `settled_ids` ids, which ended on a whole character: only the ids
        # after them are decoded again at each step.
        self.settled, self.settled_ids = "", 0

    def update(self, ids: list[int]) -> tuple[str, bool]:
        """The new text to emit, and whether a stop string ended the answer."""
        tail = ids[self.settled_ids :]
        self.text = self.settled + self.detokenizer.decode(tail, self.settled_ids > 0)
        stable = self.text.rstrip("\ufffd")
        if stable == self.text:
            self.settled, self.settled_ids = self.text, len(ids)
        hits = [i for i in (stable.find(s, self.sent) for s in self.stops) if i >= 0]
        if hits:
            end = min(hits)
            piece = stable[self.sent : end]
            self.text, self.sent = stable[:end], end  # the stop string is never emitted
            return piece, True
        end = max(self.sent, len(stable) - self._stop_prefix(stable))
        piece, self.sent = stable[self.sent : end], end
        return piece, False

    def flush(self) -> str:
        piece, self.sent = self.text[self.sent :], len(self.text)
        return piece

    def _stop_prefix(self, text: str) -> int:
        # Length of the longest tail of `text` that begins some stop string.
        return max(
            (k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0
        )


class _JsonState(NamedTuple):
    mode: str  # see _JsonGrammar.step
    stack: str = ""  # open containers, "{" or "["
    key: bool = False  # the string being read is an object key
    left: int = 0  # hex digits left in a \\u escape
    rest: str = ""  # letters left in true/false/null
    spaces: int = 0  # whitespace run outside strings


_START = _JsonState("start")
_SPACES = " \t\n\r"
_MAX_SPACES = 20  # as llama.cpp's json.gbnf bounds whitespace: a model must not idle forever
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
_ESCAPES = '"\\/bfnrt'
_HEX = "0123456789abcdefABCDEF"
# Characters that finish each open mode most briefly (before closing the open containers).
_CLOSING = {"start": "{}", "key": '"":0', "colon": ":0", "value": "0", "sign": "0", "dot": "0"}
_CLOSING |= {"exp": "0", "expsign": "0"}
# RFC 8259 numbers, -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, as (mode, class) -> mode;
# classes: "0", "1" (any of 1-9), "e" (e or E), and the character itself otherwise.
_NUMBER = {
    ("sign", "0"): "zero",
    ("sign", "1"): "int",
    ("zero", "."): "dot",
    ("zero", "e"): "exp",
    ("int", "0"): "int",
    ("int", "1"): "int",
    ("int", "."): "dot",
    ("int", "e"): "exp",
    ("dot", "0"): "frac",
    ("dot", "1"): "frac",
    ("frac", "0"): "frac",
    ("frac", "1"): "frac",
    ("frac", "e"): "exp",
    ("exp", "+"): "expsign",
    ("exp", "-"): "expsign",
    ("exp", "0"): "expdig",
    ("exp", "1"): "expdig",
    ("expsign", "0"): "expdig",
    ("expsign", "1"): "expdig",
    ("expdig", "0"): "expdig",
    ("expdig", "1"): "expdig",
}
_NUMBER_ENDS = {"zero", "int", "frac", "expdig"}


def _char_class(c: str) -> str:
    return "1" if c in "123456789" else "e" if c in "eE" else c


class _JsonGrammar:
    """Constrains an answer to one JSON object (the root Ollama's format "json" allows).

    Each step takes the first candidate whose text keeps the answer a valid JSON prefix and
    leaves enough budget to close it, so a limited answer still ends as complete JSON: the
    budget rule relies on one-character tokens for `"`, `:`, `0`, `}` and `]`, which every
    byte-fallback vocabulary has.
    """

    def __init__(self, pieces: list[str | None]) -> None:
        self.pieces = pieces
        self.state = _START

    @property
    def complete(self) -> bool:
        return self.state.mode == "done"

    def pick(self, candidates: Iterator[int], budget: int) -> int | None:
        """The first acceptable candidate; `budget` is how many tokens may follow it."""
        for token in candidates:
            piece = self.pieces[token] if token < len(self.pieces) else None
            state = self.feed(self.state, piece) if piece else None
            if state is not None and len(self.closing(state)) <= budget:
                self.state = state
                return token
        return None

    @classmethod
    def feed(cls, state: _JsonState | None, text: str) -> _JsonState | None:
        for char in text:
            if state is None:
                return None
            state = cls.step(state, char)
        return state

    @staticmethod
    def closing(state: _JsonState) -> str:
        """The shortest text that completes the JSON value from `state`."""
        mode = state.mode
        if mode in ("string", "escape", "hex"):
            end = '"' + (":0" if state.key else "")
            head = "n" if mode == "escape" else "0" * state.left if mode == "hex" else ""
            tail = head + end
        elif mode == "literal":
            tail = state.rest
        else:
            tail = _CLOSING.get(mode, "")
        return tail + "".join("}" if c == "{" else "]" for c in reversed(state.stack))

    @classmethod
    def step(cls, s: _JsonState, c: str) -> _JsonState | None:
        """One character. Modes: start, object (after "{"), key (after "," in an object),
        colon, value, array (after "["), after (a value ended), string, escape, hex,
        literal, the number modes (sign, zero, int, dot, frac, exp, expsign, expdig), done."""
        mode = s.mode
        if mode == "string":
            if c == '"':
                return s._replace(mode="colon" if s.key else "after")
            if c == "\\":
                return s._replace(mode="escape")
            return None if ord(c) < 0x20 else s
        if mode == "escape":
            if c == "u":
                return s._replace(mode="hex", left=4)
            return s._replace(mode="string") if c in _ESCAPES else None
        if mode == "hex":
            if c not in _HEX:
                return None
            return s._replace(mode="hex" if s.left > 1 else "string", left=s.left - 1)
        if mode == "literal":
            if c != s.rest[0]:
                return None
            return s._replace(mode="literal" if len(s.rest) > 1 else "after", rest=s.rest[1:])
        if mode in ("sign", "zero", "int", "dot", "frac", "exp", "expsign", "expdig"):
            return cls._number(s, c)
        if mode == "done":
            return None
        if c in _SPACES:
            return s._replace(spaces=s.spaces + 1) if s.spaces < _MAX_SPACES else None
        s = s._replace(spaces=0)
        if mode == "start":
            return s._replace(mode="object", stack="{") if c == "{" else None
        if mode in ("object", "key"):
            if c == '"':
                return s._replace(mode="string", key=True)
            return cls._close(s) if c == "}" and mode == "object" else None
        if mode == "colon":
            return s._replace(mode="value") if c == ":" else None
        if mode == "array" and c == "]":
            return cls._close(s)
        if mode in ("value", "array"):
            return cls._value(s, c)
        # mode == "after": a separator or the bracket that closes the innermost container
        top = s.stack[-1]
        if c == ",":
            return s._replace(mode="key" if top == "{" else "value")
        return cls._close(s) if c == ("}" if top == "{" else "]") else None

    @staticmethod
    def _value(s: _JsonState, c: str) -> _JsonState | None:
        if c in "{[":
            return s._replace(mode="object" if c == "{" else "array", stack=s.stack + c)
        if c == '"':
            return s._replace(mode="string", key=False)
        if c in _LITERALS:
            return s._replace(mode="literal", rest=_LITERALS[c])
        if c == "-":
            return s._replace(mode="sign")
        nxt = _NUMBER.get(("sign", _char_class(c)))  # digits start a number as after "-"
        return s._replace(mode=nxt) if nxt else None

    @classmethod
    def _number(cls, s: _JsonState, c: str) -> _JsonState | None:
        nxt = _NUMBER.get((s.mode, _char_class(c)))
        if nxt is not None:
            return s._replace(mode=nxt)
        # A complete number ends at the first character that cannot extend it.
        return cls.step(s._replace(mode="after"), c) if s.mode in _NUMBER_ENDS else None

    @staticmethod
    def _close(s: _JsonState) -> _JsonState:
        stack = s.stack[:-1]
        return s._replace(mode="after" if stack else "done", stack=stack)
