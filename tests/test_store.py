"""The store: Ollama's layout, atomic writes, digests and names that cannot escape it."""

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from helpers import add_fake, add_model
from limner.errors import InvalidRequest, ModelNotFound, NotFound, UnsafeWeights
from limner.names import ModelName
from limner.store import Store
from limner.store.blobs import normalize
from limner.store.create import create
from limner.store.described import stored_config
from limner.store.formats import sniff
from limner.types import CreateRequest


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_blobs_are_named_by_their_hash(store: Store) -> None:
    digest, size = store.blobs.write_bytes(b"hello")
    assert digest == sha(b"hello") and size == 5
    assert store.blobs.path(digest) == store.root / "blobs" / ("sha256-" + digest[7:])
    assert store.blobs.path(digest).read_bytes() == b"hello"


def test_a_wrong_digest_stores_nothing(store: Store) -> None:
    with pytest.raises(InvalidRequest, match="digest mismatch"):
        store.blobs.write([b"hello"], expected=sha(b"other"))
    assert list((store.root / "blobs").iterdir()) == []


def test_an_interrupted_write_leaves_no_file(store: Store) -> None:
    def chunks():
        yield b"part"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.blobs.write(chunks())
    assert list((store.root / "blobs").iterdir()) == []


@pytest.mark.parametrize(
    "digest",
    ["sha256:../../etc/passwd", "sha256-" + "0" * 63, "sha256:" + "G" * 64, "md5:" + "0" * 64,
     "sha256:" + "0" * 64 + "/../x", "../sha256-" + "0" * 64],
)  # fmt: skip
def test_digests_that_are_not_digests_never_become_paths(store: Store, digest: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid digest"):
        store.blobs.path(digest)


def test_both_digest_separators_are_accepted() -> None:
    assert normalize("sha256-" + "a" * 64) == normalize("sha256:" + "a" * 64)


def test_manifests_use_ollamas_layout_and_list_newest_first(store: Store) -> None:
    add_fake(store, "first")
    add_fake(store, "me/second:v2")
    path = store.root / "manifests" / "registry.ollama.ai" / "me" / "second" / "v2"
    manifest = json.loads(path.read_text())
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["layers"][0]["name"] == "config.json"
    os.utime(path, (1, 1))
    assert [e.name.display() for e in store.entries()] == ["first:latest", "me/second:v2"]


def test_lookup_ignores_case_and_keeps_the_stored_casing(store: Store) -> None:
    add_fake(store, "MixedCase:Tag")
    assert store.resolve("mixedcase:tag") == ModelName(
        "registry.ollama.ai", "library", "MixedCase", "Tag"
    )
    with pytest.raises(ModelNotFound, match="model 'nothere' not found"):
        store.resolve("nothere")


def test_manifest_writes_are_atomic(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    add_fake(store, "keep")
    before = store.entry(store.resolve("keep")).manifest.encode()

    def crash(*args: object) -> None:
        raise OSError("disk died mid-rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.copy(store.resolve("keep"), ModelName.parse("keep"))
    assert store.entry(store.resolve("keep")).manifest.encode() == before
    leftovers = [p for p in (store.root / "manifests").rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_delete_removes_only_blobs_no_other_model_uses(store: Store) -> None:
    add_fake(store, "a")
    add_model(
        store, "b", {"config.json": json.dumps({"model_type": "limner-fake", "x": 1}).encode()}
    )
    store.copy(store.resolve("a"), ModelName.parse("a-copy"))
    shared = store.entry(store.resolve("a")).manifest.digests()
    own_b = store.entry(store.resolve("b")).manifest.digests() - shared
    store.delete(store.resolve("b"))
    assert all(not store.blobs.exists(d) for d in own_b)
    store.delete(store.resolve("a"))
    assert all(store.blobs.exists(d) for d in shared)  # a-copy still uses them
    store.delete(store.resolve("a-copy"))
    assert store.blobs.digests() == set()
    assert not (store.root / "manifests" / "registry.ollama.ai").exists()


def test_delete_keeps_uploaded_blobs_not_yet_in_a_model(store: Store) -> None:
    add_fake(store, "a")
    pending, _ = store.blobs.write_bytes(b"uploaded for a later create")
    store.delete(store.resolve("a"))
    assert store.blobs.exists(pending)


def test_an_existing_ollama_folder_is_read_as_is(tmp_path: Path) -> None:
    root = tmp_path / "ollama"
    blobs, config = root / "blobs", b'{"model_format":"gguf","model_family":"llama"}'
    blobs.mkdir(parents=True)
    (blobs / ("sha256-" + sha(config)[7:])).write_bytes(config)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": sha(config), "size": len(config)},
                "layers": []}  # fmt: skip
    path = root / "manifests" / "registry.ollama.ai" / "library" / "bakllava" / "latest"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))
    store = Store(root)
    [entry] = store.entries()
    assert entry.name.display() == "bakllava:latest"
    assert entry.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert stored_config(store, entry.manifest)["model_family"] == "llama"


@pytest.mark.parametrize(
    ("head", "kind"),
    [(b"PK\x03\x04rest", "pickle"), (b"\x80\x04\x95....", "pickle"), (b"\x80\x02}q\x00", "pickle"),
     (b"GGUF\x03\x00\x00\x00", "gguf"), (b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "safetensors"), (b'{"a": 1}', "other")],
)  # fmt: skip
def test_weights_are_recognised_by_content(tmp_path: Path, head: bytes, kind: str) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(head + b"\x00" * 16)
    assert sniff(path) == kind


def test_pickle_weights_are_refused_whatever_their_name(store: Store) -> None:
    config = store.blobs.write_bytes(json.dumps({"model_type": "llava"}).encode())[0]
    pickled = store.blobs.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)[0]
    request = CreateRequest(
        model="evil", files={"config.json": config, "model.safetensors": pickled}
    )
    with pytest.raises(UnsafeWeights, match="pickle"):
        create(store, request)
    assert store.entries() == []


@pytest.mark.parametrize("name", ["../escape.json", "/abs/config.json", "a/../../b", "C:\\x", ""])
def test_file_names_must_stay_inside_the_model(store: Store, name: str) -> None:
    config = store.blobs.write_bytes(b'{"model_type": "limner-fake"}')[0]
    with pytest.raises(InvalidRequest, match="relative"):
        create(store, CreateRequest(model="m", files={"config.json": config, name: config}))


def test_create_from_a_model_adds_layers_and_merges_parameters(store: Store) -> None:
    add_fake(store, "base")
    for _ in create(
        store,
        CreateRequest(
            model="tuned", **{"from": "base"}, system="Be brief.", parameters={"temperature": 0.1}
        ),
    ):
        pass
    for _ in create(
        store, CreateRequest(model="tuned2", **{"from": "tuned"}, parameters={"stop": ["x"]})
    ):
        pass
    manifest = store.entry(store.resolve("tuned2")).manifest
    assert store.json_layer(manifest, "application/vnd.ollama.image.params") == {
        "temperature": 0.1,
        "stop": ["x"],
    }
    assert store.text(manifest, "application/vnd.ollama.image.system") == "Be brief."
    assert stored_config(store, manifest)["parent_model"] == "tuned:latest"


def test_a_missing_blob_is_named(store: Store) -> None:
    with pytest.raises(InvalidRequest, match="not found; upload it first"):
        create(store, CreateRequest(model="m", files={"config.json": "sha256:" + "1" * 64}))


def test_reading_a_missing_blob_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.blobs.open_path("sha256:" + "2" * 64)


def test_a_create_beside_a_delete_of_a_model_sharing_its_new_layer_succeeds(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_fake(store, "see")
    list(create(store, CreateRequest(model="racy", **{"from": "see"}, system="be brief")))
    write_bytes, deleting = store.blobs.write_bytes, []

    def write_then_delete(data: bytes) -> tuple[str, int]:
        """Once racy2's system layer is written, racy (which has the same one) is deleted:
        that delete must wait for racy2's manifest, or it prunes the layer under it."""
        written = write_bytes(data)
        if not deleting:
            deleting.append(threading.Thread(target=store.delete, args=[ModelName.parse("racy")]))
            deleting[0].start()
            deleting[0].join(0.5)
        return written

    monkeypatch.setattr(store.blobs, "write_bytes", write_then_delete)
    list(create(store, CreateRequest(model="racy2", **{"from": "see"}, system="be brief")))
    deleting[0].join()
    assert store.find(ModelName.parse("racy")) is None
    for digest in store.entry(ModelName.parse("racy2")).manifest.digests():
        store.blobs.open_path(digest)  # every layer racy2 names is there


def test_a_mistyped_name_is_not_found_with_the_nearest_stored_name(store: Store) -> None:
    add_fake(store, "llava")
    add_fake(store, "team/sdxl-turbo:fp16")
    with pytest.raises(ModelNotFound, match=r"^model 'lava' not found; did you mean 'llava'\?$"):
        store.resolve("lava")
    with pytest.raises(ModelNotFound, match=r"did you mean 'team/sdxl-turbo:fp16'\?$"):
        store.resolve("team/sdxl-trubo:fp16")
    with pytest.raises(ModelNotFound, match=r"^model 'mistral' not found$"):
        store.resolve("mistral")  # nothing near: no guess
