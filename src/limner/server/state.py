"""What every handler shares: the store, the scheduler, and strict body parsing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from limner.errors import InvalidRequest
from limner.scheduler import Scheduler
from limner.server.train import Trainings
from limner.store import Store

Body = TypeVar("Body", bound=BaseModel)


@dataclass
class State:
    store: Store
    scheduler: Scheduler
    trainings: Trainings = field(default_factory=Trainings)


async def parse_body(request: Request, model: type[Body]) -> Body:
    """The request body as `model`; any problem is a 400 that names the field to fix."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("missing request body")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"invalid JSON in the request body: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidRequest(f"invalid value for '{where}': {first['msg']}") from None
