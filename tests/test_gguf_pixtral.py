"""Mistral Small 3.1 (transformers' `mistral3`: Mistral text model, Pixtral tower, 2x2 patch
merger) converts to llama.cpp's pair on create --quantize and runs there: a tiny model answers
a picture question through the official `ollama` client, its prompt costs what libmtmd makes
of it ([IMG] rows, an [IMG_BREAK] after each but the last, [IMG_END]), and a follow-up reuses
the cache. Its processor (PixtralProcessor) needs torchvision, which is not installed: the
prompt is rendered by its tokenizer (which holds the same template), its pictures by the image
processor alone."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from helpers import picture

pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")

from llama_cpp import mtmd_cpp as mtmd

from limner.errors import InvalidRequest
from limner.store import Store
from limner.store.gguf import gguf_info
from limner.store.gguf_families import convert
from limner.tiny_families import write_tiny_family
from test_gguf_families import QUESTION, Libmtmd, chat, created, noise, stored_counts

MARKER = mtmd.mtmd_default_marker().decode()
# 16-px cells (8-px patches merged 2x2): 4x3 cells, and 6x2 once libmtmd has aligned 100x30.
SHAPES = [(64, 48), (100, 30)]


def rendered(folder: Path, question: str = QUESTION) -> str:
    """The question with one picture, rendered by the folder's own template (transformers'
    tokenizer), the picture's [IMG] replaced by libmtmd's marker."""
    from transformers import AutoTokenizer

    parts = [{"type": "image"}, {"type": "text", "text": question}]
    tokenizer: Any = AutoTokenizer.from_pretrained(folder)
    text: str = tokenizer.apply_chat_template(
        [{"role": "user", "content": parts}], add_generation_prompt=True, tokenize=False
    )
    assert text.count("[IMG]") == 1
    return text.replace("[IMG]", MARKER)


def test_the_tiny_model_converts_to_a_llama_text_model_and_a_pixtral_projector(
    tmp_path: Path,
) -> None:
    from gguf import GGUFReader
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    folder = write_tiny_family("mistral3", tmp_path / "hf")
    model, projector = convert(folder, tmp_path / "gguf", "f32")
    info, vision = gguf_info(model), gguf_info(projector)
    assert info["general.architecture"] == "llama"  # as llama.cpp's converter writes it
    assert info["tokenizer.chat_template"] == (folder / "chat_template.jinja").read_text()
    assert vision["clip.projector_type"] == "pixtral"
    assert vision["clip.vision.spatial_merge_size"] == 2 and vision["clip.use_silu"] is True
    assert vision["clip.vision.projection_dim"] == info["llama.embedding_length"] == 64

    tensors = {t.name: t for t in GGUFReader(projector).tensors}
    merger = {"mm.input_norm.weight", "mm.patch_merger.weight", "mm.1.weight", "mm.2.weight"}
    assert merger <= set(tensors)
    assert "v.position_embd.weight" not in tensors  # Pixtral places patches by 2-D RoPE
    # [IMG_BREAK]'s embedding is the text model's own row for it.
    img_break = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("[IMG_BREAK]")
    embedding = load_file(folder / "model.safetensors")["language_model.model.embed_tokens.weight"]
    np.testing.assert_array_equal(tensors["v.token_embd.img_break"].data, embedding[img_break])


def test_llama_cpp_splits_text_as_the_tekken_tokenizer_does(tmp_path: Path) -> None:
    """The folder's tokenizer.json splits as Mistral's tekken (its regex, then bytes); the
    converted vocabulary names llama.cpp's "tekken" and tokenizes every text the same."""
    import llama_cpp
    from transformers import AutoTokenizer

    folder = write_tiny_family("mistral3", tmp_path / "hf")
    model, _ = convert(folder, tmp_path / "gguf", "f16")
    assert gguf_info(model)["tokenizer.ggml.pre"] == "tekken"
    hf: Any = AutoTokenizer.from_pretrained(folder)
    llama = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    try:
        for text in ("What is in this picture?", "CamelCase and camelCase 2024/10/01",
                     "  two  spaces\n\nand\tTabs... ÉTÉ été", "[INST]Hi[/INST][IMG]"):  # fmt: skip
            want = hf.encode(text, add_special_tokens=False)
            assert llama.tokenize(text.encode(), add_bos=False, special=True) == want, text
    finally:
        llama.close()


def hf_rows(model: Any, folder: Path, shot: bytes) -> np.ndarray:
    """The picture's merged-patch embeddings in transformers (no [IMG_BREAK] rows)."""
    import torch
    from transformers import AutoImageProcessor

    images = AutoImageProcessor.from_pretrained(folder)
    inputs = images(images=[Image.open(io.BytesIO(shot))], return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(
            pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"]
        )
    features = getattr(features, "pooler_output", features)
    if isinstance(features, list | tuple):
        features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
    rows: np.ndarray = features.reshape(-1, features.shape[-1]).numpy()
    return rows


def test_text_logits_and_picture_embeddings_match_transformers_at_f32(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    folder = write_tiny_family("mistral3", tmp_path / "hf")
    model_path, projector = convert(folder, tmp_path / "gguf", "f32")
    hf = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    hf.train(False)
    ids = [17, 40, 99, 123, 250, 77, 300, 12]
    with torch.no_grad():
        want = hf(input_ids=torch.tensor([ids])).logits[0].numpy()
    # Noise in whole 16-px cells, within the processor's 64-px longest edge and above libmtmd's
    # 8-cell floor: neither side resizes it, and every patch's 2-D position shows.
    cols, rows_ = 4, 2
    shot = noise(16 * cols, 16 * rows_)
    pair = Libmtmd(model_path, projector)
    try:
        pair.llama.eval(ids)
        got = np.array(pair.llama.scores[: len(ids)])
        chunks = pair.chunks(MARKER, shot)
    finally:
        pair.close()
    assert np.abs(got - want).max() < 2e-3 * np.abs(want).max()

    (rows,) = [r for _, r in chunks if r is not None]
    assert len(rows) == rows_ * (cols + 1) - 1  # [IMG_END] is a text token after the picture
    breaks = rows[cols :: cols + 1]
    patches = np.delete(rows, np.s_[cols :: cols + 1], axis=0)
    expected = hf_rows(hf, folder, shot)
    assert np.abs(expected).max() > 1e-3
    assert np.abs(patches - expected).max() < 2e-3 * np.abs(expected).max()
    img_break = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("[IMG_BREAK]")
    row = hf.model.language_model.embed_tokens.weight[img_break].detach().numpy()
    np.testing.assert_allclose(breaks, np.broadcast_to(row, breaks.shape), rtol=1e-6)


def libmtmd_counts(store: Store, folder: Path, shots: list[bytes]) -> list[tuple[int, int]]:
    """(prompt tokens, picture tokens) per picture for the question rendered by the model's
    own template."""
    return stored_counts(store, rendered(folder), shots)


@pytest.mark.slow  # about 10 s: a tiny model written, converted, quantized and asked
def test_a_converted_tiny_mistral3_answers_with_libmtmd_counts_and_reuses_the_cache(
    server: Any, store: Store, tmp_path: Path
) -> None:
    import httpx

    client = created(store, server, "mistral3", tmp_path)
    shown = client.show("q")
    assert shown.details is not None and shown.details.quantization_level == "Q8_0"
    assert shown.capabilities is not None and "vision" in shown.capabilities
    projector = httpx.post(f"{server.url}/api/show", json={"model": "q"}).json()["projector_info"]
    assert projector["clip.projector_type"] == "pixtral"

    shots = [picture(size=size) for size in SHAPES]
    counts = libmtmd_counts(store, tmp_path / "hf", shots)
    # rows x (cols + 1): 4x3 cells, and 6x2 (libmtmd aligns 100x30 to 96x32)
    assert [pictures for _, pictures in counts] == [3 * 5 - 1, 2 * 7 - 1]
    for shot, (total, pictures) in zip(shots, counts, strict=True):
        message = {"role": "user", "content": QUESTION, "images": [shot]}
        options = {"num_predict": 4, "temperature": 0}
        chunks = list(client.chat(model="q", messages=[message], options=options, stream=True))
        assert chunks[-1].done and chunks[-1].eval_count == 4
        assert "".join(c.message.content or "" for c in chunks)
        if shot == shots[0]:  # nothing cached yet: the whole prompt is evaluated
            assert chunks[-1].prompt_eval_count == total
        counted = chat(server.url, [{**message, "images": [base64.b64encode(shot).decode()]}])
        assert counted["prompt_eval_count"] + counted["prompt_cached_count"] == total
        assert counted["image_tokens"] == pictures

    # A follow-up about the same picture decodes only the new turn.
    blue = base64.b64encode(picture(size=(64, 64), color="blue")).decode()
    first = [{"role": "user", "content": QUESTION, "images": [blue]}]
    answer = chat(server.url, first)
    again = chat(server.url, [*first, answer["message"], {"role": "user", "content": "Colour?"}])
    assert answer["image_tokens"] == 4 * 5 - 1 and again["image_tokens"] == answer["image_tokens"]
    whole = answer["prompt_eval_count"] + answer["prompt_cached_count"]
    assert again["prompt_cached_count"] >= whole  # the first turn and its picture
    assert again["prompt_eval_count"] < whole


def test_the_cli_creates_a_tiny_mistral3_for_llama_cpp(
    server: Any, store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`limner create NAME --tiny mistral3 --quantize q8_0`: the folder written, converted and
    quantized, and it sees."""
    import ollama

    from limner.cli.main import main

    monkeypatch.setenv("LIMNER_HOST", server.url)
    assert main(["create", "m3", "--tiny", "mistral3", "--quantize", "q8_0"]) == 0
    assert capsys.readouterr().out.endswith("success\n")
    shown = ollama.Client(host=server.url).show("m3")
    assert shown.details is not None and shown.details.quantization_level == "Q8_0"
    assert shown.capabilities is not None and "vision" in shown.capabilities


def test_what_llama_cpp_computes_differently_is_refused(tmp_path: Path) -> None:
    import json

    folder = write_tiny_family("mistral3", tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    for change, said in (
        ({"vision_feature_layer": -2}, "vision_feature_layer -2"),
        ({"projector_hidden_act": "relu"}, "projector_hidden_act 'relu'"),
        ({"vision_config": {**config["vision_config"], "hidden_act": "relu"}}, "hidden_act"),
        ({"text_config": {**config["text_config"], "sliding_window": 512}}, "sliding_window"),
    ):
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(InvalidRequest, match=said):
            convert(folder, tmp_path / "out", "f16")
    (folder / "config.json").write_text(json.dumps(config))
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "[IMG_END]"]
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(InvalidRequest, match="IMG_END"):
        convert(folder, tmp_path / "out", "f16")
    assert not (tmp_path / "out").exists()
