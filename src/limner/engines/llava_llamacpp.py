"""LLaVA / BakLLaVA chat on llama.cpp: a GGUF text model and its `mmproj` projector.

The folder holds `model.gguf` and `mmproj.gguf` (Ollama's model and projector layers) and,
when the model has a template layer, `chat_template.jinja` (a Go or Jinja template). Pictures
go through libmtmd (llama-cpp-python's `mtmd_cpp`): the prompt is tokenized with one media
marker per picture, each picture is encoded by the projector and decoded into the KV cache,
then tokens are sampled with llama.cpp's own sampler chain through `Llama.generate`, the
same path raw llama-cpp-python takes, so limner adds nothing per token:

    engine = load(Path("bakllava"), LoadOptions(num_ctx=4096))
    for step in engine.chat([Message("user", "What is this?", [png])], Options(), lambda: False):
        print(step)

The window (`n_ctx`) is fixed when the model loads, rounded up to a multiple of 256 as
llama.cpp pads it; a request may ask for a smaller `num_ctx`, which is enforced here without
reloading. A prompt that does not fit is refused with both numbers, never cut silently.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import itertools
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd
import llguidance.llamacpp
from llama_cpp._logger import llama_log_callback
from llama_cpp.llama import LogitsProcessorList
from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

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
from limner.engines.structured import SchemaMatcher, compile_schema
from limner.engines.templates import (
    LLAVA_15,
    Turn,
    go_problem,
    is_go_template,
    render_go,
    render_jinja,
)
from limner.errors import InvalidImage, InvalidRequest

CTX_STEP = 256  # llama.cpp pads n_ctx to this; llama-cpp-python breaks if it is not a multiple
DEFAULT_CTX = 4096  # when neither the request nor the model's parameters set num_ctx
KV_BYTES = 2  # f16 keys and values
# On CPUs with AMX the first repacked buffer is AMX's, whose matmul segfaults on any prompt
# longer than one token, at every width (ldtilecfg on a tile config the compiler dropped:
# llama.cpp #20824, fix in PR #26954). Builds that compiled it say so in their system info.
# limner takes AMX out of the CPU's list of extra buffer types and keeps the others (the
# repacked Q4_0/Q8_0 kernels: 1.28x decode, 1.44x prefill measured); failing that, it loads
# without repacking at all.
AMX = "AMX_INT8 = 1"
MARKER = mtmd.mtmd_default_marker().decode()  # where libmtmd puts a picture in the prompt text
# What a family's Jinja template writes where a picture goes, by projector type, when it is
# not "<image>"; libmtmd adds the family's own begin/end tokens around the picture itself.
QWEN_PICTURE = "<|vision_start|><|image_pad|><|vision_end|>"
PICTURE_TEXT = {
    "gemma3": "<start_of_image>",
    "qwen2vl_merger": QWEN_PICTURE,
    "qwen2.5vl_merger": QWEN_PICTURE,
    "pixtral": "[IMG]",  # libmtmd adds [IMG_BREAK] and [IMG_END] itself
    "minicpmv4_6": "<|image_pad|>",  # libmtmd adds <image>, </image> and the <slice>s itself
}


def load(folder: Path, options: LoadOptions) -> LlavaLlamaCpp:
    """Load `model.gguf` and `mmproj.gguf` in `folder` with a window of `options.num_ctx`."""
    return LlavaLlamaCpp(Path(folder), options.num_ctx)


def round_ctx(num_ctx: int) -> int:
    """The window llama.cpp really allocates for `num_ctx` tokens."""
    return max(CTX_STEP, -(-num_ctx // CTX_STEP) * CTX_STEP)


def threads() -> int:
    """Every core this process may run on: decoding is bound by memory bandwidth, which one
    thread per core saturates (llama-cpp-python's default, half the cores, leaves it unused)."""
    return len(os.sched_getaffinity(0))


class LlavaLlamaCpp:
    """A loaded GGUF vision model: `chat()` streams one answer at a time."""

    def __init__(self, folder: Path, num_ctx: int) -> None:
        model_path, projector = folder / "model.gguf", folder / "mmproj.gguf"
        if not model_path.is_file():
            raise InvalidRequest("the model has no GGUF weights layer")
        if not projector.is_file():
            _refuse_inner_vision(model_path)
        # Every layer goes to the GPU when llama.cpp was built with one (CUDA, Metal).
        self.on_gpu = bool(llama_cpp.llama_supports_gpu_offload())
        with _repacking(_may_repack()):
            self.llama = llama_cpp.Llama(
                model_path=str(model_path),
                n_ctx=round_ctx(num_ctx or DEFAULT_CTX),
                n_threads=threads(),
                n_threads_batch=threads(),
                n_gpu_layers=-1 if self.on_gpu else 0,
                verbose=False,
            )
        self.n_ctx = self.llama.n_ctx()
        meta = self.llama.metadata
        arch = meta.get("general.architecture", "llama")
        self.context_length = int(meta.get(f"{arch}.context_length", self.n_ctx))
        self.vision = _Vision(projector, self.llama) if projector.is_file() else None
        self.template = _template_source(folder, meta)
        self.bos = self.llama.detokenize([self.llama.token_bos()], special=True).decode()
        self.eos = self.llama.detokenize([self.llama.token_eos()], special=True).decode()
        self.kv_bytes = _kv_bytes(meta, arch, self.n_ctx)
        self.weight_bytes = sum(p.stat().st_size for p in (model_path, projector) if p.is_file())
        self._json: LlamaGrammar | None = None
        self._schema: tuple[str, str] | None = None  # the last schema and its grammar
        self.cached: list[Any] = []  # the KV cache's contents, one key per position
        # A recurrent state (Gated DeltaNet, Mamba) cannot be cut back to a shorter prompt:
        # copies of it at the ends of the last prompt are what a follow-up restarts from.
        kinds = (llama_cpp.llama_model_is_recurrent, llama_cpp.llama_model_is_hybrid)
        recurrent = any(is_kind(self.llama.model) for is_kind in kinds)
        self.checkpoints = _Checkpoints(self.llama) if recurrent else None
        self.answer = ("", "")  # the last answer as shown, and as its tokens spell it

    def memory_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes

    def chat(
        self, messages: list[Message], options: Options, cancelled: Callable[[], bool]
    ) -> Iterator[ChatStep]:
        """Stream the assistant's answer to `messages`, then one `Done`."""
        started = time.perf_counter_ns()
        window = self._window(options)
        with _Pictures(self.vision, messages) as pictures:
            # The oldest turns go if the chat does not fit, keeping room for num_predict.
            measure = functools.partial(self._count, pictures=pictures, tools=options.tools)
            fitted = fit(messages, measure, window, reserve=max(options.num_predict, 0))
            prompt = self._tokenize(fitted.messages, pictures, options.tools)
        count, image_tokens = prompt.count()
        limit = window - count
        if options.num_predict >= 0:
            limit = min(limit, options.num_predict)
        if limit == 0 or cancelled():
            prompt.free()
            now = time.perf_counter_ns()
            yield Done("length" if limit == 0 else "stop", count, 0, image_tokens, now - started)
            return
        try:
            reused = self._prefill(prompt)
        finally:
            prompt.free()
        prefilled = time.perf_counter_ns()

        text = _StopText(options.stop)
        generated = 0
        reason = "stop"
        shown, spoken = [], bytearray()
        for token in self._tokens(options):
            if llama_cpp.llama_vocab_is_eog(self.llama._model.vocab, token):
                break
            generated += 1
            raw = self.llama.detokenize([token])
            spoken += raw
            # SentencePiece marks a word start with a space; an answer's first one is not text.
            piece, hit_stop = text.push(raw[1:] if generated == 1 and raw[:1] == b" " else raw)
            if piece:
                shown.append(piece)
                yield Piece(piece)
            if hit_stop:
                break
            if generated >= limit:
                reason = "length"
                break
            if cancelled():
                break
        # What the KV cache now holds: the prompt, then the answer's evaluated tokens (which
        # llama-cpp-python records by position, from where the prompt's positions end).
        answered = self.llama.input_ids[prompt.n_pos : self.llama.n_tokens].tolist()
        self.cached = prompt.keys + answered
        rest = text.flush()
        if rest:
            shown.append(rest)
            yield Piece(rest)
        self.answer = ("".join(shown), spoken.decode(errors="replace"))
        yield Done(
            reason,
            count - reused,
            generated,
            image_tokens,
            prompt_eval_duration=prefilled - started,
            eval_duration=time.perf_counter_ns() - prefilled,
            truncated=fitted.truncated(),
            prompt_cached_count=reused,
        )

    # --- the prompt ---

    def _window(self, options: Options) -> int:
        schema_of(options)  # a 400 for a format that is neither JSON nor a schema
        if options.num_ctx < 0:
            raise InvalidRequest(
                f"num_ctx must be 0 (the model's own) or positive, not {options.num_ctx}"
            )
        if options.num_ctx > self.n_ctx:
            # The scheduler reloads for a larger window; reaching here means it could not.
            raise InvalidRequest(
                f"num_ctx {options.num_ctx} is larger than the loaded window of {self.n_ctx}"
            )
        return options.num_ctx or self.n_ctx

    @functools.cached_property
    def tool_tag(self) -> str:
        """What this model's template writes before a tool call (tool_calls.tag_of)."""
        return tool_calls.tag_of(self._render)

    def _render(self, messages: list[Message], tools: Sequence[Tool] = ()) -> str:
        if not messages:
            raise InvalidRequest("a chat needs at least one message")
        turns = []
        for message in messages:
            if MARKER in message.content:
                raise InvalidRequest(
                    f"message text may not contain {MARKER!r}; attach pictures through "
                    "the message's images instead"
                )
            if message.images and self.vision is None:
                raise InvalidRequest("this model has no projector, so it cannot see pictures")
            content = message.content
            if message.role == "assistant" and content and self.answer == (content, f" {content}"):
                # The last answer comes back without the space its first token carried: give
                # it back, so the prompt tokenizes as the cache holds it and the turn is reused.
                content = f" {content}"
            turns.append(Turn(message.role, content, len(message.images),
                              message.tool_calls, message.tool_name))  # fmt: skip
        kind, source = self.template
        if kind == "go":
            return render_go(source, turns, MARKER + "\n", tools)
        if self.vision is not None and not self._reads_parts:
            # The template reads a message's content as one string, so it has no place for a
            # picture (MiniCPM-V 2.6's, as its GGUF carries it): each picture goes before the
            # text with a newline, where Go templates and MiniCPM-V's own chat() put it.
            turns = [
                dataclasses.replace(t, content=(MARKER + "\n") * t.pictures + t.content, pictures=0)
                for t in turns
            ]
            return render_jinja(source, turns, MARKER, MARKER, self.bos, self.eos, tools, False)
        sees = self.vision is not None
        picture = self.vision.picture_text if self.vision is not None else "<image>"
        return render_jinja(source, turns, picture, MARKER, self.bos, self.eos, tools, sees)

    @functools.cached_property
    def _reads_parts(self) -> bool:
        """Whether the Jinja template reads a message's content as parts and writes a picture
        part; one that reads it as a string fails on parts, or writes them as a list."""
        _, source = self.template
        picture = self.vision.picture_text if self.vision is not None else "<image>"
        probe = [Turn("user", "", 1)]
        try:
            text = render_jinja(source, probe, picture, MARKER, self.bos, self.eos)
        except InvalidRequest:
            return False
        return MARKER in text

    def _count(self, messages: list[Message], pictures: _Pictures, tools: Sequence[Tool]) -> int:
        prompt = self._tokenize(messages, pictures, tools)
        prompt.free()
        return prompt.count()[0]

    def _tokenize(
        self, messages: list[Message], pictures: _Pictures, tools: Sequence[Tool] = ()
    ) -> _Prompt:
        text = self._render(messages, tools)
        # BOS is added by the tokenizer unless the template already wrote it.
        add_bos = not (self.bos and text.startswith(self.bos))
        if self.vision is None:
            ids = self.llama.tokenize(text.encode(), add_bos=add_bos, special=True)
            return _Prompt(None, ids)
        return self.vision.tokenize(text, pictures.of(messages), add_bos)

    def _prefill(self, prompt: _Prompt) -> int:
        """Decode what the KV cache does not hold yet; returns how many tokens were reused.

        The cache keeps the last conversation: its tokens, and each picture as its digest, so
        a follow-up about the same picture decodes only the new turn. One token is always
        decoded again, since sampling needs its logits.
        """
        keys = prompt.keys
        same = 0
        for old, new in zip(self.cached, keys, strict=False):
            if old != new:
                break
            same += 1
        reuse = prompt.boundary(min(same, len(keys) - 1))  # never inside a picture
        if self.checkpoints is not None:
            reuse = self.checkpoints.rewind(reuse, len(self.cached))
        self.cached = []  # until the new state is complete
        llama = self.llama
        # llama-cpp-python's n_tokens is the next position, and the cache is cut by position.
        llama.n_tokens = prompt.position(reuse)
        llama._ctx.kv_cache_seq_rm(-1, llama.n_tokens, -1)
        if self.checkpoints is None:
            self._decode(prompt, reuse, len(keys))
            return reuse
        # The recurrent state is kept before and after the prompt's last token: the same
        # prompt again restarts from the first, a follow-up from the second.
        start, last = reuse, len(keys) - 1
        if start < last and prompt.boundary(last) == last:
            self._decode(prompt, start, last)
            self.checkpoints.save(last)
            start = last
        self._decode(prompt, start, len(keys))
        self.checkpoints.save(len(keys))
        return reuse

    def _decode(self, prompt: _Prompt, start: int, stop: int) -> None:
        """Decode the prompt's tokens from `start` to `stop` into the KV cache."""
        if self.vision is None:
            self.llama.eval(prompt.keys[start:stop])
        else:
            self.vision.eval(prompt, self.llama, start, stop)

    # --- decoding ---

    def _tokens(self, options: Options) -> Iterator[int]:
        llama = self.llama
        llama.set_seed(options.seed if options.seed >= 0 else random.getrandbits(31))
        llama.last_n_tokens_size = (
            self.n_ctx if options.repeat_last_n < 0 else options.repeat_last_n
        )
        schema = self._schema_matcher(options)
        # The prompt is already decoded: generate() finds it cached and samples at once.
        prompt = llama._input_ids.tolist()
        tokens = llama.generate(
            prompt,
            top_k=options.top_k,
            top_p=options.top_p,
            min_p=options.min_p,
            temp=max(options.temperature, 0.0),
            repeat_penalty=options.repeat_penalty,
            grammar=self._json_grammar() if options.format == "json" else None,
            logits_processor=LogitsProcessorList([schema.restrict_numpy]) if schema else None,
        )
        for token in tokens:
            if schema is not None and not schema.done:
                schema.consume(token)  # before generate() asks for the next token's mask
            yield token

    def _json_grammar(self) -> LlamaGrammar:
        """llama.cpp's grammar of one JSON object, Ollama's format "json"."""
        if self._json is None:
            self._json = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        return self._json

    def _schema_matcher(self, options: Options) -> SchemaMatcher | None:
        """llguidance's matcher for the request's JSON schema (compiled once per schema)."""
        schema = schema_of(options)
        if schema is None:
            return None
        if self._schema is None or self._schema[0] != schema:
            self._schema = (schema, compile_schema(self._llg_tokenizer, schema))
        return SchemaMatcher(self._llg_tokenizer, self._schema[1])

    @functools.cached_property
    def _llg_tokenizer(self) -> Any:
        """llguidance's view of the vocabulary (about a second for a real one): once."""
        vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        with warnings.catch_warnings():  # it reads each token with a call llama.cpp renamed
            warnings.simplefilter("ignore", DeprecationWarning)
            return llguidance.llamacpp.lltokenizer_from_vocab(vocab)


class _Vision:
    """The projector (libmtmd context) bound to the text model."""

    def __init__(self, projector: Path, llama: llama_cpp.Llama) -> None:
        # libmtmd logs every picture at info level; route it through llama.cpp's quiet logger.
        for log_set in (mtmd.mtmd_log_set, mtmd.mtmd_helper_log_set):
            log_set(llama_log_callback, ctypes.c_void_p(0))
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = bool(llama_cpp.llama_supports_gpu_offload())
        params.print_timings = False
        params.n_threads = threads()
        self.ctx = mtmd.mtmd_init_from_file(str(projector).encode(), llama.model, params)
        if not self.ctx:
            raise InvalidRequest("the projector layer could not be loaded by llama.cpp")
        llama._stack.callback(mtmd.mtmd_free, self.ctx)  # freed before the model it points to
        self.picture_text = PICTURE_TEXT.get(_projector_type(projector), "<image>")

    def bitmap(self, data: bytes, number: int) -> Any:
        """A decoded picture, named by its digest (the id its chunk carries)."""
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self.ctx, buffer, len(data), False)
        if not bitmap:
            raise InvalidImage(
                f"picture {number} is not a PNG, JPEG or WebP file llama.cpp can read"
            )
        mtmd.mtmd_bitmap_set_id(bitmap, hashlib.sha256(data).hexdigest().encode())
        return bitmap

    def tokenize(self, text: str, bitmaps: list[Any], add_bos: bool) -> _Prompt:
        prompt = _Prompt(mtmd.mtmd_input_chunks_init())
        try:
            source = mtmd.mtmd_input_text()
            encoded = text.encode()
            source.text, source.text_len = encoded, len(encoded)
            source.add_special, source.parse_special = add_bos, True
            array = (mtmd.mtmd_bitmap_p_ctypes * max(len(bitmaps), 1))(*bitmaps)
            result = mtmd.mtmd_tokenize(
                self.ctx, prompt.handle, ctypes.byref(source), array, len(bitmaps)
            )
            if result != 0:
                raise InvalidRequest(
                    f"the prompt and its {len(bitmaps)} picture(s) do not match (mtmd error {result})"
                )
            prompt.read_keys()
        except BaseException:
            prompt.free()
            raise
        return prompt

    def eval(self, prompt: _Prompt, llama: llama_cpp.Llama, start: int, stop: int) -> None:
        """Decode the tokens from `start` to `stop` (never inside a picture): text through
        `Llama.eval` (which keeps its own record of the ids), pictures through libmtmd."""
        chunks = list(prompt)
        for i, (chunk, begin, end) in enumerate(
            zip(chunks, prompt.starts, prompt.starts[1:], strict=False)
        ):
            if end <= start or begin >= stop:
                continue
            last = i == len(chunks) - 1 and stop >= end
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                llama.eval(prompt.keys[max(begin, start) : min(end, stop)])
                continue
            n_past = llama_cpp.llama_pos(0)
            result = mtmd.mtmd_helper_eval_chunk_single(
                self.ctx, llama._ctx.ctx, chunk, llama_cpp.llama_pos(llama.n_tokens),
                llama_cpp.llama_seq_id(0), llama.n_batch, last, ctypes.byref(n_past),
            )  # fmt: skip
            if result != 0:
                raise InvalidImage(f"a picture could not be encoded (mtmd error {result})")
            # Picture positions hold no token id; -1 never matches a real one.
            llama.input_ids[llama.n_tokens : n_past.value] = -1
            llama.n_tokens = n_past.value
            llama._requires_eval = not last  # the last chunk's logits are live


class _Checkpoints:
    """Copies of the recurrent part of a hybrid (or recurrent) model's memory at a few prompt
    lengths: llama.cpp cannot cut such a state back, so a prompt that shares only a prefix
    with the cache restarts from the longest copy within that prefix, and the attention part
    of the cache is cut there as usual. Each copy holds only the recurrent state (about 20 MB
    for Qwen3.5-0.8B, MiniCPM-V 4.6's), never the KV cache."""

    KEEP = 3  # the last prompt's two, and the one it restarted from
    FLAGS = llama_cpp.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY

    def __init__(self, llama: llama_cpp.Llama) -> None:
        self.llama = llama
        self.saved: dict[int, bytes] = {}  # tokens of the prompt -> the state after them

    def rewind(self, reuse: int, cached: int) -> int:
        """Where to go on from, at most `reuse` tokens in: the state's own end when nothing
        after `reuse` was decoded, else the longest copy within `reuse` (restored), else
        nothing (the memory is cleared). Copies past `reuse` describe another prompt."""
        self.saved = {n: state for n, state in self.saved.items() if n <= reuse}
        if reuse >= cached:
            return reuse
        if not self.saved:
            self.llama._ctx.kv_cache_seq_rm(-1, 0, -1)  # the whole state goes
            return 0
        tokens = max(self.saved)
        state = self.saved[tokens]
        data = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        ctx = self.llama._ctx.ctx
        if not llama_cpp.llama_state_seq_set_data_ext(ctx, data, len(state), 0, self.FLAGS):
            self.saved.clear()
            self.llama._ctx.kv_cache_seq_rm(-1, 0, -1)
            return 0
        return tokens

    def save(self, tokens: int) -> None:
        """Copy the recurrent state as it stands after the prompt's first `tokens` tokens."""
        ctx = self.llama._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size_ext(ctx, 0, self.FLAGS)
        data = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data_ext(ctx, data, size, 0, self.FLAGS) != size:
            return
        self.saved[tokens] = bytes(data)
        for old in sorted(self.saved)[: -self.KEEP]:
            del self.saved[old]


class _Pictures:
    """Every picture of a chat decoded once (trying which turns fit tokenizes many times)."""

    def __init__(self, vision: _Vision | None, messages: list[Message]) -> None:
        self.bitmaps: dict[int, list[Any]] = {}
        self.vision, self.messages = vision, messages

    def __enter__(self) -> _Pictures:
        if self.vision is not None:
            number = itertools.count(1)
            for message in self.messages:
                self.bitmaps[id(message)] = [
                    self.vision.bitmap(data, next(number)) for data in message.images
                ]
        return self

    def __exit__(self, *exc: object) -> None:
        for bitmaps in self.bitmaps.values():
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)

    def of(self, messages: list[Message]) -> list[Any]:
        return [b for message in messages for b in self.bitmaps.get(id(message), [])]


class _Prompt:
    """A tokenized prompt: libmtmd chunks (text and pictures), or plain ids for text models.

    `keys` has one entry per token: the token id for text, and `(digest, i)` for the i-th
    token of a picture, so two prompts can be compared token by token. Tokens are what the
    prompt costs (KV cache cells, `prompt_eval_count`); positions are where llama.cpp puts
    them, and differ past a picture for M-RoPE models (Qwen-VL), where a picture of h x w
    tokens spans max(h, w) positions.
    """

    def __init__(self, handle: Any, ids: list[int] | None = None) -> None:
        self.handle = handle
        self.keys: list[Any] = list(ids or [])
        self.starts = [0, len(self.keys)]  # the token where each chunk begins, then the end
        self.positions = [0, len(self.keys)]  # the position where each chunk begins, then the end
        self.image_tokens = 0

    def __iter__(self) -> Iterator[Any]:
        if self.handle is not None:
            for i in range(int(mtmd.mtmd_input_chunks_size(self.handle))):
                yield mtmd.mtmd_input_chunks_get(self.handle, i)

    def read_keys(self) -> None:
        self.keys, self.starts, self.positions = [], [0], [0]
        for chunk in self:
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                self.keys.extend(ids[j] for j in range(count.value))
                spans = count.value
            else:
                size = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
                digest = mtmd.mtmd_input_chunk_get_id(chunk)
                self.keys.extend((digest, j) for j in range(size))
                self.image_tokens += size
                spans = int(mtmd.mtmd_input_chunk_get_n_pos(chunk))
            self.starts.append(len(self.keys))
            self.positions.append(self.positions[-1] + spans)

    @property
    def n_pos(self) -> int:
        """The position after the prompt's last token."""
        return self.positions[-1]

    def position(self, token: int) -> int:
        """The position of the `token`-th token: a chunk's start, or a token inside text."""
        for begin, end, at in zip(self.starts, self.starts[1:], self.positions, strict=False):
            if begin <= token < end:
                return at + token - begin  # a picture is only ever entered at its start
        return self.n_pos

    def count(self) -> tuple[int, int]:
        """Tokens in the prompt, and how many of them are pictures."""
        return len(self.keys), self.image_tokens

    def boundary(self, position: int) -> int:
        """`position`, moved back to the start of the picture it falls inside, if any."""
        for begin, end in itertools.pairwise(self.starts):
            if begin < position < end and isinstance(self.keys[begin], tuple):
                return begin
        return position

    def free(self) -> None:
        if self.handle is not None:
            mtmd.mtmd_input_chunks_free(self.handle)
            self.handle = None


class _StopText:
    """Generated bytes to text deltas: holds back a partial UTF-8 character and any tail that
    could be the start of a stop string; a stop string is never emitted."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.held = ""

    def push(self, data: bytes) -> tuple[str, bool]:
        self.held += self.decoder.decode(data)
        hits = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if hits:
            piece, self.held = self.held[: min(hits)], ""
            return piece, True
        keep = max((_overlap(self.held, s) for s in self.stops), default=0)
        piece, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return piece, False

    def flush(self) -> str:
        rest, self.held = self.held + self.decoder.decode(b"", final=True), ""
        return rest


def _overlap(text: str, stop: str) -> int:
    """The longest tail of `text` that is a proper prefix of `stop`."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0


def _may_repack() -> bool:
    """Whether llama.cpp may load the weights into its repacked (extra) CPU buffers."""
    if AMX not in llama_cpp.llama_print_system_info().decode(errors="replace"):
        return True
    try:
        return _drop_amx_buffer()
    except (AttributeError, OSError, ValueError):  # another llama.cpp: play safe
        return False


def _drop_amx_buffer() -> bool:
    """Remove the AMX buffer type from the CPU device's null-terminated list of extra buffer
    types (ggml keeps it in a static array that every model load reads); True when no AMX
    entry is left in it."""
    from llama_cpp._ggml import libggml

    functions = {
        "ggml_backend_dev_by_type": ([ctypes.c_int], ctypes.c_void_p),
        "ggml_backend_dev_backend_reg": ([ctypes.c_void_p], ctypes.c_void_p),
        "ggml_backend_reg_get_proc_address": ([ctypes.c_void_p, ctypes.c_char_p], ctypes.c_void_p),
        "ggml_backend_buft_name": ([ctypes.c_void_p], ctypes.c_char_p),
    }
    for name, (argtypes, restype) in functions.items():
        getattr(libggml, name).argtypes, getattr(libggml, name).restype = argtypes, restype
    cpu = libggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    address = libggml.ggml_backend_reg_get_proc_address(
        libggml.ggml_backend_dev_backend_reg(cpu), b"ggml_backend_dev_get_extra_bufts"
    )
    if not cpu or not address:
        return False
    get_list = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)
    types = get_list(cpu)
    present = list(itertools.takewhile(bool, (types[i] for i in itertools.count())))
    kept = [t for t in present if libggml.ggml_backend_buft_name(t) != b"AMX"]
    for i in range(len(present)):
        types[i] = kept[i] if i < len(kept) else None
    return all(libggml.ggml_backend_buft_name(t) != b"AMX" for t in kept)


@contextlib.contextmanager
def _repacking(enabled: bool) -> Iterator[None]:
    """Load with or without repacked weights; llama-cpp-python has no argument for it."""
    if enabled:
        yield
        return
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def without_repacking() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_cpp.llama_model_default_params = without_repacking
    try:
        yield
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = defaults


def _refuse_inner_vision(model_path: Path) -> None:
    """Ollama's own engine stores some vision models (Gemma 3, Qwen2.5-VL, Mistral Small 3.1,
    Llama 3.2 Vision) as one GGUF with the vision tower inside; llama.cpp loads the text model
    and the projector as two files, so such a file is refused before llama.cpp tries."""
    from limner.store.gguf import gguf_info

    info = gguf_info(model_path)
    arch = info.get("general.architecture", "")
    if any(key.startswith(f"{arch}.vision.") for key in info):
        raise InvalidRequest(
            f"this {arch} GGUF holds its vision tower inside the text model, the layout of "
            "Ollama's own engine, which llama.cpp cannot load; pull the two-file llama.cpp "
            f"layout from the Hugging Face Hub instead (hf.co/ggml-org/{arch}-...-GGUF, with "
            "its mmproj file)"
        )


def _projector_type(projector: Path) -> str:
    from limner.store.gguf import gguf_info

    return str(gguf_info(projector).get("clip.projector_type", "mlp"))


def _template_source(folder: Path, meta: dict[str, str]) -> tuple[str, str]:
    """("go" | "jinja", template): the template layer, the GGUF's own, or LLaVA-1.5's. A Go
    template this engine cannot render gives way to the next; if none is left it is a 400."""
    layer = folder / "chat_template.jinja"
    candidates = [layer.read_text(encoding="utf-8")] if layer.is_file() else []
    candidates.append(meta.get("tokenizer.chat_template", ""))
    problems = []
    for text in candidates:
        if not text:
            continue
        if not is_go_template(text):
            return "jinja", text
        problem = go_problem(text)
        if problem is None:
            return "go", text
        problems.append(problem)
    if problems:
        raise InvalidRequest(f"the model's template cannot be rendered: {problems[0]}")
    return "go", LLAVA_15


def _kv_bytes(meta: dict[str, str], arch: str, n_ctx: int) -> int:
    """Keys and values for `n_ctx` tokens: layers x kv heads x head width x 2 x f16."""
    layers = int(meta.get(f"{arch}.block_count", 0))
    width = int(meta.get(f"{arch}.embedding_length", 0))
    heads = int(meta.get(f"{arch}.attention.head_count", 1)) or 1
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(meta.get(f"{arch}.attention.key_length", width // heads))
    return layers * kv_heads * head_dim * 2 * KV_BYTES * n_ctx
