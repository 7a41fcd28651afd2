"""The gallery: every picture the server draws, kept beside the store with its parameters.

`<gallery>/<id>.png` is the picture as it was sent (its PNG text carries A1111's parameters),
`<id>.json` what limner knows of it (model, prompt, seed, sampler, size, steps...),
`<id>.thumb.jpg` its thumbnail, made when first asked for. An id is
the UTC time it was drawn, to the microsecond, and a random suffix,
`20261204-103000123456-1a2b`, so names sort by time. Both files are written whole (temporary file, rename), the picture first: a picture
listed always has its file. The newest LIMNER_GALLERY_KEEP are kept (0: none is kept).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from limner import pictures
from limner.errors import InvalidRequest, NotFound
from limner.store.blobs import NO_SPACE, write_whole

log = logging.getLogger("limner.gallery")

ID = re.compile(r"\d{8}-\d{12}-[0-9a-f]{4}")
MAX_PAGE = 200


@dataclass(frozen=True)
class Picture:
    id: str
    created_at: datetime
    parameters: dict[str, Any]
    bytes: int


class Gallery:
    def __init__(self, root: Path, keep: int) -> None:
        self.root, self.keep = root, keep
        self._lock = threading.Lock()
        self._last = datetime.min.replace(tzinfo=UTC)

    def add(self, png: bytes, parameters: dict[str, Any]) -> str | None:
        """Keep a drawn picture; its id, or None when the gallery keeps nothing or the disk is
        full (a drawing never fails for its copy in the gallery)."""
        if self.keep <= 0:
            return None
        now = self._now()
        picture_id = f"{now:%Y%m%d-%H%M%S%f}-{secrets.token_hex(2)}"
        record = {"id": picture_id, "created_at": now.isoformat().replace("+00:00", "Z"),
                  "parameters": parameters, "bytes": len(png)}  # fmt: skip
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_whole(self.root / f"{picture_id}.png", png, ".incoming-")
            write_whole(self.root / f"{picture_id}.json", json.dumps(record).encode(), ".incoming-")
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            (self.root / f"{picture_id}.png").unlink(missing_ok=True)
            log.warning("the gallery could not keep a picture: the disk is full")
            return None
        self._trim()
        return picture_id

    def _now(self) -> datetime:
        """The time now, later than any id this gallery gave before (ids sort as drawn)."""
        with self._lock:
            now = max(datetime.now(UTC), self._last + timedelta(microseconds=1))
            self._last = now
            return now

    def pictures(self, limit: int = 50, before: str | None = None) -> list[Picture]:
        """The newest `limit` pictures, or those drawn before the picture `before`."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
        if before is not None:
            _checked(before)
        found = []
        for picture_id in self._ids():
            if before is not None and picture_id >= before:
                continue
            picture = self._read(picture_id)
            if picture is not None:
                found.append(picture)
            if len(found) == limit:
                break
        return found

    def file(self, picture_id: str) -> Path:
        """The PNG of a kept picture."""
        path = self.root / f"{_checked(picture_id)}.png"
        if not (self.root / f"{picture_id}.json").is_file() or not path.is_file():
            raise NotFound(f"picture {picture_id!r} not found in the gallery")
        return path

    def thumbnail(self, picture_id: str) -> Path:
        """A small JPEG of a kept picture (limner.pictures.thumbnail), made once."""
        path = self.root / f"{picture_id}.thumb.jpg"
        picture = self.file(picture_id)
        if not path.is_file():
            small = pictures.thumbnail(picture.read_bytes(), f"picture {picture_id}")
            write_whole(path, small, ".incoming-")
        return path

    def delete(self, picture_id: str) -> None:
        record = self.root / f"{_checked(picture_id)}.json"
        if not record.is_file():
            raise NotFound(f"picture {picture_id!r} not found in the gallery")
        record.unlink(missing_ok=True)  # unlisted first, then the picture
        (self.root / f"{picture_id}.png").unlink(missing_ok=True)
        (self.root / f"{picture_id}.thumb.jpg").unlink(missing_ok=True)

    def _ids(self) -> list[str]:
        """Ids of the listed pictures, newest first."""
        if not self.root.is_dir():
            return []
        ids = (path.stem for path in self.root.glob("*.json"))
        return sorted((each for each in ids if ID.fullmatch(each)), reverse=True)

    def _read(self, picture_id: str) -> Picture | None:
        try:
            record = json.loads((self.root / f"{picture_id}.json").read_bytes())
            created = datetime.fromisoformat(record["created_at"])
            return Picture(picture_id, created, dict(record["parameters"]), int(record["bytes"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # deleted meanwhile, or not written by limner: not listed

    def _trim(self) -> None:
        with self._lock:
            for picture_id in self._ids()[self.keep :]:
                with contextlib.suppress(NotFound, OSError):
                    self.delete(picture_id)


def _checked(picture_id: str) -> str:
    if not ID.fullmatch(picture_id):
        raise InvalidRequest(
            f"{picture_id!r} is not a gallery id (like 20261204-103000123456-1a2b)"
        )
    return picture_id
