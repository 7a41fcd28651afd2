"""The one exception tree of limner. Every class carries the HTTP status it maps to.

    LimnerError (500)
    ├── InvalidRequest (400)        bad input: fields, options, names, pictures
    │   ├── InvalidImage (400)      not a PNG/JPEG/WebP, truncated, or undecodable
    │   └── UnsafeWeights (400)     pickle weights (.bin/.pt/.ckpt) refused
    ├── NotFound (404)
    │   └── ModelNotFound (404)     "model 'x' not found"
    ├── Conflict (409)              a second training job while one runs
    ├── TooLarge (413)              request body or decoded picture over the limit
    ├── RequestCanceled (499)       the client went away
    ├── ServerBusy (503)            the scheduler's queue is full
    ├── InsufficientMemory (507)    the model cannot fit under the memory limit
    ├── InsufficientStorage (507)   the disk is full: what was needed and what is free
    ├── RunnerFailed (500)          a model's worker process crashed or failed to load
    │   └── ProtocolError (500)     a runner line that is not the protocol's
    └── ConnectError                SDK only: no server answered at the host

The server maps these to `{"error": message}` in exactly one place (`server/app.py`);
the SDK raises them back from the status it receives, so callers catch the same classes.
"""

from __future__ import annotations

import re

# An absolute POSIX path of two or more parts, not inside a URL (no ':' or '/' or word
# before) and not one of the API's own routes, which messages name on purpose.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?!(?:api|v1|sdapi)/)(?:[^\s'\"/:]+/)+([^\s'\"/:]*)")


class LimnerError(Exception):
    """Base class: `status` is the HTTP status, `message` what the user should read."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class InvalidRequest(LimnerError):
    status = 400


class InvalidImage(InvalidRequest):
    pass


class UnsafeWeights(InvalidRequest):
    pass


class NotFound(LimnerError):
    status = 404


class ModelNotFound(NotFound):
    def __init__(self, name: str, quote: str = "'", near: str | None = None) -> None:
        guess = f"; did you mean {quote}{near}{quote}?" if near else ""
        super().__init__(f"model {quote}{name}{quote} not found{guess}")
        self.name = name


class Conflict(LimnerError):
    status = 409


class TooLarge(LimnerError):
    status = 413


class RequestCanceled(LimnerError):
    status = 499

    def __init__(self, message: str = "request canceled") -> None:
        super().__init__(message)


class ServerBusy(LimnerError):
    status = 503

    def __init__(
        self, message: str = "server busy, please try again.  maximum pending requests exceeded"
    ) -> None:
        super().__init__(message)


class InsufficientMemory(LimnerError):
    """The model can never fit under the memory limit, even with every other model unloaded."""

    status = 507


class InsufficientStorage(LimnerError):
    """The disk filled while writing; whatever was half-written has been removed."""

    status = 507


class RunnerFailed(LimnerError):
    status = 500


class ProtocolError(RunnerFailed):
    """A runner line that is not a message of the protocol (limner.protocol)."""


class ConnectError(LimnerError):
    status = 0

    def __init__(self, host: str) -> None:
        super().__init__(
            f"could not connect to limner at {host}; start it with 'limner serve' "
            "or point LIMNER_HOST at a running server"
        )


_BY_STATUS: dict[int, type[LimnerError]] = {
    400: InvalidRequest,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    499: RequestCanceled,
    503: ServerBusy,
    507: InsufficientMemory,
}


def from_status(status: int, message: str) -> LimnerError:
    """The exception a client raises for an error response (status -1 = mid-stream line)."""
    cls = _BY_STATUS.get(status, LimnerError)
    if cls in (RequestCanceled, ServerBusy):
        return cls(message)
    return cls(message, status) if cls is LimnerError else cls(message)


def without_paths(message: str) -> str:
    """`message` with absolute paths cut to their last part: what a client reads never tells
    it where the store, the runners' folders or the user's home are."""
    return _ABSOLUTE_PATH.sub(lambda match: "…/" + match.group(1), message)
