"""LoRA adapters on drawing models: a LoRA trained by limner (diffusers keys) or in kohya's
format becomes an adapter layer, fused into the weights at the model's adapter_scale."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers import add_fake, add_tiny_sd
from limner.client import Client
from limner.errors import InvalidRequest, UnsafeWeights
from limner.names import ModelName
from limner.store import Store
from limner.store.create import create
from limner.tiny import write_tiny_sd
from limner.types import CreateRequest

pytest.importorskip("peft")

from limner.engines.lora import train
from limner.engines.training import Example, TrainRequest


def pixels(png: bytes) -> bytes:
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four steps at a high learning rate on the tiny SD: a LoRA that visibly changes it."""
    root = tmp_path_factory.mktemp("lora")
    model = write_tiny_sd(root / "sd", seed=0, ip_adapter=False)
    picture = io.BytesIO()
    Image.new("RGB", (32, 32), "orange").save(picture, "PNG")
    examples = [Example("a.png", picture.getvalue(), "a zq square")]
    request = TrainRequest(resolution=32, precision="fp32", learning_rate=5e-2, steps=4)
    for _ in train(model, examples, request, root / "out", lambda: False):
        pass
    return root / "out"


def store_with_adapters(store: Store, lora_files: Path, tmp_path: Path) -> None:
    add_tiny_sd(store, tmp_path)
    blobs = {
        p.name: store.blobs.write_bytes(p.read_bytes())[0] for p in lora_files.glob("*.safetensors")
    }
    for name, adapter, scale in (("sd-lora", "pytorch_lora_weights.safetensors", 1.0),
                                 ("sd-kohya", "lora_kohya.safetensors", 1.0),
                                 ("sd-off", "pytorch_lora_weights.safetensors", 0.0)):  # fmt: skip
        request = CreateRequest(model=name, **{"from": "sd"}, adapters={adapter: blobs[adapter]},
                                parameters={"adapter_scale": scale})  # fmt: skip
        for _ in create(store, request):
            pass


@pytest.mark.slow
def test_a_lora_changes_what_the_model_draws_at_its_scale(
    server: Any, store: Store, lora_files: Path, tmp_path: Path
) -> None:
    store_with_adapters(store, lora_files, tmp_path)
    sdk = Client(server.url)
    drawn = {
        name: pixels(sdk.generate_image(name, "a zq square", steps=2, seed=7).png)
        for name in ("sd", "sd-lora", "sd-kohya", "sd-off")
    }
    assert drawn["sd-lora"] != drawn["sd"]
    assert drawn["sd-kohya"] != drawn["sd"]  # kohya's keys load too
    assert drawn["sd-off"] == drawn["sd"]  # scale 0: the LoRA adds nothing
    manifest = store.entry(ModelName.parse("sd-lora")).manifest
    adapters = [layer.name for layer in manifest.layers if layer.mediaType.endswith(".adapter")]
    assert adapters == ["adapters/pytorch_lora_weights.safetensors"]


def test_adapters_must_be_safetensors_loras_for_a_drawing_model(
    store: Store, lora_files: Path, tmp_path: Path
) -> None:
    add_tiny_sd(store, tmp_path)
    add_fake(store, "chat")
    lora = store.blobs.write_bytes((lora_files / "pytorch_lora_weights.safetensors").read_bytes())[
        0
    ]
    pickle = store.blobs.write_bytes(b"\x80\x04K\x01.")[0]
    not_lora = store.blobs.write_bytes(
        (tmp_path / "sd" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    )[0]

    def attempt(base: str, adapters: dict[str, str]) -> None:
        for _ in create(store, CreateRequest(model="x", **{"from": base}, adapters=adapters)):
            pass

    with pytest.raises(UnsafeWeights, match="pickle"):
        attempt("sd", {"style.safetensors": pickle})
    with pytest.raises(InvalidRequest, match="not a LoRA"):
        attempt("sd", {"vae.safetensors": not_lora})
    with pytest.raises(InvalidRequest, match="does not draw"):
        attempt("chat", {"style.safetensors": lora})
    with pytest.raises(InvalidRequest, match=r"\.safetensors file"):
        attempt("sd", {"style.bin": lora})
    assert store.find(ModelName.parse("x")) is None


def test_limner_create_adds_a_lora_file_to_a_stored_model(
    server: Any,
    store: Store,
    lora_files: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from limner.cli.main import main
    from limner.store import manifests as m

    add_tiny_sd(store, tmp_path)
    monkeypatch.setenv("LIMNER_HOST", server.url)
    kohya = lora_files / "lora_kohya.safetensors"
    code = main(
        ["create", "sd-cli", "--from", "sd", "--adapter", f"{kohya}=0.7", "--adapter-scale", "0.5"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "copying file lora_kohya.safetensors" in out and out.endswith("success\n")
    manifest = store.entry(ModelName.parse("sd-cli")).manifest
    assert manifest.layer(m.ADAPTER) is not None
    assert store.json_layer(manifest, m.PARAMS) == {
        "adapter_weights": {"lora_kohya.safetensors": 0.7},
        "adapter_scale": 0.5,
    }


@pytest.mark.full  # 30 s; one LoRA at its scale is pinned by the test above in `make test`
def test_stacked_adapters_apply_at_their_own_weights(
    server: Any, store: Store, lora_files: Path, tmp_path: Path
) -> None:
    """The same LoRA twice (diffusers and kohya keys): weights 0 + 1 and 0.5 + 0.5 draw as
    the LoRA alone, and 0 + 0 as the base model (in fp32, so that fusing twice rounds
    as little as fusing once)."""
    add_tiny_sd(store, tmp_path)
    both = {
        p.name: store.blobs.write_bytes(p.read_bytes())[0] for p in lora_files.glob("*.safetensors")
    }
    diffusers, kohya = "pytorch_lora_weights.safetensors", "lora_kohya.safetensors"
    for name, weights in (("lora", {diffusers: 1.0}),
                          ("second", {diffusers: 0.0, kohya: 1.0}),
                          ("halves", {diffusers: 0.5, kohya: 0.5}),
                          ("none", {diffusers: 0.0, kohya: 0.0})):  # fmt: skip
        adapters = {file: both[file] for file in weights}
        parameters = {"adapter_weights": weights, "precision": "fp32"}
        request = CreateRequest(model=name, **{"from": "sd"}, adapters=adapters,
                                parameters=parameters)  # fmt: skip
        list(create(store, request))
    list(create(store, CreateRequest(model="base", **{"from": "sd"},
                                     parameters={"precision": "fp32"})))  # fmt: skip
    sdk = Client(server.url)

    def drawn(name: str) -> np.ndarray:
        png = sdk.generate_image(name, "a zq square", steps=2, seed=7).png
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)

    lora, base = drawn("lora"), drawn("base")
    assert np.abs(lora - base).mean() > 5
    for name, expected in (("second", lora), ("halves", lora), ("none", base)):
        assert np.abs(drawn(name) - expected).mean() < 0.5, name


def test_adapter_weights_may_only_name_the_models_adapters(
    store: Store, lora_files: Path, tmp_path: Path
) -> None:
    add_tiny_sd(store, tmp_path)
    lora = store.blobs.write_bytes((lora_files / "lora_kohya.safetensors").read_bytes())[0]
    request = CreateRequest(model="x", **{"from": "sd"}, adapters={"style.safetensors": lora},
                            parameters={"adapter_weights": {"other.safetensors": 0.5}})  # fmt: skip
    with pytest.raises(
        InvalidRequest, match=r"'other\.safetensors'; this model's adapters are style"
    ):
        list(create(store, request))
    assert store.find(ModelName.parse("x")) is None


@pytest.mark.slow
def test_a_request_can_borrow_another_models_lora_for_one_picture(
    server: Any, store: Store, lora_files: Path, tmp_path: Path
) -> None:
    """`loras` (A1111's `<lora:name:weight>`) applies a LoRA model's adapter to one drawing:
    as if fused at that weight, and gone again for the next picture."""
    add_tiny_sd(store, tmp_path)
    adapter = store.blobs.write_bytes(
        (lora_files / "pytorch_lora_weights.safetensors").read_bytes()
    )
    fp32 = {"precision": "fp32"}
    list(create(store, CreateRequest(model="base", **{"from": "sd"}, parameters=fp32)))
    list(create(store, CreateRequest(model="style", **{"from": "sd"}, parameters=fp32,
                                     adapters={"style.safetensors": adapter[0]})))  # fmt: skip

    def drawn(name: str, **fields: Any) -> np.ndarray:
        body = {"model": name, "prompt": "a zq square", "steps": 2, "seed": 7, "stream": False}
        reply = httpx.post(f"{server.url}/api/generate", json={**body, **fields}, timeout=120)
        assert reply.status_code == 200, reply.text
        png = base64.b64decode(reply.json()["image"])
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)

    base, fused = drawn("base"), drawn("style")
    borrowed = drawn("base", loras={"style": 1.0})
    assert np.abs(fused - base).mean() > 5
    assert np.abs(borrowed - fused).mean() < 0.5
    assert np.abs(drawn("base", loras={"style": 0.0}) - base).mean() < 0.5
    assert np.array_equal(drawn("base"), base)  # unloaded after the picture
    missing = httpx.post(f"{server.url}/api/generate",
                         json={"model": "base", "prompt": "x", "loras": {"sd": 1.0}})  # fmt: skip
    assert missing.status_code == 400 and "has no LoRA" in missing.json()["error"]
