"""MiniCPM-V 4.6 (transformers' `minicpmv4_6`: a SigLIP tower with a window-attention merger,
a merger MLP and a Qwen3.5 text model of Gated DeltaNet and full-attention blocks) converts to
llama.cpp's pair on create --quantize and runs there: a tiny model answers a picture question
through the official `ollama` client, its prompt costs what libmtmd makes of it (an <image>
overview and <slice>s), and a follow-up restarts from the recurrent state kept at the end of
the first prompt. Its processor needs torchvision (for video), which is not installed: the
prompt is rendered by its tokenizer (which holds the same template), its pictures by its
image processor alone."""

from __future__ import annotations

import base64
import io
import itertools
import json
import shutil
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
from test_gguf_families import QUESTION, Libmtmd, chat, noise, stored_counts

MARKER = mtmd.mtmd_default_marker().decode()
# 32-px slices of 4x4-px patches, merged 4x4: 4 tokens a slice. 64x48 is an overview and 2x2
# slices (20 tokens); 100x30 a 64x16 overview and 3x1 slices (16).
SHAPES = [(64, 48), (100, 30)]
TOLERANCE = 2e-3  # of the largest value, at f32 (transformers and llama.cpp differ ~1e-4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, written once for the module (seeded: `--tiny` writes the same)."""
    return write_tiny_family("minicpm-v4.6", tmp_path_factory.mktemp("minicpmv") / "hf")


def rendered(folder: Path, question: str = QUESTION) -> str:
    """The question with one picture, rendered by the folder's own template (transformers'
    tokenizer), the picture's <|image_pad|> replaced by libmtmd's marker."""
    from transformers import AutoTokenizer

    parts = [{"type": "image"}, {"type": "text", "text": question}]
    tokenizer: Any = AutoTokenizer.from_pretrained(folder)
    text: str = tokenizer.apply_chat_template(
        [{"role": "user", "content": parts}], add_generation_prompt=True, tokenize=False
    )
    assert text.count(tokenizer.image_token) == 1
    return text.replace(tokenizer.image_token, MARKER)


def test_the_tiny_model_converts_to_a_qwen35_text_model_and_a_minicpmv4_6_projector(
    folder: Path, tmp_path: Path
) -> None:
    import llama_cpp
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    model, projector = convert(folder, tmp_path / "gguf", "f16")
    info, vision = gguf_info(model), gguf_info(projector)
    assert info["general.architecture"] == "qwen35"
    assert info["qwen35.full_attention_interval"] == 2
    assert info["qwen35.rope.dimension_count"] == 8  # a quarter of the 32-wide heads
    assert info["qwen35.rope.dimension_sections"] == [2, 1, 1, 0]
    assert (info["qwen35.ssm.group_count"], info["qwen35.ssm.time_step_rank"]) == (2, 4)
    assert info["tokenizer.chat_template"] == (folder / "chat_template.jinja").read_text()
    assert vision["clip.projector_type"] == "minicpmv4_6"
    assert vision["clip.vision.image_size"] == 32  # the processor's scale_resolution
    assert vision["clip.vision.projector.scale_factor"] == 4
    assert vision["clip.vision.wa_layer_indexes"] == [0]  # the ViT merger after block 0
    tensors = {t.name for t in GGUFReader(projector).tensors}
    assert {"v.vit_merger.attn_q.weight", "v.vit_merger.ds_ffn_down.weight", "mm.up.weight",
            "mm.input_norm.bias", "v.position_embd.weight"} <= tensors  # fmt: skip
    text_tensors = {t.name for t in GGUFReader(model).tensors}
    assert {"blk.0.ssm_a", "blk.0.ssm_conv1d.weight", "blk.1.attn_q_norm.weight"} <= text_tensors

    # Qwen3.5 splits words by its own regex; the GGUF names it so llama.cpp splits the same.
    assert info["tokenizer.ggml.pre"] == "qwen35"
    hf: Any = AutoTokenizer.from_pretrained(folder)
    llama = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    try:
        for text in ("It's 42 apples,\n\n  don't   you think?", rendered(folder),
                     "Ünïcödé — émoji 🎨 123456, nai\u0308ve"):  # fmt: skip
            want = hf.encode(text, add_special_tokens=False)
            assert llama.tokenize(text.encode(), add_bos=False, special=True) == want, text
    finally:
        llama.close()


def with_random_scales(folder: Path, dest: Path) -> Path:
    """A copy whose text model has seeded random norms, A_log and dt_bias (transformers starts
    them at constants), so the comparison sees 1 + w, -exp(A_log) and the head order."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(folder, dest)
    tensors = load_file(dest / "model.safetensors")
    rng = np.random.default_rng(0)
    for key, value in tensors.items():
        if value.ndim == 1 and key.startswith("model.language_model."):
            tensors[key] = value + rng.standard_normal(value.shape).astype(np.float32) / 2
        if key.endswith(".A_log"):  # A ~ 0.1: a state that remembers across the prompt
            tensors[key] = rng.normal(-2.5, 0.5, value.shape).astype(np.float32)
    save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def test_text_logits_and_picture_embeddings_match_transformers_at_f32(
    folder: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    varied = with_random_scales(folder, tmp_path / "hf")
    model_path, projector = convert(varied, tmp_path / "gguf", "f32")
    hf = AutoModelForImageTextToText.from_pretrained(varied, dtype=torch.float32)
    hf.train(False)
    ids = [17, 40, 99, 123, 250, 77, 300, 12, 5, 9, 200, 201]
    with torch.no_grad():
        want = hf(input_ids=torch.tensor([ids])).logits[0].numpy()
    # Noise 32x32: the overview alone (8x8 patches). Noise 64x32: a 48x16 overview (a
    # non-square 12x4 grid on the 70x70 positions) and two 32x32 slices, cut as both cut them.
    shots = [noise(32, 32), noise(64, 32)]
    pair = Libmtmd(model_path, projector)
    try:
        pair.llama.eval(ids)
        got = np.array(pair.llama.scores[: len(ids)])
        rows = [[r for _, r in pair.chunks(MARKER, shot) if r is not None] for shot in shots]
    finally:
        pair.close()
    assert np.abs(got - want).max() < TOLERANCE * np.abs(want).max()

    images = AutoImageProcessor.from_pretrained(folder)
    for shot, parts in zip(shots, rows, strict=True):
        inputs = images(images=[Image.open(io.BytesIO(shot))], return_tensors="pt")
        with torch.no_grad():
            features = hf.model.get_image_features(
                inputs["pixel_values"], inputs["target_sizes"]
            ).pooler_output
        expected = [f.numpy() for f in features]  # the overview, then each slice
        assert [p.shape for p in parts] == [e.shape for e in expected]
        for part, each in zip(parts, expected, strict=True):
            assert np.abs(each).max() > 1e-3
            assert np.abs(part - each).max() < TOLERANCE * np.abs(each).max()


@pytest.mark.slow  # about 10 s: a tiny model written, converted, quantized and asked
def test_a_tiny_minicpmv_created_by_the_cli_answers_with_libmtmd_counts_and_reuses_the_cache(
    server: Any,
    store: Store,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import httpx
    import ollama

    from limner.cli.main import main

    monkeypatch.setenv("LIMNER_HOST", server.url)
    assert main(["create", "q", "--tiny", "minicpm-v4.6", "--quantize", "q8_0"]) == 0
    assert capsys.readouterr().out.endswith("success\n")
    client = ollama.Client(host=server.url)
    shown = client.show("q")
    assert shown.details is not None and shown.details.quantization_level == "Q8_0"
    assert shown.capabilities is not None and "vision" in shown.capabilities
    projector = httpx.post(f"{server.url}/api/show", json={"model": "q"}).json()["projector_info"]
    assert projector["clip.projector_type"] == "minicpmv4_6"

    shots = [picture(size=size) for size in SHAPES]
    counts = stored_counts(store, rendered(folder), shots)
    assert [pictures for _, pictures in counts] == [5 * 4, 4 * 4]
    for shot, (total, pictures) in zip(shots, counts, strict=True):
        message = {"role": "user", "content": QUESTION, "images": [shot]}
        options = {"num_predict": 4, "temperature": 0}
        chunks = list(client.chat(model="q", messages=[message], options=options, stream=True))
        assert chunks[-1].done and chunks[-1].eval_count == 4
        assert "".join(c.message.content or "" for c in chunks)
        if shot == shots[0]:  # nothing cached yet: the whole prompt is evaluated
            assert chunks[-1].prompt_eval_count == total
        # The same question again restarts from the state kept before the last token.
        counted = chat(server.url, [{**message, "images": [base64.b64encode(shot).decode()]}])
        assert (counted["prompt_eval_count"], counted["prompt_cached_count"]) == (1, total - 1)
        assert counted["image_tokens"] == pictures

    # A follow-up about the same picture restarts from the state kept after the first prompt
    # (it gives back an answer of its own, so the state after the model's answer is no use),
    # and says what the same follow-up computed afresh says.
    blue = base64.b64encode(picture(size=(64, 64), color="blue")).decode()
    first = [{"role": "user", "content": QUESTION, "images": [blue]}]
    answer = chat(server.url, first)
    whole = answer["prompt_eval_count"] + answer.get("prompt_cached_count", 0)
    reply = {"role": "assistant", "content": "A red square."}
    follow = [*first, reply, {"role": "user", "content": "Colour?"}]
    again = chat(server.url, follow)
    assert again["prompt_cached_count"] == whole and again["image_tokens"] == 5 * 4
    chat(server.url, [{"role": "system", "content": "Be brief."}, *first])  # cut before it
    fresh = chat(server.url, follow)
    assert "prompt_cached_count" not in fresh  # nothing reused
    assert fresh["prompt_eval_count"] == again["prompt_eval_count"] + whole
    assert fresh["message"]["content"] == again["message"]["content"]


def test_what_llama_cpp_computes_differently_is_refused(folder: Path, tmp_path: Path) -> None:
    copies = itertools.count()

    def changed(name: str, change: dict[str, Any]) -> Path:
        copy = tmp_path / f"hf-{next(copies)}"
        shutil.copytree(folder, copy)
        settings = json.loads((copy / name).read_text())
        for key, value in change.items():
            if isinstance(value, dict):
                settings[key] = {**settings[key], **value}
            else:
                settings[key] = value
        (copy / name).write_text(json.dumps(settings))
        return copy

    text = json.loads((folder / "config.json").read_text())["text_config"]
    for name, change, said in (
        ("config.json", {"downsample_mode": "4x"}, "downsample_mode '4x'"),
        ("config.json", {"merger_times": 2}, "merger_times 2"),
        ("config.json", {"insert_layer_id": 2}, "insert_layer_id 2"),
        ("config.json", {"vision_config": {"layer_norm_eps": 1e-5}}, "layer_norm_eps"),
        ("config.json", {"text_config": {"layer_types": text["layer_types"][::-1]}}, "layer_types"),
        ("config.json", {"text_config": {"linear_value_head_dim": 32}}, "linear_value_head_dim"),
        ("preprocessor_config.json", {"max_slice_nums": 16}, "max_slice_nums 16"),
        ("preprocessor_config.json", {"scale_resolution": 40}, "scale_resolution 40"),
    ):
        with pytest.raises(InvalidRequest, match=said):
            convert(changed(name, change), tmp_path / "out", "f16")
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["content"] != "<slice>"]
    del tokenizer["model"]["vocab"]["<slice>"]
    copy = changed("config.json", {})
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(InvalidRequest, match="no token <slice>"):
        convert(copy, tmp_path / "out", "f16")
    assert not (tmp_path / "out").exists()
