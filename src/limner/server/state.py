"""What every handler shares: the store, the scheduler, and strict body parsing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from limner.errors import InvalidRequest
from limner.scheduler import Scheduler
from limner.server.trainings import Trainings
from limner.store import Store
from limner.store.gallery import Gallery

Body = TypeVar("Body", bound=BaseModel)


@dataclass
class State:
    store: Store
    scheduler: Scheduler
    gallery: Gallery
    trainings: Trainings = field(default_factory=Trainings)


async def parse_body(request: Request, model: type[Body]) -> Body:
    """The request body as `model`; any problem is a 400 that names the field to fix."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("missing request body")
    data = loads(raw)
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidRequest(f"invalid value for '{where}': {first['msg']}") from None


_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]", re.ASCII)


def loads(raw: bytes) -> Any:
    """JSON from a request body; a 400 for anything json.loads refuses, for nesting deep
    enough to exhaust the stack, and for a lone surrogate (`"\\ud800"`), which no UTF-8
    answer or log could carry."""
    try:
        data = json.loads(raw)
        if _SURROGATE.search(raw):
            json.dumps(data, ensure_ascii=False).encode()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"invalid JSON in the request body: {exc}") from None
    except UnicodeEncodeError:
        raise InvalidRequest("invalid JSON in the request body: a lone surrogate") from None
    except RecursionError:
        raise InvalidRequest("invalid JSON in the request body: nested too deeply") from None
    except ValueError:  # json.loads refuses integers of more than 4300 digits
        raise InvalidRequest(
            "invalid JSON in the request body: a number has more than 4300 digits"
        ) from None
    return data
