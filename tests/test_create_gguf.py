"""A stored Hugging Face LLaVA becomes a GGUF model on create, through the official client."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import ollama
import pytest
from pydantic import BaseModel

from helpers import add_fake_draw, add_gguf, add_model, picture
from limner.names import ModelName
from limner.store import Store
from limner.store.manifests import MODEL, PROJECTOR
from limner.tiny import write_tiny_llava

pytest.importorskip("llama_cpp")
pytest.importorskip("transformers")

QUESTION = [{"role": "user", "content": "What is this?", "images": [picture()]}]


def add_tiny_llava(store: Store, tmp_path: Path, name: str = "hf") -> None:
    folder = write_tiny_llava(tmp_path / "hf")
    files = {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }
    add_model(store, name, files)


@pytest.mark.slow
def test_quantize_turns_a_stored_llava_into_gguf_that_sees_as_much(
    server: Any, store: Store, tmp_path: Path
) -> None:
    add_tiny_llava(store, tmp_path)
    client = ollama.Client(host=server.url)
    lines = list(client.create(model="q", from_="hf", quantize="q4_K_M", stream=True))
    statuses = [line.status for line in lines]
    assert statuses[0] == "quantizing F32 model to Q4_K_M" and statuses[-1] == "success"

    shown = client.show("q")
    assert (shown.details.format, shown.details.quantization_level) == ("gguf", "Q4_K_M")
    assert shown.capabilities is not None and "vision" in shown.capabilities
    manifest = store.entry(ModelName.parse("q")).manifest
    assert sorted(layer.mediaType.rsplit(".", 1)[-1] for layer in manifest.layers) == [
        "model",
        "projector",
    ]

    options = {"num_predict": 3, "temperature": 0, "num_ctx": 2048}
    on_gguf = client.chat(model="q", messages=QUESTION, options=options)
    on_torch = client.chat(model="hf", messages=QUESTION, options=options)
    # 576 picture tokens each; libmtmd adds a dummy-prefix space after a picture (one token).
    assert on_gguf.prompt_eval_count is not None and on_torch.prompt_eval_count is not None
    assert abs(on_gguf.prompt_eval_count - on_torch.prompt_eval_count) <= 1
    assert on_gguf.prompt_eval_count > 576 and on_gguf.eval_count == 3


def test_a_bad_quantize_is_refused_before_anything_is_written(
    server: Any, store: Store, tmp_path: Path
) -> None:
    add_tiny_llava(store, tmp_path)
    add_fake_draw(store, "draw")
    client = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError, match="use one of q4_k_m, q4_k_s, ") as bad:
        client.create(model="q", from_="hf", quantize="q9_z")
    assert bad.value.status_code == 400
    with pytest.raises(ollama.ResponseError, match="only GGUF models in F16, BF16 or F32"):
        client.create(model="q", from_="draw", quantize="q4_0")
    add_gguf(store, "q8", quantize="q8_0")
    with pytest.raises(ollama.ResponseError, match=r"already quantized \(Q8_0\)"):
        client.create(model="q", from_="q8", quantize="q4_k_m")
    assert store.find(ModelName.parse("q")) is None


@pytest.mark.slow
def test_a_stored_f16_gguf_is_quantized_by_llama_cpp_and_keeps_its_projector(
    server: Any, store: Store
) -> None:
    add_gguf(store, "f16")
    client = ollama.Client(host=server.url)
    statuses = [
        p.status for p in client.create(model="k", from_="f16", quantize="Q5_K_M", stream=True)
    ]
    assert statuses[0] == "quantizing F16 model to Q5_K_M" and statuses[-1] == "success"
    shown = client.show("k")
    assert shown.details.quantization_level == "Q5_K_M"
    assert shown.capabilities == ["completion", "vision"]
    before, after = (store.entry(ModelName.parse(n)).manifest for n in ("f16", "k"))
    assert before.layer(PROJECTOR).digest == after.layer(PROJECTOR).digest  # type: ignore[union-attr]
    model_size = {m.layer(MODEL).size for m in (before, after)}  # type: ignore[union-attr]
    assert len(model_size) == 2
    reply = client.chat(model="k", messages=QUESTION, options={"num_predict": 3, "num_ctx": 2048})
    assert reply.eval_count == 3


class Shape(BaseModel):
    color: Literal["red", "green", "blue"]
    sides: int


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["gguf", "hf"])
def test_a_pydantic_schema_as_format_is_followed_on_both_engines(
    server: Any, store: Store, tmp_path: Path, engine: str
) -> None:
    add_gguf(store, "gguf")
    add_tiny_llava(store, tmp_path)
    client = ollama.Client(host=server.url)
    options = {"num_predict": 300, "num_ctx": 2048, "temperature": 1.0}
    for seed in range(3):
        reply = client.chat(model=engine, messages=QUESTION, format=Shape.model_json_schema(),
                            options={**options, "seed": seed})  # fmt: skip
        Shape.model_validate_json(reply.message.content or "")
