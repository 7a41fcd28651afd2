"""Crash consistency (docs/reliability.md ST-*): kill -9 a real `limner serve` at random points
of pulls and creates, start again, and the store is consistent: every manifest parses, every
blob it names re-hashes to its name, nothing half-written is listed; `limner check --repair`
clears what the kill left (temporary files) and a second pull completes."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fake_registry import FakeRegistry
from helpers import add_fake, free_port
from limner.store import Store
from limner.store.check import check
from reliability.conftest import ServeProcess

BIG = 6 * 1024 * 1024  # big enough that a kill lands mid-blob now and then


def consistent(store: Store) -> list[str]:
    """The problems a kill may not leave: anything but leftover temporary files."""
    return [p for p in check(store).problems if not p.startswith("leftover temporary")]


def listed_models_are_whole(store: Store) -> bool:
    return all(
        store.blobs.exists(digest)
        for entry in store.entries()
        for digest in entry.manifest.digests()
    )


def work(url: str, registry: FakeRegistry, round_: int, upload: Path) -> None:
    """A pull, or an upload + create, of new bytes each round, that the kill interrupts (its
    errors are expected)."""
    try:
        if round_ % 2 == 0:
            body = {"model": f"{registry.host}/library/big{round_}:latest", "insecure": True}
            httpx.post(url + "/api/pull", json=body, timeout=30).read()
        else:
            digest = "sha256:" + hashlib.sha256(upload.read_bytes()).hexdigest()
            with upload.open("rb") as data:
                httpx.post(f"{url}/api/blobs/{digest}", content=data, timeout=30)
            files = {"config.json": _config_digest(url), "weights.bin": digest}
            httpx.post(url + "/api/create", json={"model": f"made-{round_}", "files": files},
                       timeout=30).read()  # fmt: skip
    except httpx.HTTPError:
        pass


def _config_digest(url: str) -> str:
    config = json.dumps({"model_type": "limner-fake"}).encode()
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    httpx.post(f"{url}/api/blobs/{digest}", content=config, timeout=30)
    return digest


def crash_rounds(tmp_path: Path, rounds: int) -> tuple[int, int]:
    """(rounds, inconsistent stores found)."""
    registry = FakeRegistry()
    registry.delay = 0.3  # each blob's body starts late: kills land while parts are open
    config = json.dumps({"model_type": "limner-fake"}).encode()
    for round_ in range(0, rounds, 2):  # new bytes for every pull
        big = random.Random(round_).randbytes(BIG)
        registry.add_manifest(f"library/big{round_}/latest", config, [(big, "weights.bin")])
    store = Store(tmp_path / "store")
    rng, bad, cut = random.Random(42), 0, 0
    try:
        for round_ in range(rounds):
            server = ServeProcess(store.root, LIMNER_PULL_PRIVATE="1")
            upload = tmp_path / "weights.bin"
            upload.write_bytes(random.Random(1000 + round_).randbytes(BIG))
            worker = threading.Thread(target=work, args=(server.url, registry, round_, upload))
            worker.start()
            time.sleep(rng.uniform(0.0, 1.2))
            server.stop()  # SIGKILL
            worker.join(30)
            problems = consistent(store)
            if problems or not listed_models_are_whole(store):
                bad += 1
                print(f"round {round_}: {problems}")
            found = check(store)
            cut += bool(found.problems or found.partial_pulls)
            check(store, repair=True)
    finally:
        registry.close()
    assert not check(store).problems  # repaired: nothing left over
    print(f"{cut} kills landed mid-write; {len(store.entries())} models completed between kills")
    return rounds, bad


def test_a_few_kills_leave_a_consistent_store(tmp_path: Path) -> None:
    tried, bad = crash_rounds(tmp_path, 6)
    print(f"crash consistency: {tried} kills, {bad} inconsistent stores")
    assert bad == 0


@pytest.mark.full  # 75 s: `make test-full-security`; six kills run in `make test`
def test_fifty_kills_at_random_points_leave_no_inconsistent_store(tmp_path: Path) -> None:
    tried, bad = crash_rounds(tmp_path, 50)
    print(f"crash consistency: {tried} kills, {bad} inconsistent stores")
    assert bad == 0


def test_limner_check_reports_and_repairs_without_losing_a_readable_manifest(
    store: Store, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from limner.cli.main import main

    monkeypatch.setenv("LIMNER_HOST", f"127.0.0.1:{free_port()}")  # no server running
    add_fake(store, "good")
    add_fake(store, "other", token_delay=0.1)
    other = store.entry(store.resolve("other")).manifest
    unique = next(layer for layer in other.layers if layer.name == "config.json")  # its own
    damaged = store.blobs.path(unique.digest)
    damaged.write_bytes(b"not what the digest says")
    broken = store.manifests / "registry.ollama.ai" / "library" / "broken" / "latest"
    broken.parent.mkdir(parents=True)
    broken.write_text("{not json")
    (store.blobs.root / ".incoming-abc").write_bytes(b"half")

    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "manifest registry.ollama.ai/library/broken/latest does not parse" in out
    assert "does not match its content; pull or create other:latest again" in out
    assert "leftover temporary blobs/.incoming-abc" in out

    assert main(["check", "--repair"]) == 1  # the damaged blob's model must be pulled again
    out = capsys.readouterr().out
    assert "moved manifest" in out and "removed damaged blob" in out
    assert (store.root / "manifests-damaged/registry.ollama.ai/library/broken/latest").is_file()
    assert not (store.blobs.root / ".incoming-abc").exists()
    assert store.find(store.resolve("good")) is not None
    assert "problem: blob" in out and "is missing" in out


def leave_leftovers(store: Store) -> list[Path]:
    """What kills leave: a blob, a manifest, a conversion and a training cut short."""
    store.blobs.root.mkdir(parents=True, exist_ok=True)
    (store.blobs.root / ".incoming-abc").write_bytes(b"half a blob")
    folder = store.manifests / "registry.ollama.ai" / "library" / "m"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".manifest-xyz").write_text("{")
    (store.root / ".training-1").mkdir()
    (store.root / ".training-1" / "checkpoint.safetensors").write_bytes(b"x")
    (store.root / ".convert-2").mkdir()
    partial = store.blobs.root / ("sha256-" + "0" * 64 + "-partial")
    partial.write_bytes(b"resumable")
    return [store.blobs.root / ".incoming-abc", folder / ".manifest-xyz",
            store.root / ".training-1", store.root / ".convert-2"]  # fmt: skip


def test_a_server_removes_leftovers_when_it_takes_the_store(store: Store) -> None:
    from helpers import ThreadServer
    from limner.scheduler import Scheduler

    left = leave_leftovers(store)
    with ThreadServer(Scheduler(store)):
        assert not any(path.exists() for path in left)
        assert store.in_use()
    assert not store.in_use()
    assert list(store.blobs.root.glob("*-partial")), "a partial pull is kept for its resume"


def test_a_second_server_leaves_the_first_ones_files_alone(store: Store) -> None:
    from helpers import ThreadServer
    from limner.scheduler import Scheduler

    held = store.hold()  # another server, in this test's place
    assert held is not None
    left = leave_leftovers(store)
    with ThreadServer(Scheduler(store)):
        assert all(path.exists() for path in left)
    held.close()


def test_limner_check_without_a_server_reports_fresh_leftovers(store: Store, capsys: Any) -> None:
    from limner.cli.main import main

    add_fake(store, "good")
    leave_leftovers(store)
    assert main(["check"]) == 1  # written a moment ago, and yet no server is writing them
    out = capsys.readouterr().out
    assert "leftover temporary .training-1" in out and "the store is consistent" not in out
