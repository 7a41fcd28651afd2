"""MiniCPM-V 2.6 (Ollama's `minicpm-v`, openbmb's MiniCPM-V-2_6-gguf: a `qwen2` text model
and a `resampler` projector with clip.minicpmv_version 3) runs on the GGUF engine. A tiny pair
written in llama.cpp's layout loads in libmtmd; its template has no place for a picture, so
the picture goes where MiniCPM-V's own chat() puts it (before the question, then a newline);
through the official `ollama` client a picture question streams an answer, the prompt costs
what libmtmd makes of it (an <image> overview and <slice>s of QUERIES tokens each), and a
follow-up takes the first turn from the cache; the picture embeddings match a numpy
reference of the SigLIP tower and the resampler."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import picture

pytest.importorskip("llama_cpp")
pytest.importorskip("transformers")  # the tiny tokenizer is learnt by `tokenizers`

from llama_cpp import mtmd_cpp as mtmd

from limner.store import Store
from limner.store.gguf import gguf_info
from limner.tiny_minicpmv import QUERIES, TEMPLATE, TEXT_WIDTH, write_tiny_minicpmv_gguf
from test_gguf_families import QUESTION, Libmtmd, chat, noise, stored_counts

MARKER = mtmd.mtmd_default_marker().decode()
# 32-px slices: 32x32 is one part (the overview alone), 64x48 an overview and 2x2 slices.
SHAPES = [(32, 32), (64, 48)]
TOLERANCE = 3e-3  # of the largest value, at f32 (measured 1.3e-3: ggml tabulates gelu in f16)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pair at f32, written once for the module."""
    return write_tiny_minicpmv_gguf(tmp_path_factory.mktemp("minicpmv26"), quantize="f32")


def rendered(template: str, question: str = QUESTION) -> str:
    """The question with one picture as MiniCPM-V 2.6's chat() writes it (the picture, a
    newline, the text), rendered by the template with jinja2 itself."""
    import jinja2

    content = f"{MARKER}\n{question}"
    messages = [{"role": "user", "content": content}]
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


def test_the_pair_is_llama_cpp_s_layout_and_the_engine_places_the_picture(pair: Path) -> None:
    from gguf import GGUFReader

    from limner.engines import LoadOptions, Message
    from limner.engines.llava_llamacpp import load

    info, vision = gguf_info(pair / "model.gguf"), gguf_info(pair / "mmproj.gguf")
    assert info["general.architecture"] == "qwen2"
    assert info["tokenizer.ggml.pre"] == "qwen2"
    assert info["tokenizer.chat_template"] == TEMPLATE
    assert vision["clip.projector_type"] == "resampler"
    assert vision["clip.minicpmv_version"] == 3
    assert vision["clip.minicpmv_query_num"] == QUERIES
    tensors = {t.name: t for t in GGUFReader(pair / "mmproj.gguf").tensors}
    resampler = {"query", "kv.weight", "pos_embed_k", "proj.weight", "attn.q.weight",
                 "attn.out.bias", "ln_q.weight", "ln_kv.bias", "ln_post.weight"}  # fmt: skip
    assert {f"resampler.{name}" for name in resampler} <= set(tensors)
    assert tuple(tensors["resampler.pos_embed_k"].data.shape) == (70 * 70, TEXT_WIDTH)

    engine = load(pair, LoadOptions(num_ctx=512))
    try:
        shot = picture(size=(32, 32))
        # The GGUF's template reads content as a string: the engine writes the picture first.
        prompt = engine._render([Message("user", QUESTION, [shot])])
        assert prompt == rendered(TEMPLATE)
        two = engine._render([Message("user", QUESTION, [shot, shot])])
        assert f"user\n{MARKER}\n{MARKER}\n{QUESTION}<|im_end|>" in two
        assert MARKER not in engine._render([Message("user", QUESTION)])
    finally:
        engine.llama.close()


def reference_rows(projector: Path, shot: np.ndarray) -> np.ndarray:
    """One picture part (`shot`, h x w x 3 bytes, sides multiples of the patch) as MiniCPM-V
    2.6 embeds it, in numpy from the projector's own tensors: SigLIP (positions bucketed onto
    the 70x70 grid, pre-norm blocks, gelu-tanh MLPs, the post-layernorm), then the resampler
    (resampler.py: learned queries attend to the kv-projected patches, whose keys add 2-D
    sin-cos positions; then ln_post and `x @ proj`)."""
    from gguf import GGUFReader

    t = {x.name: np.asarray(x.data, dtype=np.float32) for x in GGUFReader(projector).tensors}
    info = gguf_info(projector)
    patch, heads = info["clip.vision.patch_size"], info["clip.vision.attention.head_count"]
    eps = info["clip.vision.attention.layer_norm_epsilon"]
    mean, std = np.array(info["clip.vision.image_mean"]), np.array(info["clip.vision.image_std"])

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
        return x * t[f"{name}.weight"] + t[f"{name}.bias"]

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        y = x @ t[f"{name}.weight"].T
        return y + t[f"{name}.bias"] if f"{name}.bias" in t else y

    def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_head: int) -> np.ndarray:
        split = [a.reshape(len(a), n_head, -1).transpose(1, 0, 2) for a in (q, k, v)]
        scores = split[0] @ split[1].transpose(0, 2, 1) / np.sqrt(split[0].shape[-1])
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        out = weights / weights.sum(-1, keepdims=True) @ split[2]
        return out.transpose(1, 0, 2).reshape(len(q), -1)

    def gelu(x: np.ndarray) -> np.ndarray:
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    pixels = (shot / 255.0 - mean) / std
    rows, columns = shot.shape[0] // patch, shot.shape[1] // patch
    patches = pixels.reshape(rows, patch, columns, patch, 3).transpose(0, 2, 4, 1, 3)
    conv = t["v.patch_embd.weight"].reshape(len(t["v.patch_embd.weight"]), -1)
    x = patches.reshape(rows * columns, -1) @ conv.T + t["v.patch_embd.bias"]
    bucket_rows, bucket_columns = 70 * np.arange(rows) // rows, 70 * np.arange(columns) // columns
    x = x + t["v.position_embd.weight"][(bucket_rows[:, None] * 70 + bucket_columns).ravel()]
    for i in range(info["clip.vision.block_count"]):
        block = f"v.blk.{i}"
        h = norm(x, f"{block}.ln1")
        q, k, v = (linear(h, f"{block}.attn_{part}") for part in "qkv")
        x = x + linear(attention(q, k, v, heads), f"{block}.attn_out")
        # The converter names SigLIP's fc1 `ffn_down` and fc2 `ffn_up`.
        h = gelu(linear(norm(x, f"{block}.ln2"), f"{block}.ffn_down"))
        x = x + linear(h, f"{block}.ffn_up")
    x = norm(x, "v.post_ln")

    width = t["resampler.query"].shape[1]
    kv = norm(linear(x, "resampler.kv"), "resampler.ln_kv")
    query = norm(t["resampler.query"], "resampler.ln_q")
    omega = 1 / 10000 ** (np.arange(width // 4) / (width // 4))
    grid_w, grid_h = np.meshgrid(np.arange(columns), np.arange(rows))  # w first, as resampler.py
    angles = [g.reshape(-1, 1) * omega for g in (grid_w, grid_h)]
    keys = kv + np.concatenate([f(a) for a in angles for f in (np.sin, np.cos)], 1)
    out = attention(
        linear(query, "resampler.attn.q"), linear(keys, "resampler.attn.k"),
        linear(kv, "resampler.attn.v"), width // 128,
    )  # fmt: skip
    out = norm(linear(out, "resampler.attn.out"), "resampler.ln_post")
    rows_out: np.ndarray = out @ t["resampler.proj.weight"].T
    return rows_out


def test_picture_embeddings_match_a_numpy_resampler_at_f32(pair: Path) -> None:
    import io

    from PIL import Image

    # 32x32 noise is its own overview (8x8 patches, no resize); 64x32 noise is cut into two
    # 32x32 slices, exact crops of it, after a resized overview.
    square, wide = noise(32, 32), noise(64, 32)
    text = rendered(TEMPLATE)
    found = Libmtmd(pair / "model.gguf", pair / "mmproj.gguf")
    try:
        found_parts = [found.chunks(text, shot) for shot in (square, wide)]
    finally:
        found.close()
    parts = [[rows for _, rows in chunks if rows is not None] for chunks in found_parts]
    assert [len(p) for p in parts] == [1, 3]
    pixels = [np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")) for shot in (square, wide)]
    pairs = [(parts[0][0], pixels[0]), (parts[1][1], pixels[1][:, :32]),
             (parts[1][2], pixels[1][:, 32:])]  # fmt: skip
    for got, shot in pairs:
        want = reference_rows(pair / "mmproj.gguf", shot)
        assert got.shape == want.shape == (QUERIES, TEXT_WIDTH)
        assert np.abs(want).max() > 1e-2
        assert np.abs(got - want).max() < TOLERANCE * np.abs(want).max()


@pytest.mark.slow  # about 5 s: a tiny pair written, stored and asked
def test_a_tiny_minicpm_v_answers_with_libmtmd_counts_and_reuses_the_cache(
    server: Any, store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import httpx
    import ollama

    from limner.cli.main import main

    monkeypatch.setenv("LIMNER_HOST", server.url)
    assert main(["create", "q", "--tiny", "minicpm-v-gguf"]) == 0
    assert capsys.readouterr().out.endswith("success\n")
    client = ollama.Client(host=server.url)
    shown = client.show("q")
    assert shown.capabilities is not None and "vision" in shown.capabilities
    projector = httpx.post(f"{server.url}/api/show", json={"model": "q"}).json()["projector_info"]
    kind = (projector["clip.projector_type"], projector["clip.minicpmv_version"])
    assert kind == ("resampler", 3)

    shots = [picture(size=size) for size in SHAPES]
    counts = stored_counts(store, rendered(TEMPLATE), shots)
    assert [pictures for _, pictures in counts] == [QUERIES, 5 * QUERIES]  # 1 part; 1 + 2x2
    for shot, (total, pictures) in zip(shots, counts, strict=True):
        message = {"role": "user", "content": QUESTION, "images": [shot]}
        options = {"num_predict": 4, "temperature": 0}
        chunks = list(client.chat(model="q", messages=[message], options=options, stream=True))
        assert chunks[-1].done and chunks[-1].eval_count
        assert "".join(c.message.content or "" for c in chunks)
        if shot == shots[0]:  # nothing cached yet: the whole prompt is evaluated
            assert chunks[-1].prompt_eval_count == total
        # The same question again: all of it but the last token comes from the cache.
        counted = chat(server.url, [{**message, "images": [base64.b64encode(shot).decode()]}])
        assert (counted["prompt_eval_count"], counted["prompt_cached_count"]) == (1, total - 1)
        assert counted["image_tokens"] == pictures

    # A follow-up about the same picture takes the first turn (and its picture) from the
    # cache, and says what the same follow-up computed afresh says.
    blue = base64.b64encode(picture(size=(64, 48), color="blue")).decode()
    first = [{"role": "user", "content": QUESTION, "images": [blue]}]
    answer = chat(server.url, first)
    whole = answer["prompt_eval_count"] + answer.get("prompt_cached_count", 0)
    follow = [*first, answer["message"], {"role": "user", "content": "Colour?"}]
    again = chat(server.url, follow)
    assert again["image_tokens"] == answer["image_tokens"] == 5 * QUERIES
    assert again["prompt_cached_count"] >= whole
    assert again["prompt_eval_count"] < whole
    chat(server.url, [{"role": "system", "content": "Be brief."}, *first])  # cut before it
    fresh = chat(server.url, follow)
    assert fresh.get("prompt_cached_count", 0) < whole - 5 * QUERIES
    assert fresh["prompt_eval_count"] > again["prompt_eval_count"]
    assert fresh["message"]["content"] == again["message"]["content"]
