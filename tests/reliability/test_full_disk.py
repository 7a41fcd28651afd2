"""ST-11 A full disk (docs/reliability.md): the store lives on a 4 MiB tmpfs the test mounts
(an injected ENOSPC where mounting is not allowed). An upload, a create and a copy that run
out of space are each a 507 saying what was needed and what is free; nothing half-written
stays (no `.incoming-*`, no `.manifest-*`, no empty manifest folder); the server goes on, and
the same requests succeed once space is freed."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import add_fake
from limner.store import Store
from limner.store.check import check

DISK = 4 << 20


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The store on a small filesystem of its own."""
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("LIMNER_MODELS", str(root))
    mounted = _mount_tmpfs(root)
    if not mounted:
        _inject_enospc(root, monkeypatch)
    yield root
    if mounted:
        subprocess.run(["umount", "-l", str(root)], check=False)


def _mount_tmpfs(root: Path) -> bool:
    command = ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(root)]
    try:
        return subprocess.run(command, capture_output=True, check=False).returncode == 0
    except OSError:  # no mount command
        return False


def _inject_enospc(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a mount: writes under `root` fail as a full disk's do, once `root/filler`
    exists (what `fill` writes)."""
    import builtins

    real_open = builtins.open

    def full_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        writes = "w" in mode and str(file).startswith(str(root)) and (root / "filler").exists()
        if writes and not str(file).endswith("filler"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_open)
    real_fdopen = os.fdopen

    class Full:
        """A file on the full disk: opening works, writing does not."""

        def __init__(self, file: Any) -> None:
            self.file = file

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.file, name)

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

    def full_fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        file = real_fdopen(fd, *args, **kwargs)
        return Full(file) if (root / "filler").exists() else file

    monkeypatch.setattr(os, "fdopen", full_fdopen)


def fill(root: Path) -> None:
    """Write a filler file until the disk is full."""
    with (root / "filler").open("wb", buffering=0) as filler:
        try:
            for _ in range(2 * DISK // 4096):
                filler.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def half_written(root: Path) -> list[str]:
    """Temporary files and empty folders a failed write may not leave."""
    left = [p.name for p in root.rglob(".*") if p.name != ".lock"]
    manifests = root / "manifests"
    empty = [str(p) for p in manifests.rglob("*") if p.is_dir() and not any(p.iterdir())]
    return left + empty


def test_uploads_creates_and_copies_on_a_full_disk_are_507s_that_leave_nothing(
    store: Store, server: Any, tally: Any
) -> None:
    add_fake(store, "base")
    root, url = store.root, server.url
    fill(root)
    payload = os.urandom(6 << 20)
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    upload = httpx.post(f"{url}/api/blobs/{digest}", content=payload, timeout=60)
    assert upload.status_code == 507, upload.text
    assert "not enough disk space: need 6.0 MiB, have" in upload.json()["error"]
    create = {"model": "team/new", "from": "base", "system": "be brief", "stream": False}
    copy = {"source": "base", "destination": "someone/copied:v1"}
    refused = [httpx.post(f"{url}/api/create", json=create, timeout=30),
               httpx.post(f"{url}/api/copy", json=copy, timeout=30)]  # fmt: skip
    for reply in refused:
        assert reply.status_code == 507, reply.text
        assert "not enough disk space" in reply.json()["error"]
    assert half_written(root) == []
    assert check(store).problems == []
    (root / "filler").unlink()
    assert httpx.post(f"{url}/api/create", json=create, timeout=30).status_code == 200
    assert httpx.post(f"{url}/api/copy", json=copy, timeout=30).status_code == 200
    small = payload[: 1 << 20]
    small_digest = "sha256:" + hashlib.sha256(small).hexdigest()
    assert httpx.post(f"{url}/api/blobs/{small_digest}", content=small).status_code == 201
    names = {m["name"] for m in httpx.get(f"{url}/api/tags").json()["models"]}
    assert {"team/new:latest", "someone/copied:v1"} <= names
    tally(3, 3, "upload, create and copy on a full disk: 507, nothing left behind")
