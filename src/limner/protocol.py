"""The runner protocol: typed messages between the server and a runner, one JSON object a line.

    server -> runner   Load                  the first line: which engine, which folder, options
                       Chat | Draw | Train | Embed   a request, under an id the server picks
                       Cancel | Finish       stop a request / end a drawing early, keeping it
    runner -> server   Ready | LoadError     the answer to Load
                       a request's steps, under its id: Piece | Called... Done (chat),
                       Progress... ImageResult (drawing), TrainProgress, TrainCheckpoint,
                       TrainValidation... TrainDone (training), Embedded (embedding);
                       or Error, which ends it too

The engines' own step dataclasses are the replies, not copies of them. Every line is
`{"kind": ..., "id": ..., **fields}`; bytes travel as base64 and paths as strings. A line of
an unknown kind, or with a field missing or of the wrong type, is a ProtocolError: the
reader never guesses, and a step that does not answer its request's kind (`STEPS`) is one
too. A piece of text, the one message sent per token, has a fast path.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from limner.engines import (
    Called,
    ChatStep,
    Done,
    Embedded,
    EmbedStep,
    ImageRequest,
    ImageResult,
    ImageStep,
    LoadOptions,
    Message,
    Options,
    Piece,
    Progress,
)
from limner.engines.training import (
    TrainCheckpoint,
    TrainDone,
    TrainProgress,
    TrainRequest,
    TrainStep,
    TrainValidation,
)
from limner.errors import LimnerError, ProtocolError, RunnerFailed

# --- server -> runner ----------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    format: str  # a key of engines.ENGINES
    folder: Path  # the model's files under their relative names
    options: LoadOptions = field(default_factory=LoadOptions)


@dataclass(frozen=True)
class Chat:
    messages: list[Message]
    options: Options


@dataclass(frozen=True)
class Draw:
    request: ImageRequest


@dataclass(frozen=True)
class Train:
    files: dict[str, Path]  # the dataset: name inside it -> uploaded file
    request: TrainRequest
    output: Path
    captions: dict[str, str] | None = None  # written for it by a vision model


@dataclass(frozen=True)
class Embed:
    inputs: list[str]
    truncate: bool = True
    num_ctx: int = 0  # 0: the window the model loaded with


@dataclass(frozen=True)
class Cancel:
    """Stop the request now; it ends with an Error of status 499."""


@dataclass(frozen=True)
class Finish:
    """Skip a drawing's remaining steps and decode the picture so far."""


# --- runner -> server ----------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    memory: int  # bytes the loaded model holds
    load_duration: int  # nanoseconds
    vram: int = 0  # the part of `memory` on a GPU
    concurrency: int = 1  # requests it takes at once (an engine that batches: more)


@dataclass(frozen=True)
class LoadError:
    status: int
    message: str


@dataclass(frozen=True)
class Error:
    """A request failed; `message` is what the user reads, `status` its HTTP status."""

    status: int
    message: str

    def exception(self) -> LimnerError:
        """What the server raises for it: a 500 is the runner's failure, the rest the user's."""
        if self.status == RunnerFailed.status:
            return RunnerFailed(self.message)
        return LimnerError(self.message, self.status)


Request = Chat | Draw | Train | Embed
Step = (
    Piece | Called | Done | Progress | ImageResult | TrainProgress | TrainCheckpoint
    | TrainValidation | TrainDone | Embedded
)  # fmt: skip
Reply = Step | Error
LAST = (Done, ImageResult, TrainDone, Embedded, Error)  # the replies that end a request

# The steps that may answer each kind of request (an Error may answer any).
CHAT_STEPS: tuple[type[ChatStep], ...] = (Piece, Called, Done)
IMAGE_STEPS: tuple[type[ImageStep], ...] = (Progress, ImageResult)
TRAIN_STEPS: tuple[type[TrainStep], ...] = (
    TrainProgress, TrainCheckpoint, TrainValidation, TrainDone
)  # fmt: skip
EMBED_STEPS: tuple[type[EmbedStep], ...] = (Embedded,)
STEPS: dict[type, tuple[type, ...]] = {
    Chat: CHAT_STEPS, Draw: IMAGE_STEPS, Train: TRAIN_STEPS, Embed: EMBED_STEPS
}  # fmt: skip
REPLIES = (*CHAT_STEPS, *IMAGE_STEPS, *TRAIN_STEPS, *EMBED_STEPS, Error)

KINDS: dict[str, type] = {
    "load": Load, "chat": Chat, "draw": Draw, "train": Train, "embed": Embed,
    "cancel": Cancel, "finish": Finish,
    "ready": Ready, "load_error": LoadError, "error": Error,
    "piece": Piece, "called": Called, "done": Done, "progress": Progress, "image": ImageResult,
    "train_progress": TrainProgress, "checkpoint": TrainCheckpoint,
    "validation": TrainValidation, "trained": TrainDone, "embedded": Embedded,
}  # fmt: skip
KIND_OF = {cls: kind for kind, cls in KINDS.items()}


def encode(message: Any, request_id: int = 0) -> bytes:
    """One line: the message, its kind and the id of the request it belongs to."""
    if type(message) is Piece:  # once per token: no walk over fields
        text = json.dumps(message.text)
        return b'{"kind":"piece","id":%d,"text":%s}\n' % (request_id, text.encode())
    try:
        kind = KIND_OF[type(message)]
    except KeyError:
        raise ProtocolError(f"{type(message).__name__} is not a message of the protocol") from None
    body = {"kind": kind, "id": request_id, **_to_wire(message)}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes | str) -> tuple[int, Any]:
    """The id and message of one line, or ProtocolError saying what is wrong with it."""
    try:
        body = json.loads(line)
    except ValueError:
        raise ProtocolError(f"not a JSON line: {_clip(line)}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"not a JSON object: {_clip(line)}")
    kind, request_id = body.pop("kind", None), body.pop("id", 0)
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        raise ProtocolError(f"a {kind} line has an id that is not a number")
    if kind == "piece" and isinstance(body.get("text"), str) and len(body) == 1:
        return request_id, Piece(body["text"])
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {kind!r}")
    return request_id, _from_wire(cls, body, kind)


def answers(request: Request, reply: Any) -> bool:
    """Whether `reply` may answer `request`: one of its steps, or an Error."""
    return isinstance(reply, (Error, *STEPS[type(request)]))


# --- the field codec ------------------------------------------------------------------------


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_to_wire(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_wire(item) for key, item in value.items()}
    return value


def _from_wire(kind: Any, value: Any, where: str) -> Any:
    """`value` read as type `kind` (a dataclass, a builtin, a list, dict or optional of them)."""
    if kind is Any:
        return value
    if dataclasses.is_dataclass(kind):
        return _dataclass(kind, value, where)
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        (inner,) = [a for a in arguments if a is not type(None)]
        return _from_wire(inner, value, where)
    if origin is list and isinstance(value, list):
        return [_from_wire(arguments[0], item, f"{where}[]") for item in value]
    if origin is dict and isinstance(value, dict):
        return {k: _from_wire(arguments[1], v, f"{where}.{k}") for k, v in value.items()}
    return _scalar(kind, value, where)


def _scalar(kind: Any, value: Any, where: str) -> Any:
    if kind is bytes and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ProtocolError(f"{where} is not base64") from None
    if kind is Path and isinstance(value, str):
        return Path(value)
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (int, str, bool) and type(value) is kind:
        return value
    raise ProtocolError(f"{where} should be {getattr(kind, '__name__', kind)}, not {_clip(value)}")


def _dataclass(cls: Any, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} should be an object, not {_clip(value)}")
    hints = _hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(value) - set(known)
    if unknown:
        raise ProtocolError(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    values = {}
    for name, spec in known.items():
        if name in value:
            values[name] = _from_wire(hints[name], value[name], f"{where}.{name}")
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"{where} is missing its field {name!r}")
    return cls(**values)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The dataclass's field types, resolved once (its module uses string annotations)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _clip(value: Any, size: int = 80) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else repr(value)
    return text if len(text) <= size else text[:size] + "…"
