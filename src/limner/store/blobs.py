"""Content-addressed blobs: `blobs/sha256-<hex>`, written to a temporary file, hashed, renamed.

A digest is validated against `sha256[:-]<64 hex digits>` (the whole string) before it
becomes a path, so no user-supplied digest can name a file outside the blobs folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from limner.config import format_bytes
from limner.errors import InsufficientStorage, InvalidRequest, NotFound

DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})\Z")  # \Z: "$" would let a last "\n" in
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or the user's quota of it


def normalize(digest: str) -> str:
    """`sha256:<hex>` from either separator; InvalidRequest if it is not a digest."""
    match = DIGEST.match(digest)
    if match is None:
        raise InvalidRequest("invalid digest format")
    return f"sha256:{match.group(1)}"


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / normalize(digest).replace(":", "-")

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def open_path(self, digest: str) -> Path:
        """The path of a blob that must exist."""
        path = self.path(digest)
        if not path.is_file():
            raise NotFound(f'blob "{normalize(digest)}" not found')
        return path

    def incoming(self) -> Incoming:
        """A temporary file to stream a new blob into; `commit` names it by its hash."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Incoming(self)

    def write(self, chunks: Iterable[bytes], expected: str | None = None) -> tuple[str, int]:
        """Store bytes; returns (digest, size). A wrong `expected` digest, or a full disk,
        stores nothing."""
        with disk_space(self.root):
            incoming = self.incoming()
            try:
                for chunk in chunks:
                    incoming.write(chunk)
                return incoming.commit(expected)
            finally:
                incoming.discard()

    def write_bytes(self, data: bytes) -> tuple[str, int]:
        return self.write([data])

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def digests(self) -> set[str]:
        if not self.root.is_dir():
            return set()
        found = set()
        for entry in self.root.iterdir():
            match = DIGEST.match(entry.name)
            if match:
                found.add(f"sha256:{match.group(1)}")
        return found


class Incoming:
    """A blob being written: hashed as it arrives, renamed only once verified."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        fd, name = tempfile.mkstemp(prefix=".incoming-", dir=blobs.root)
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.sha.update(chunk)
        self.file.write(chunk)
        self.size += len(chunk)

    def commit(self, expected: str | None = None) -> tuple[str, int]:
        digest = f"sha256:{self.sha.hexdigest()}"
        if expected is not None and digest != normalize(expected):
            raise InvalidRequest(
                f'digest mismatch, expected "{normalize(expected)}", got "{digest}"'
            )
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.path, self.blobs.path(digest))
        return digest, self.size

    def discard(self) -> None:
        """Remove the temporary file unless it was committed (safe to call twice)."""
        with contextlib.suppress(OSError):  # it flushes what is buffered: a full disk fails it
            self.file.close()
        self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def disk_space(folder: Path, needed: int | None = None, what: str = "") -> Iterator[None]:
    """A disk that fills while writing under `folder` as InsufficientStorage (507) that says
    what was needed and what is free. The writer's own clean-up runs first, as it unwinds."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        raise InsufficientStorage(no_space(folder, needed, what)) from None


def no_space(folder: Path, needed: int | None, what: str = "") -> str:
    """'not enough disk space: need 2.0 GiB, have 1.2 GiB' (need left out when unknown)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    need = f"need {format_bytes(needed)}, " if needed else ""
    return f"{what}{': ' if what else ''}not enough disk space: {need}have {format_bytes(free)}"


def write_whole(path: Path, data: bytes, prefix: str) -> None:
    """`data` as `path`, whole or not at all: a temporary file beside it (named `prefix`...,
    which a server start removes if a kill leaves it), fsynced, renamed."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"
