"""Pulling from an Ollama (Docker v2) registry: a fake registry on loopback, limner's server.

The registry serves a fake-engine model (so a pulled model can answer), and misbehaves on
demand: token auth, a CDN redirect, a dropped connection, a corrupted byte, lying manifests.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import io
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import httpx
import ollama
import pytest

from fake_registry import FakeRegistry, sha
from helpers import add_fake, picture
from limner.cli.formats import human_bytes
from limner.cli.main import main
from limner.cli.models import PullPrinter
from limner.client import AsyncClient, Client
from limner.errors import InvalidRequest, LimnerError
from limner.names import ModelName
from limner.store import Store, registry
from limner.store.manifests import CONFIG_TYPE, MANIFEST_TYPE, MEDIA
from limner.types import ProgressResponse


@pytest.fixture
def reg() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    yield server
    server.close()


@pytest.fixture
def upstream(tmp_path: Path) -> Store:
    """Where the published model is made (through /api/create's path), not limner's store."""
    source = Store(tmp_path / "upstream")
    add_fake(source, "fake")
    return source


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts of 4-8 KB, so a 40 KB blob comes in 10 ranged parts; no retry back-off."""
    monkeypatch.setattr(registry, "MIN_PART_BYTES", 4000)
    monkeypatch.setattr(registry, "MAX_PART_BYTES", 8000)
    monkeypatch.setattr(registry, "RETRY_DELAY", 0.01)


BIG = os.urandom(40_000)
HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
FAKE_CONFIG = json.dumps({"model_format": "fake", "capabilities": ["completion"]}).encode()


FAKE_JSON = b'{"model_type": "limner-fake"}'


def big_model(reg: FakeRegistry, as_name: str = "library/big/latest") -> bytes:
    """Layers: config.json, a 40 KB blob (ten 4 KB parts with `small_parts`); then the config."""
    return reg.add_manifest(
        as_name, FAKE_CONFIG, [(FAKE_JSON, "config.json"), (BIG, "weights.bin")]
    )


def steps(store: Store, name: str, insecure: bool = True) -> list[ProgressResponse]:
    return list(registry.pull(store, name, insecure=insecure))


def statuses(lines: list[Any]) -> list[str]:
    """The statuses in order, each run of repeats once."""
    out: list[str] = []
    for line in lines:
        status = line["status"] if isinstance(line, dict) else line.status
        if not out or out[-1] != status:
            out.append(status)
    return out


def leftovers(store: Store) -> list[str]:
    blobs = store.root / "blobs"
    return sorted(p.name for p in blobs.iterdir() if "partial" in p.name) if blobs.is_dir() else []


def files_outside(tmp_path: Path, store: Store) -> set[Path]:
    return {p for p in tmp_path.rglob("*") if store.root not in p.parents and p != store.root}


# --- the happy path, through the official client ------------------------------------------


def test_the_ollama_client_pulls_with_ollamas_statuses_and_the_model_answers(
    server: Any, store: Store, reg: FakeRegistry, upstream: Store
) -> None:
    raw = reg.publish(upstream, "fake")
    manifest = json.loads(raw)
    layer, config = manifest["layers"][0]["digest"], manifest["config"]["digest"]
    client = ollama.Client(host=server.url)
    name = f"{reg.host}/library/fake:latest"

    lines = list(client.pull(name, insecure=True, stream=True))
    assert statuses(lines) == [
        "pulling manifest", f"pulling {layer[7:19]}", f"pulling {config[7:19]}",
        "verifying sha256 digest", "writing manifest", "success",
    ]  # fmt: skip
    for digest in (layer, config):
        mine = [line for line in lines if line.digest == digest]
        size = len(reg.blobs[digest])
        assert all(line.total == size for line in mine) and mine[-1].completed == size
    assert all(line.completed != 0 for line in lines)  # 0 is left out, as Ollama does

    listed = client.list().models
    assert [m.model for m in listed] == [name]
    assert listed[0].digest == hashlib.sha256(raw).hexdigest()  # the manifest kept verbatim
    reply = client.generate(model=name, prompt="hello registry")
    assert reply.response == "I see 0 picture(s). You said: hello registry"

    served = sum(reg.served.values())
    again = list(client.pull(name, insecure=True, stream=True))
    per_digest = Counter(line.digest for line in again if line.digest)
    assert per_digest == {layer: 1, config: 1}  # cached: one line each...
    assert all(line.completed == line.total for line in again if line.digest)  # ...complete
    assert sum(reg.served.values()) == served and statuses(again)[-1] == "success"


BAKLLAVA_TEMPLATE = "{{ .System }} USER: {{ .Prompt }} ASSSISTANT:"  # sic, as Ollama ships it


def publish_gguf(reg: FakeRegistry, tmp_path: Path, as_name: str) -> None:
    """The tiny LLaVA as GGUF, laid out as ollama.com/library/bakllava is: unnamed model and
    projector layers, a Go template, parameters, and a config with only Ollama's fields."""
    from limner.tiny import write_tiny_llava_gguf

    folder = write_tiny_llava_gguf(tmp_path / "gguf", quantize="q8_0")
    config = json.dumps({
        "model_format": "gguf", "model_family": "llama", "model_families": ["llama", "clip"],
        "model_type": "148K", "file_type": "Q8_0", "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    }).encode()  # fmt: skip
    layers = [
        ((folder / "model.gguf").read_bytes(), f"{MEDIA}model"),
        ((folder / "mmproj.gguf").read_bytes(), f"{MEDIA}projector"),
        (BAKLLAVA_TEMPLATE.encode(), f"{MEDIA}template"),
        (b'{"num_ctx": 4096, "stop": ["</s>", "USER:"]}', f"{MEDIA}params"),
    ]
    for data in [config, *(content for content, _ in layers)]:
        reg.blobs[sha(data)] = data
    reg.manifests[as_name] = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": media, "digest": sha(data), "size": len(data)}
                   for data, media in layers],
    }).encode()  # fmt: skip


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed")
def test_a_pulled_gguf_vision_model_answers_about_a_picture_on_llama_cpp(
    server: Any, reg: FakeRegistry, tmp_path: Path
) -> None:
    publish_gguf(reg, tmp_path, "library/bakllava/latest")
    client = ollama.Client(host=server.url)
    name = f"{reg.host}/library/bakllava:latest"
    lines = list(client.pull(name, insecure=True, stream=True))
    assert statuses(lines)[-1] == "success" and len({line.digest for line in lines}) == 6

    shown = client.show(name)
    assert shown.capabilities is not None and "vision" in shown.capabilities
    assert shown.details.format == "gguf" and shown.details.families == ["llama", "clip"]
    assert shown.modelinfo is not None and shown.modelinfo["llama.block_count"] == 2
    projector = httpx.post(f"{server.url}/api/show", json={"model": name}).json()["projector_info"]
    assert projector["clip.vision.image_tokens"] == 576  # the exact cost of a picture
    assert shown.template == BAKLLAVA_TEMPLATE

    reply = client.chat(
        model=name,
        messages=[{"role": "user", "content": "What is this?", "images": [picture()]}],
        options={"num_predict": 6, "temperature": 0},
    )
    assert reply.done_reason in ("stop", "length")
    assert reply.prompt_eval_count is not None and reply.prompt_eval_count > 576
    running = client.ps().models
    assert [(m.model, m.context_length) for m in running] == [(name, 4096)]  # the params' window
    assert running[0].size is not None and running[0].size > 4096 * 2 * 2 * 16 * 2 * 2


def test_stream_false_answers_success_and_the_sdk_pulls(
    server: Any, store: Store, reg: FakeRegistry, upstream: Store
) -> None:
    reg.publish(upstream, "fake", "me/fake/v1")
    reply = httpx.post(f"{server.url}/api/pull",
                       json={"name": f"{reg.host}/me/fake:v1", "insecure": True, "stream": False})  # fmt: skip
    assert reply.status_code == 200 and reply.json() == {"status": "success"}
    assert reply.headers["content-type"].startswith("application/json")
    assert store.find(ModelName.parse(f"{reg.host}/me/fake:v1")) is not None

    sdk = Client(server.url)
    done = sdk.pull(f"{reg.host}/me/fake:v1", insecure=True)
    assert isinstance(done, ProgressResponse) and done.status == "success"
    streamed = cast("Iterator[ProgressResponse]",
                    sdk.pull(f"{reg.host}/me/fake:v1", insecure=True, stream=True))  # fmt: skip
    assert [s.status for s in streamed][-1] == "success"


@pytest.mark.anyio
async def test_the_async_client_pulls(server: Any, reg: FakeRegistry, upstream: Store) -> None:
    reg.publish(upstream, "fake")
    async with AsyncClient(server.url) as sdk:
        done = await sdk.pull(f"{reg.host}/library/fake", insecure=True)
        assert isinstance(done, ProgressResponse) and done.status == "success"


def test_an_unknown_model_is_ollamas_error(server: Any, reg: FakeRegistry) -> None:
    url = f"{server.url}/api/pull"
    with httpx.stream(
        "POST", url, json={"model": f"{reg.host}/library/ghost", "insecure": True}
    ) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines == [{"status": "pulling manifest"},
                     {"error": "pull model manifest: file does not exist"}]  # fmt: skip
    reply = httpx.post(
        url, json={"model": f"{reg.host}/library/ghost", "insecure": True, "stream": False}
    )
    assert reply.status_code == 500
    assert reply.json() == {"error": "pull model manifest: file does not exist"}
    with pytest.raises(ollama.ResponseError, match="pull model manifest: file does not exist"):
        for _ in ollama.Client(host=server.url).pull(
            f"{reg.host}/library/ghost", insecure=True, stream=True
        ):
            pass


def test_bad_names_and_plain_http_are_refused_before_the_stream(server: Any) -> None:
    url = f"{server.url}/api/pull"
    bad = httpx.post(url, json={"model": "a/b/c/d"})
    assert bad.status_code == 400 and bad.json() == {"error": "invalid model name"}
    assert httpx.post(url, json={}).json() == {"error": "invalid model name"}
    plain = httpx.post(url, json={"model": "http://127.0.0.1:1/ns/m"})
    assert plain.status_code == 400 and plain.json() == {"error": "insecure protocol http"}


def test_the_default_registry_is_ollamas_over_https(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def fake_open(self: Any, method: str, url: str, headers: dict[str, str]) -> Any:
        seen.append(url)
        raise LimnerError("stop here")

    monkeypatch.setattr(registry._Registry, "open", fake_open)
    with pytest.raises(LimnerError, match="stop here"):
        steps(store, "llava", insecure=False)
    assert seen == ["https://registry.ollama.ai/v2/library/llava/manifests/latest"]
    assert registry.user_agent().startswith("limner/")


# --- authentication and redirects ------------------------------------------------------------


def test_token_auth_gets_a_token_from_the_realm_and_retries(
    store: Store, reg: FakeRegistry, upstream: Store
) -> None:
    reg.publish(upstream, "fake")
    reg.token = "s3cret.token"
    assert statuses(steps(store, f"{reg.host}/library/fake"))[-1] == "success"
    token_requests = [r for r in reg.requests if r[1].startswith("/token")]
    assert len(token_requests) == 1
    query = parse_qs(urlsplit(token_requests[0][1]).query)
    assert query["scope"] == ["repository:library/fake:pull"] and query["service"] == ["test"]
    assert "authorization" not in token_requests[0][2]
    v2 = [r for r in reg.requests if r[1].startswith("/v2/")]
    assert v2[0][2].get("authorization") is None  # the first try is anonymous...
    assert all(r[2]["authorization"] == "Bearer s3cret.token" for r in v2[1:])  # ...then bearer
    assert all(r[2]["user-agent"].startswith("limner/") for r in reg.requests)


def test_a_realm_on_another_host_is_refused(
    store: Store, reg: FakeRegistry, upstream: Store
) -> None:
    other = FakeRegistry()
    try:
        reg.publish(upstream, "fake")
        reg.token = "s3cret"
        other.token = "s3cret"
        reg.realm = f"{other.url}/token"
        with pytest.raises(LimnerError, match="does not match the registry host"):
            steps(store, f"{reg.host}/library/fake")
        assert other.requests == []
        assert store.entries() == []
    finally:
        other.close()


def test_a_blob_redirect_to_another_host_does_not_carry_the_token(
    store: Store, reg: FakeRegistry, upstream: Store
) -> None:
    cdn = FakeRegistry()
    try:
        reg.publish(upstream, "fake")
        cdn.blobs = reg.blobs
        reg.token = "s3cret"
        reg.redirect_to = cdn.url
        assert statuses(steps(store, f"{reg.host}/library/fake"))[-1] == "success"
        assert cdn.requests and all("authorization" not in r[2] for r in cdn.requests)
        blob_requests = [r for r in reg.requests if "/blobs/" in r[1]]
        assert blob_requests and all(
            r[2].get("authorization") == "Bearer s3cret" for r in blob_requests
        )
        assert sum(cdn.served.values()) == sum(len(b) for b in reg.blobs.values())
    finally:
        cdn.close()


# --- interrupted, corrupted and concurrent downloads ----------------------------------------


def test_a_cut_pull_resumes_without_downloading_finished_parts_again(
    store: Store, reg: FakeRegistry, small_parts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "PART_RETRIES", 0)
    monkeypatch.setattr(registry, "PARALLEL_PARTS", 1)  # parts in order: the cut is exact
    big_model(reg)
    digest = sha(BIG)
    reg.cut_after = len(FAKE_JSON) + 20_500  # the first layer, then 5 parts of 4 KB and 500 B
    name = f"{reg.host}/library/big"

    with pytest.raises(LimnerError, match=r"pull [0-9a-f]{12}: part 5 failed"):
        steps(store, name)
    assert reg.served[digest] == 20_500
    assert store.entries() == [] and not store.blobs.exists(digest)
    assert len(leftovers(store)) == 1 + 10  # the partial file and ten part files
    kept = [json.loads(p.read_text()) for p in (store.root / "blobs").glob("*-partial-*")]
    assert sorted((part["N"], part["Completed"]) for part in kept) == [
        (n, 4000 if n < 5 else 500 if n == 5 else 0) for n in range(10)
    ]

    reg.cut_after = None
    assert statuses(steps(store, name))[-1] == "success"
    assert reg.served[digest] == len(BIG)  # 20.5 KB, then the other 19.5 KB: nothing twice
    assert store.blobs.path(digest).read_bytes() == BIG and leftovers(store) == []


def test_parallel_parts_resume_from_their_progress_files(
    store: Store, reg: FakeRegistry, small_parts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "PART_RETRIES", 0)
    big_model(reg)
    digest = sha(BIG)
    reg.cut_after = len(FAKE_JSON) + 21_000
    name = f"{reg.host}/library/big"
    with pytest.raises(LimnerError):
        steps(store, name)
    kept = sum(json.loads(p.read_text())["Completed"]
               for p in (store.root / "blobs").glob("*-partial-*"))  # fmt: skip
    first = reg.served[digest]
    reg.cut_after = None
    assert statuses(steps(store, name))[-1] == "success"
    assert reg.served[digest] - first == len(BIG) - kept  # only what no part file recorded
    assert store.blobs.path(digest).read_bytes() == BIG and leftovers(store) == []


def test_a_corrupted_byte_is_a_digest_mismatch_and_never_lands(
    store: Store, reg: FakeRegistry, small_parts: None
) -> None:
    big_model(reg)
    digest = sha(BIG)
    corrupt = bytearray(BIG)
    corrupt[12_345] ^= 0xFF
    reg.blobs[digest] = bytes(corrupt)
    name = f"{reg.host}/library/big"
    with pytest.raises(LimnerError) as caught:
        steps(store, name)
    assert str(caught.value) == (
        f"digest mismatch, file must be downloaded again: want {digest}, got {sha(bytes(corrupt))}"
    )
    assert not store.blobs.exists(digest) and leftovers(store) == [] and store.entries() == []
    reg.blobs[digest] = BIG
    assert statuses(steps(store, name))[-1] == "success"


def test_concurrent_pulls_share_one_download(
    server: Any, store: Store, reg: FakeRegistry, small_parts: None
) -> None:
    big_model(reg)
    reg.barrier = threading.Barrier(2)  # both pulls read the manifest, then race for blobs
    reg.delay = 0.05
    name = f"{reg.host}/library/big"
    results: list[list[str]] = []

    def one() -> None:
        lines = Client(server.url).pull(name, insecure=True, stream=True)
        results.append([s.status for s in cast("Iterator[ProgressResponse]", lines)])

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 2 and all(r[-1] == "success" for r in results)
    assert reg.served == {digest: len(data) for digest, data in reg.blobs.items()}
    assert registry.downloads_in_progress() == 0 and leftovers(store) == []


def test_a_full_disk_mid_pull_leaves_no_model_and_the_next_pull_works(
    server: Any, store: Store, reg: FakeRegistry, small_parts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    big_model(reg)
    real = registry._write_at
    writes = 0

    def full(fd: int, data: bytes, offset: int) -> None:
        nonlocal writes
        writes += 1
        if writes > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data, offset)

    monkeypatch.setattr(registry, "_write_at", full)
    name = f"{reg.host}/library/big"
    with httpx.stream(
        "POST", f"{server.url}/api/pull", json={"model": name, "insecure": True}
    ) as r:
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert "not enough disk space: need " in lines[-1]["error"]
    assert httpx.get(f"{server.url}/api/tags").json() == {"models": []}

    monkeypatch.setattr(registry, "_write_at", real)
    assert Client(server.url).pull(name, insecure=True).status == "success"  # type: ignore[union-attr]
    assert [m["model"] for m in httpx.get(f"{server.url}/api/tags").json()["models"]] == [
        f"{reg.host}/library/big:latest"
    ]


def test_a_client_that_goes_away_stops_the_download_and_the_next_pull_resumes(
    server: Any, store: Store, reg: FakeRegistry, small_parts: None
) -> None:
    big_model(reg)
    reg.delay = 0.3  # every part takes a while
    name = f"{reg.host}/library/big"
    with httpx.stream(
        "POST", f"{server.url}/api/pull", json={"model": name, "insecure": True}
    ) as r:
        for line in r.iter_lines():
            if json.loads(line).get("digest") == sha(BIG):
                break  # the big blob is coming: hang up
    deadline = time.monotonic() + 10
    while registry.downloads_in_progress() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert registry.downloads_in_progress() == 0  # nobody waits on it: it stopped...
    assert not store.blobs.exists(sha(BIG)) and leftovers(store)  # ...unfinished, resumable
    assert store.entries() == []
    reg.delay = 0
    assert Client(server.url).pull(name, insecure=True).status == "success"  # type: ignore[union-attr]
    assert reg.served[sha(BIG)] == len(BIG) and leftovers(store) == []


# --- manifests that lie --------------------------------------------------------------------


def lying(reg: FakeRegistry, change: Any) -> None:
    manifest = json.loads(big_model(reg, "library/evil/latest"))
    change(manifest)
    reg.manifests["library/evil/latest"] = json.dumps(manifest).encode()


def climb(manifest: dict[str, Any]) -> None:
    manifest["layers"][0]["digest"] = "sha256:../../../../escaped"


def climb_dash(manifest: dict[str, Any]) -> None:
    manifest["config"]["digest"] = "sha256-" + "../" * 20 + "x" * 4


def smaller(manifest: dict[str, Any]) -> None:
    manifest["layers"][1]["size"] -= 1


def larger(manifest: dict[str, Any]) -> None:
    manifest["layers"][1]["size"] += 1000


def negative(manifest: dict[str, Any]) -> None:
    manifest["layers"][1]["size"] = -5


def enormous(manifest: dict[str, Any]) -> None:
    manifest["layers"][1]["size"] = 10**18


def many_layers(manifest: dict[str, Any]) -> None:
    manifest["layers"] = manifest["layers"][:1] * 10_000


def not_a_manifest(manifest: dict[str, Any]) -> None:
    del manifest["config"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (climb, "invalid digest 'sha256:../../../../escaped'"),
        (climb_dash, "invalid digest"),
        (smaller, "digest mismatch, file must be downloaded again"),
        (larger, "part 10 failed: the connection closed before the part was complete"),
        (negative, "invalid size -5"),
        (enormous, "invalid size 1000000000000000000"),
        (many_layers, "10000 layers, more than the 1000 allowed"),
        (not_a_manifest, "not a Docker v2 manifest"),
    ],
)
def test_lying_manifests_are_refused_and_nothing_is_written(
    tmp_path: Path, store: Store, reg: FakeRegistry, small_parts: None,
    monkeypatch: pytest.MonkeyPatch, change: Any, message: str,
) -> None:  # fmt: skip
    monkeypatch.setattr(registry, "PART_RETRIES", 0)
    lying(reg, change)
    before = files_outside(tmp_path, store)
    with pytest.raises(LimnerError, match=re.escape(message)):
        steps(store, f"{reg.host}/library/evil")
    assert files_outside(tmp_path, store) == before
    assert store.entries() == [] and not store.blobs.exists(sha(BIG))
    if change is not larger:  # a short download stays resumable; the others leave nothing
        assert leftovers(store) == []


def test_a_huge_manifest_is_refused_unread(store: Store, reg: FakeRegistry) -> None:
    reg.manifests["library/huge/latest"] = b" " * (registry.MAX_MANIFEST_BYTES + 1)
    with pytest.raises(LimnerError, match="the manifest is larger than 4194304 bytes"):
        steps(store, f"{reg.host}/library/huge")
    assert store.entries() == []


def test_a_registry_sending_more_than_declared_is_refused(
    store: Store, reg: FakeRegistry, small_parts: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "MIN_PART_BYTES", 100_000)  # one part: a 200 is acceptable...
    monkeypatch.setattr(registry, "MAX_PART_BYTES", 200_000)
    reg.ignore_range = True  # ...but not a body longer than the declared size
    lying(reg, smaller)
    with pytest.raises(LimnerError, match="sent more bytes than"):
        steps(store, f"{reg.host}/library/evil")
    assert store.entries() == [] and leftovers(store) == [] and not store.blobs.exists(sha(BIG))


def test_a_cached_blob_of_the_wrong_size_is_refused(store: Store, reg: FakeRegistry) -> None:
    lying(reg, smaller)
    store.blobs.write_bytes(BIG)
    with pytest.raises(
        LimnerError, match="the stored blob has 40000 bytes, the manifest says 39999"
    ):
        steps(store, f"{reg.host}/library/evil")


def test_part_sizes_follow_ollama() -> None:
    mb = 1000 * 1000
    assert registry.part_size(10 * mb) == 100 * mb
    assert registry.part_size(3200 * mb) == 200 * mb
    assert registry.part_size(100_000 * mb) == 1000 * mb


def test_the_insecure_check_is_in_the_store_module(store: Store) -> None:
    with pytest.raises(InvalidRequest, match="insecure protocol http"):
        registry.pull(store, "http://example.com/ns/m")


# --- the CLI -------------------------------------------------------------------------------


def test_limner_pull_prints_ollamas_progress(
    server: Any, store: Store, reg: FakeRegistry, upstream: Store,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    manifest = json.loads(reg.publish(upstream, "fake"))
    monkeypatch.setenv("LIMNER_HOST", server.url)
    assert main(["pull", f"{reg.host}/library/fake", "--insecure"]) == 0
    out = capsys.readouterr().out.splitlines()
    layer, config = manifest["layers"][0], manifest["config"]
    assert out == [
        "pulling manifest",
        f"pulling {layer['digest'][7:19]}: 100% {human_bytes(layer['size'])}",
        f"pulling {config['digest'][7:19]}: 100% {human_bytes(config['size'])}",
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    assert main(["pull", f"{reg.host}/library/ghost", "--insecure"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "pulling manifest\n"
    assert captured.err == "Error: pull model manifest: file does not exist\n"


def test_the_progress_bar_on_a_terminal() -> None:
    out = io.StringIO()
    printer = PullPrinter(out, tty=True)
    printer.show(ProgressResponse(status="pulling manifest"))
    for done in (None, 500_000_000, 1_000_000_000):
        printer.show(ProgressResponse(status="pulling 0123456789ab", digest="sha256:0123456789ab",
                                      total=1_000_000_000, completed=done))  # fmt: skip
    printer.show(ProgressResponse(status="success"))
    text = out.getvalue()
    assert text.startswith("pulling manifest\n\rpulling 0123456789ab:   0% ▕")
    assert " 50% ▕████████████             ▏ 500 MB/1 GB" in text
    assert text.endswith("100% ▕█████████████████████████▏ 1 GB\x1b[K\nsuccess\n")


def test_a_registry_that_cannot_be_reached_is_named_with_the_reason(server: Any) -> None:
    from helpers import free_port

    port = free_port()
    for name, says in ((f"127.0.0.1:{port}/library/see", "127.0.0.1 refused the connection"),
                       ("nosuchhost.invalid/library/see",
                        "cannot look up nosuchhost.invalid: this machine seems to be offline")):  # fmt: skip
        reply = httpx.post(
            f"{server.url}/api/pull", json={"model": name, "insecure": True, "stream": False}
        )
        assert reply.status_code == 502, reply.text
        assert says in reply.json()["error"]
