"""limner: a local model server that sees and draws, behind Ollama's API.

The public surface is the SDK (`Client`, `AsyncClient`), the wire types and the errors.
"""

from limner import errors, types
from limner.client import AsyncClient, Client, GeneratedImage, read_parameters
from limner.errors import (
    ConnectError,
    InvalidImage,
    InvalidRequest,
    LimnerError,
    ModelNotFound,
    NotFound,
    RequestCanceled,
    RunnerFailed,
    ServerBusy,
    TooLarge,
    UnsafeWeights,
)

__all__ = [
    "AsyncClient",
    "Client",
    "ConnectError",
    "GeneratedImage",
    "InvalidImage",
    "InvalidRequest",
    "LimnerError",
    "ModelNotFound",
    "NotFound",
    "RequestCanceled",
    "RunnerFailed",
    "ServerBusy",
    "TooLarge",
    "UnsafeWeights",
    "errors",
    "read_parameters",
    "types",
]
