"""The server's one training slot and the job that holds it (server/train.py runs it)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limner.engines.training import TrainRequest
from limner.names import ModelName
from limner.store.store import Entry
from limner.types import CreateRequest


@dataclass
class Job:
    """One training run: what it makes, its plan, and the lines its clients read."""

    name: ModelName
    base: Entry
    request: CreateRequest
    settings: TrainRequest
    files: dict[str, Path]  # the dataset's files (name -> blob)
    uncaptioned: list[str]  # pictures the vision model captions
    lines: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    step: int = 0
    losses: list[float] = field(default_factory=list)
    checkpoint: tuple[int, Path] | None = None

    def say(self, status: str, **fields: Any) -> None:
        self.lines.put_nowait({"status": status, **fields})


class Trainings:
    """The one training slot of the server."""

    def __init__(self) -> None:
        self.job: Job | None = None
        self.task: asyncio.Task[None] | None = None

    async def close(self, grace: float = 30.0) -> None:
        """Server shutdown: stop the job after its current step, so that it keeps its last
        checkpoint; a job that does not stop within `grace` seconds is cancelled."""
        if self.job is None or self.task is None:
            return
        self.job.stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), grace)
        except TimeoutError:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
