"""The store: named models on disk, each a manifest in Ollama's layout
(`manifests/<host>/<namespace>/<model>/<tag>`, Docker v2 JSON) over content-addressed blobs.

Lookups are case-insensitive (the on-disk casing wins), manifests are written atomically
(temporary file, fsync, rename), and deleting a model removes only the blobs that no other
manifest uses.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from limner import pictures
from limner.errors import InvalidRequest, ModelNotFound
from limner.names import ModelName
from limner.store.blobs import BlobStore, disk_space, write_whole
from limner.store.manifests import GGUF_MODEL, GGUF_PROJECTOR, MODEL, PROJECTOR, Manifest

DERIVED = "derived"  # beside blobs/ and manifests/: what engines derive once from a model
LOCK = ".lock"  # held by the server that uses the store (Store.hold)


@dataclass(frozen=True)
class Entry:
    """A stored model: its on-disk name, manifest, modification time and manifest digest."""

    name: ModelName
    manifest: Manifest
    modified_at: datetime
    digest: str  # sha256 hex of the manifest bytes, as Ollama reports it


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = BlobStore(root / "blobs")
        self.manifests = root / "manifests"
        # Held while a manifest is written or removed and its blobs pruned: a create or copy
        # then never names a blob that a delete beside it is removing.
        self.changing = threading.RLock()

    # --- who uses it ---

    def hold(self) -> IO[bytes] | None:
        """Take the store for one server: an open lock file to keep for the server's life, or
        None when another server holds it. While held, every temporary file in the store is
        this process's own, so one left from before it is a leftover."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = (self.root / LOCK).open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None
        return lock

    def in_use(self) -> bool:
        """Whether a server holds the store now (`hold`)."""
        held = self.hold()
        if held is None:
            return True
        held.close()
        return False

    # --- lookup ---

    def _path(self, name: ModelName) -> Path:
        path = self.manifests.joinpath(*name.parts())
        # A valid name cannot climb out, but prove it before touching the file system.
        if not path.resolve().is_relative_to(self.manifests.resolve()):
            raise InvalidRequest("invalid model name")
        return path

    def find(self, name: ModelName) -> ModelName | None:
        """The stored name matching `name` case-insensitively, with the on-disk casing."""
        exact = self._path(name)
        if exact.is_file():
            return name
        want = name.casefold()
        for path in self._manifest_files():
            parts = path.relative_to(self.manifests).parts
            if tuple(p.casefold() for p in parts) == want:
                return ModelName(*parts)
        return None

    def resolve(self, text: str, quote: str = "'") -> ModelName:
        """The stored name for user input; ModelNotFound if none."""
        found = self.find(ModelName.parse(text))
        if found is None:
            raise ModelNotFound(text, quote, self._nearest(text))
        return found

    def _nearest(self, text: str) -> str | None:
        """The stored model a mistyped name most likely meant (`lava` -> `llava`), if any."""
        names = {}
        for path in self._manifest_files():
            name = ModelName(*path.relative_to(self.manifests).parts).display()
            names[name.removesuffix(":latest").casefold()] = name.removesuffix(":latest")
        typed = text.strip().removesuffix(":latest").casefold()
        near = difflib.get_close_matches(typed, names, n=1, cutoff=0.75)
        return names[near[0]] if near else None

    def entry(self, name: ModelName) -> Entry:
        path = self._path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelNotFound(name.display()) from None
        return Entry(
            name=name,
            manifest=Manifest.model_validate_json(data),
            modified_at=datetime.fromtimestamp(path.stat().st_mtime).astimezone(),
            digest=hashlib.sha256(data).hexdigest(),
        )

    def entries(self) -> list[Entry]:
        """Every readable manifest, most recently modified first."""
        entries = []
        for path in self._manifest_files():
            name = ModelName(*path.relative_to(self.manifests).parts)
            if not name.is_valid():
                continue
            try:
                entries.append(self.entry(name))
            except ValueError:
                continue  # an unreadable manifest is skipped, never deleted
        return sorted(entries, key=lambda e: e.modified_at, reverse=True)

    def _manifest_files(self) -> list[Path]:
        if not self.manifests.is_dir():
            return []
        return [
            p for p in self.manifests.glob("*/*/*/*") if p.is_file() and not p.name.startswith(".")
        ]

    # --- reading layers ---

    def text(self, manifest: Manifest, media_type: str) -> str | None:
        layer = manifest.layer(media_type)
        if layer is None:
            return None
        return self.blobs.open_path(layer.digest).read_text()

    def json_layer(self, manifest: Manifest, media_type: str) -> Any:
        text = self.text(manifest, media_type)
        return None if text is None else json.loads(text)

    def files(self, manifest: Manifest) -> dict[str, Path]:
        """Relative file name -> blob path for every named layer (multi-file models), and
        Ollama's unnamed GGUF layers as `model.gguf` and `mmproj.gguf` (the projector)."""
        unnamed = {MODEL: GGUF_MODEL, PROJECTOR: GGUF_PROJECTOR}
        return {
            layer.name or unnamed[layer.mediaType]: self.blobs.open_path(layer.digest)
            for layer in manifest.layers
            if layer.name or layer.mediaType in unnamed
        }

    # --- writing ---

    def write(self, name: ModelName, manifest: Manifest, raw: bytes | None = None) -> None:
        """Write a manifest atomically; every blob it names must already be stored.

        `raw`: the manifest's bytes exactly as a registry sent them (they must parse to
        `manifest`), kept verbatim so the digest matches the registry's.
        """
        with self.changing, disk_space(self.root):
            for digest in manifest.digests():
                self.blobs.open_path(digest)
            existing = self.find(name)
            path = self._path(existing or name)
            made = [folder for folder in path.parents if not folder.exists()]
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_whole(path, manifest.encode() if raw is None else raw, ".manifest-")
            except BaseException:
                for folder in made:  # deepest first: only the folders this write made
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                raise

    def copy(self, source: ModelName, destination: ModelName) -> None:
        with self.changing:  # a delete of `source` now cannot prune what the copy names
            self.write(destination, self.entry(source).manifest)

    def delete(self, name: ModelName) -> None:
        """Remove the manifest, then the blobs no other manifest uses."""
        with self.changing:
            self._delete(name)

    def _delete(self, name: ModelName) -> None:
        path = self._path(name)
        if not path.is_file():
            raise ModelNotFound(name.display())
        data = path.read_bytes()
        removed = Manifest.model_validate_json(data).digests()
        path.unlink()
        for parent in list(path.parents)[: len(name.parts()) - 1]:
            if parent == self.manifests or any(parent.iterdir()):
                break
            parent.rmdir()
        self.prune(removed)
        digest = hashlib.sha256(data).hexdigest()
        if not any(hashlib.sha256(p.read_bytes()).hexdigest() == digest
                   for p in self._manifest_files()):  # fmt: skip
            shutil.rmtree(self.derived(digest), ignore_errors=True)

    def derived(self, digest: str) -> Path:
        """Where the model of manifest `digest` keeps what its engine derives once from its
        files (OpenVINO graphs); shared by its copies, removed with the last of them."""
        return self.root / DERIVED / digest.removeprefix("sha256:")

    def uploaded_picture(self, digest: str) -> Path | None:
        """The blob a request names as a picture, or None; using it keeps it (its time is
        what `prune_idle_pictures` counts from)."""
        path = self.blobs.path(digest)
        try:
            os.utime(path)
        except OSError:
            return None
        return path

    def prune_idle_pictures(self, idle_seconds: float) -> list[str]:
        """Delete uploaded pictures that no model uses and no request has named for
        `idle_seconds`; other unused blobs (files uploaded for a model still to be created)
        stay. Returns the digests deleted."""
        with self.changing:
            used = self._used_digests()
            if used is None:
                return []  # what the models use cannot be told: nothing is deleted
            return self._prune_pictures(used, idle_seconds)

    def _prune_pictures(self, used: set[str], idle_seconds: float) -> list[str]:
        deadline = time.time() - idle_seconds
        removed = []
        for digest in sorted(self.blobs.digests() - used):
            path = self.blobs.path(digest)
            try:
                if path.stat().st_mtime > deadline:
                    continue
                with path.open("rb") as f:
                    if not pictures.looks_like_picture(f.read(16)):
                        continue
            except OSError:
                continue
            self.blobs.remove(digest)
            removed.append(digest)
        return removed

    def prune(self, candidates: set[str]) -> None:
        """Delete those candidate blobs that no manifest refers to any more.

        Blobs uploaded for a model not yet created are never candidates, and if any
        manifest cannot be read nothing is deleted: we cannot tell what it uses.
        """
        with self.changing:
            used = self._used_digests()
            if used is None:
                return
            for digest in candidates - used:
                self.blobs.remove(digest)

    def _used_digests(self) -> set[str] | None:
        """Every blob some manifest names; None when a manifest cannot be read."""
        used: set[str] = set()
        for path in self._manifest_files():
            try:
                used |= Manifest.model_validate_json(path.read_bytes()).digests()
            except ValueError:
                return None
        return used
