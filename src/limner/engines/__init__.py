"""The engine seam: what every engine receives and yields, and the table that picks one.

Engines know nothing about HTTP or the store layout. They receive a folder holding the
model's files under their relative names, and yield typed steps. Heavy libraries (torch,
transformers, llama_cpp, diffusers) are imported only inside the engine modules, which are
imported only inside a runner process.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from limner.engines.drawing import SCHEDULERS as SCHEDULERS
from limner.engines.drawing import ImageRequest as ImageRequest
from limner.errors import InvalidRequest, RequestCanceled

if TYPE_CHECKING:
    from limner.engines.training import Example, TrainRequest, TrainStep


class _PillowProcessorsMeant(logging.Filter):
    """transformers warns, once per processor class, that torchvision is missing and that it
    uses its Pillow processors instead: what limner means (torchvision is no dependency of
    it), so a runner's log keeps to what needs reading."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_PillowProcessorsMeant())


@dataclass(frozen=True)
class Tool:
    """A function the model may call (`tools[].function` of Ollama's and OpenAI's APIs)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # a JSON schema of its arguments

    def wire(self) -> dict[str, Any]:
        """As the APIs and the models' templates write it."""
        function = {"name": self.name, "description": self.description,
                    "parameters": self.parameters}  # fmt: skip
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for: which function, with which arguments (a JSON object)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass
class Message:
    """One chat turn; `images` are encoded picture files (PNG, JPEG, WebP). An assistant
    turn may hold the tool calls it made, and a `tool` turn the name of the tool answering."""

    role: str
    content: str = ""
    images: list[bytes] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_name: str = ""


@dataclass
class Options:
    """What one request asks of a chat model: Ollama's runtime options with Ollama's
    defaults (api/types.go DefaultOptions)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    seed: int = -1  # -1: random
    num_predict: int = -1  # -1: until a stop, the end-of-sequence token or the window
    stop: list[str] = field(default_factory=list)
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    num_ctx: int = 0  # 0: the whole window the model loaded with
    format: str = ""  # "", "json", or a JSON schema as its JSON text
    tools: list[Tool] = field(default_factory=list)  # from the request's `tools`, not options

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Options:
        """Options from merged request values; unknown keys are ignored, as Ollama does."""
        return _from_dict(cls, values)


@dataclass
class LoadOptions:
    """What a model loads with, fixed for its runner's life: the window to allocate, the
    precision of a drawing model and how strongly its LoRAs apply."""

    num_ctx: int = 0  # 0: the model's own context length
    precision: str = ""  # diffusion: "" picks bf16 where the CPU has it (or CUDA), else fp32
    adapter_scale: float = 1.0  # diffusion: how strongly the model's LoRAs apply
    # diffusion: each LoRA's weight by file name when several are stacked (default 1)
    adapter_weights: dict[str, float] = field(default_factory=dict)
    cache: str = ""  # a folder of the store where the model may keep what it derives once

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoadOptions:
        """Load options from a model's parameters; sampling options are ignored here."""
        return _from_dict(cls, values)


def check_parameters(values: dict[str, Any]) -> Options:
    """Stored parameters and request options may hold both kinds of option: 400 if either
    is wrong, else the sampling half."""
    LoadOptions.from_dict(values)
    return Options.from_dict(values)


Settings = TypeVar("Settings", Options, LoadOptions)


NOT_OPTIONS = frozenset({"tools", "cache"})  # set by the server, never from `options`


def _from_dict(cls: type[Settings], values: dict[str, Any]) -> Settings:
    known = {f.name for f in fields(cls)} - NOT_OPTIONS
    opts = cls()
    for key, value in values.items():
        if key not in known or value is None:
            continue
        setattr(opts, key, _coerce(key, value, type(getattr(opts, key))))
    for key, (low, high) in RANGES.items():
        if key in known and not low <= getattr(opts, key) <= high:
            raise InvalidRequest(f'option "{key}" must be between {low} and {high}')
    if opts.num_ctx and opts.num_ctx < 4:
        raise InvalidRequest('option "num_ctx" must be 0 (the model\'s own) or at least 4')
    return opts


INT32 = 2**31 - 1
# What each numeric option may be; -1 is the only sentinel (num_predict: until a stop,
# repeat_last_n: the whole window, seed: random). Wider values are refused, not clamped.
RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0, 100), "top_k": (0, INT32), "top_p": (0, 1), "min_p": (0, 1),
    "seed": (-(2**63), 2**64 - 1), "num_predict": (-1, INT32), "repeat_penalty": (0, 100),
    "repeat_last_n": (-1, INT32), "num_ctx": (0, 2**24), "adapter_scale": (-100, 100),
}  # fmt: skip


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is dict:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and _finite(v) for k, v in value.items()
        ):
            raise InvalidRequest(f'option "{key}" must be an object of numbers')
        return {k: float(v) for k, v in value.items()}
    if kind is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise InvalidRequest(f'option "{key}" must be of type array')
        return items
    if kind is str:
        if not isinstance(value, str):
            raise InvalidRequest(f'option "{key}" must be of type string')
        return value
    name = "integer" if kind is int else "float32"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f'option "{key}" must be of type {name}')
    if not _finite(value) or (kind is int and isinstance(value, float) and value % 1):
        raise InvalidRequest(f'option "{key}" must be a finite {name}')  # NaN, 1e400, 1.5
    return int(value) if kind is int else float(value)


def _finite(value: Any) -> bool:
    """A JSON number that fits 64 bits: not a bool, NaN, Infinity or 10**400."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**64) < value < 2**64
    return isinstance(value, float) and math.isfinite(value)


def schema_of(options: Options) -> str | None:
    """The JSON schema a request's answer must follow (as JSON text), or None for none or
    any JSON; a 400 for any other format. An object
    that lists its properties admits no others unless it says so (`additionalProperties`),
    as llama.cpp's grammars read schemas: what the client asked for, and nothing else."""
    if options.format in ("", "json"):
        return None
    if not options.format.startswith("{"):
        raise InvalidRequest(f'format must be "", "json" or a JSON schema, not {options.format!r}')
    try:
        schema = json.loads(options.format)
    except ValueError:
        raise InvalidRequest("format: the JSON schema is not valid JSON") from None
    return json.dumps(_closed(schema), separators=(",", ":"))


def _closed(node: Any) -> Any:
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    closed = {key: _closed(value) for key, value in node.items()}
    if "properties" in closed and "additionalProperties" not in closed:
        closed["additionalProperties"] = False
    return closed


@dataclass
class Piece:
    """A piece of generated text (may be empty while a multi-byte character is pending)."""

    text: str


@dataclass
class Done:
    """The end of a chat: counts and durations in nanoseconds."""

    done_reason: str  # "stop" | "length"
    prompt_eval_count: int
    eval_count: int
    image_tokens: int = 0
    prompt_eval_duration: int = 0
    eval_duration: int = 0
    truncated: dict[str, int] | None = None  # {"messages", "images"} dropped to fit the window
    prompt_cached_count: int = 0  # prompt tokens reused from the cache (not in prompt_eval_count)


@dataclass
class Called:
    """Tool calls the model made, read out of its text (the text itself is not sent)."""

    calls: list[ToolCall]


ChatStep = Piece | Called | Done


@dataclass
class Progress:
    """One denoising step done, of `total` (which can differ from `steps`: see img2img)."""

    completed: int
    total: int
    preview: bytes | None = None  # PNG of the work so far, when the request asks for previews


@dataclass
class ImageResult:
    """The finished picture: PNG bytes with its parameters in text chunks, and those parameters."""

    png: bytes
    parameters: dict[str, Any]


ImageStep = Progress | ImageResult


@dataclass
class Embedded:
    """The vectors of a batch of inputs as the model pools them (not normalised: the server
    does that where the API asks), and how many tokens they took."""

    vectors: list[list[float]]
    prompt_eval_count: int


EmbedStep = Embedded


def embed_each(
    inputs: list[str], cancelled: Callable[[], bool], one: Callable[[str], tuple[list[float], int]]
) -> Embedded:
    """Every input through `one` (its pooled vector and how many tokens it took), in order,
    stopping between inputs once `cancelled()`."""
    vectors, count = [], 0
    for text in inputs:
        if cancelled():
            raise RequestCanceled("request canceled")
        vector, tokens = one(text)
        vectors.append(vector)
        count += tokens
    return Embedded(vectors, count)


class EmbedEngine(Protocol):
    """A loaded embedding model. An input longer than `num_ctx` tokens is cut to fit when
    `truncate` is set, else refused."""

    def embed(
        self, inputs: list[str], truncate: bool, num_ctx: int, cancelled: Callable[[], bool]
    ) -> Iterator[EmbedStep]: ...

    def memory_bytes(self) -> int: ...


class ImageEngine(Protocol):
    """A loaded diffusion model. `cancelled()` is polled after every denoising step; once
    `finish()` is true the remaining steps are skipped and the picture so far is decoded."""

    def generate_image(
        self,
        request: ImageRequest,
        cancelled: Callable[[], bool],
        finish: Callable[[], bool] = lambda: False,
    ) -> Iterator[ImageStep]: ...

    def memory_bytes(self) -> int: ...


class ChatEngine(Protocol):
    """A loaded vision chat model. `cancelled()` is polled between tokens."""

    def chat(
        self, messages: list[Message], options: Options, cancelled: Callable[[], bool]
    ) -> Iterator[ChatStep]: ...

    def memory_bytes(self) -> int: ...


class TrainEngine(Protocol):
    """A model loaded to be trained (engines/lora.py). `cancelled()` is polled before every step."""

    def train(
        self,
        dataset: list[Example],
        request: TrainRequest,
        output: Path,
        cancelled: Callable[[], bool],
    ) -> Iterator[TrainStep]: ...

    def memory_bytes(self) -> int: ...


EngineFactory = Callable[[Path, LoadOptions], ChatEngine | ImageEngine | TrainEngine | EmbedEngine]

# model_format in the manifest config -> "module:factory", imported lazily in the runner.
ENGINES: dict[str, str] = {
    # Hugging Face-format vision models: vLLM on a GPU when installed, else transformers.
    "safetensors": "limner.engines.llava_vllm:vision_engine",
    "gguf": "limner.engines.llava_llamacpp:load",
    "diffusers": "limner.engines.diffusion:load",
    "sd-checkpoint": "limner.engines.diffusion:load_checkpoint",
    "fake": "limner.engines.fake:load",
    # Embedding models (their config's capabilities say "embedding").
    "embed:gguf": "limner.engines.embed_llamacpp:load",
    "embed:safetensors": "limner.engines.embed_transformers:load",
    # Training runners: the model to train on, loaded by its trainer (`train` requests).
    "train:diffusers": "limner.engines.lora:load_trainer",
    "train:sd-checkpoint": "limner.engines.lora:load_checkpoint_trainer",
}


def engine_for(model_format: str) -> EngineFactory:
    """The engine factory for a model format, imported on first use."""
    target = ENGINES.get(model_format)
    if target is None:
        raise InvalidRequest(f"no engine can run models of format {model_format!r}")
    module, _, name = target.partition(":")
    factory: EngineFactory = getattr(importlib.import_module(module), name)
    return factory
