"""A llava-hf folder converts into the text GGUF + mmproj pair that llama.cpp runs."""

from __future__ import annotations

import ctypes
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

pytest.importorskip("gguf")

import gguf

from limner.errors import InvalidRequest, LimnerError, UnsafeWeights
from limner.store import gguf as convert
from limner.store.gguf import convert_llava, gguf_info
from limner.tiny import (
    CHAT_TEMPLATE,
    CLIP_MEAN,
    CLIP_STD,
    CORPUS,
    write_tiny_llava,
    write_tiny_llava_gguf,
)

try:
    import llama_cpp
    from llama_cpp import mtmd_cpp as mtmd
except ImportError:  # the converter is still tested; running its files is not
    llama_cpp = mtmd = None
needs_llama_cpp = pytest.mark.skipif(llama_cpp is None, reason="llama-cpp-python is not installed")

LEVELS = ["f32", "f16", "q8_0", "q4_0"]
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2}
VISION_LAYERS = 3  # limner.tiny.VISION["num_hidden_layers"]
SIDE = 336


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llava(tmp_path_factory.mktemp("hf") / "tiny-llava", seed=0)


@pytest.fixture(scope="module")
def converted(
    folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Path]]:
    out = tmp_path_factory.mktemp("gguf")
    return {level: convert_llava(folder, out / level, level) for level in LEVELS}


@pytest.fixture(autouse=True, scope="module")
def no_repacking() -> Iterator[None]:
    """Load without llama.cpp's repacked weight buffers: on AMX CPUs (Sapphire Rapids) its AMX
    matmul segfaults on Q8_0/Q4_0 prompts, with llama.cpp's own quantizations too (#20824)."""
    if llama_cpp is None:
        yield
        return
    from limner.engines.llava_llamacpp import _repacking

    with _repacking(False):
        yield


def load(model: Path, **kwargs: Any) -> Any:
    return llama_cpp.Llama(
        str(model), n_ctx=kwargs.pop("n_ctx", 256), n_threads=2, verbose=False, **kwargs
    )


def tensor_types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def edited_copy(dest: Path, **config: Any) -> Path:
    """A tiny folder with some config.json fields replaced; `a__b` is field b of section a."""
    copy = write_tiny_llava(dest)
    data = json.loads((copy / "config.json").read_text())
    for key, value in config.items():
        target, _, field = key.rpartition("__")
        section = data[target] if target else data
        section[field] = value
    (copy / "config.json").write_text(json.dumps(data))
    return copy


# --- files llama.cpp loads ---------------------------------------------------------------


@needs_llama_cpp
@pytest.mark.parametrize("level", [*LEVELS, "Q4_0"])
def test_every_quantization_writes_files_llama_cpp_runs(
    folder: Path, tmp_path: Path, level: str
) -> None:
    model, mmproj = convert_llava(folder, tmp_path, level)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["mmproj.gguf", "model.gguf"]
    llm = load(model, logits_all=True)
    try:
        assert llm.n_vocab() == 576 and llm.n_embd() == 64
        ids = llm.tokenize(b"The image shows a red square.", add_bos=True)
        llm.eval(ids)
        assert np.isfinite(llm.scores[: len(ids)]).all()
        assert np.abs(llm.scores[len(ids) - 1]).max() > 0
    finally:
        llm.close()
    assert gguf_info(mmproj)["general.architecture"] == "clip"


def test_quantization_shows_in_file_type_tensor_types_and_size(
    converted: dict[str, tuple[Path, Path]],
) -> None:
    sizes = {level: converted[level][0].stat().st_size for level in LEVELS}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"] < sizes["f32"]
    for level in LEVELS:
        model, mmproj = converted[level]
        assert gguf_info(model)["general.file_type"] == FILE_TYPES[level]
        types = tensor_types(model)
        for matrix in ("token_embd.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight"):
            assert types[matrix] == level.upper(), matrix
        # llama.cpp's quantizer keeps the output layer wider (Q6_K, or Q8_0 where rows are
        # not whole 256-blocks, as in the tiny model).
        assert types["output.weight"] == {"q4_0": "Q8_0"}.get(level, level.upper())
        assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
        # The projector is small: never below f16, biases and norms f32.
        projector = tensor_types(mmproj)
        assert (
            projector["v.patch_embd.weight"]
            == projector["mm.0.weight"]
            == ("F32" if level == "f32" else "F16")
        )
        assert projector["mm.0.bias"] == projector["v.pre_ln.weight"] == "F32"


# --- the vocabulary ----------------------------------------------------------------------


@needs_llama_cpp
def test_llama_cpp_tokenizes_prompts_as_the_hf_tokenizer_does(
    folder: Path, converted: dict[str, tuple[Path, Path]]
) -> None:
    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    llm = load(converted["q4_0"][0])
    try:
        # Every corpus line, words outside it, and characters only byte pieces spell.
        for text in [
            *CORPUS,
            "Describe the kitchen, please",
            "héllo ✓",
            "llama 🦙 中文\ttab\nline",
        ]:
            assert (
                llm.tokenize(text.encode(), add_bos=True, special=False) == hf.encode(text).ids
            ), text
    finally:
        llm.close()


@needs_llama_cpp
def test_merge_priority_comes_from_the_merges_not_the_ids(tmp_path: Path) -> None:
    """Scores from merge ranks: right even when ids do not follow the merge order (a vocabulary
    extended after training), where "score = -id" would merge in the wrong order."""
    src = write_tiny_llava(tmp_path / "tiny-llava")
    data = json.loads((src / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    learned = [p for p, i in vocab.items() if 259 <= i < 512]  # after unk, bos, eos, bytes
    ids = sorted(vocab[p] for p in learned)
    for piece, i in zip(learned, np.random.default_rng(0).permutation(ids), strict=True):
        vocab[piece] = int(i)
    (src / "tokenizer.json").write_text(json.dumps(data))
    model, _ = convert_llava(src, tmp_path / "out")

    hf = Tokenizer.from_file(str(src / "tokenizer.json"))
    llm = load(model)
    try:
        for text in CORPUS:
            assert (
                llm.tokenize(text.encode(), add_bos=True, special=False) == hf.encode(text).ids
            ), text
    finally:
        llm.close()


def test_vocabulary_keeps_ids_kinds_specials_and_template(
    converted: dict[str, tuple[Path, Path]],
) -> None:
    model, _ = converted["f16"]
    reader = gguf.GGUFReader(model)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    kinds = reader.fields["tokenizer.ggml.token_type"].contents()
    kind = {t: gguf.TokenType(kinds[tokens.index(t)]) for t in tokens}

    assert len(tokens) == 576  # 514 tokens padded to the embedding's rows, as BakLLaVA's
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[512:514] == ["<image>", "<pad>"]
    assert kind["<unk>"] == gguf.TokenType.UNKNOWN
    assert {kind[t] for t in ("<s>", "</s>", "<image>", "<pad>")} == {gguf.TokenType.CONTROL}
    assert kind["<0x0A>"] == kind["<0xFF>"] == gguf.TokenType.BYTE
    assert kind["▁the"] == gguf.TokenType.NORMAL
    assert tokens[514:] == [f"[PAD{i}]" for i in range(514, 576)]
    assert {kind[t] for t in tokens[514:]} == {gguf.TokenType.UNUSED}

    info = gguf_info(model)
    assert info["tokenizer.ggml.model"] == "llama"
    assert (info["tokenizer.ggml.bos_token_id"], info["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert (info["tokenizer.ggml.unknown_token_id"], info["tokenizer.ggml.padding_token_id"]) == (
        0,
        513,
    )
    assert info["tokenizer.ggml.add_bos_token"] is True
    assert info["tokenizer.ggml.add_eos_token"] is False
    assert info["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert "tokenizer.ggml.tokens" not in info


# --- the numbers: text model vs transformers, projector vs llama.cpp's graph --------------


@pytest.fixture(scope="module")
def lively(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model made sensitive to conversion mistakes. At std 0.02 every layer barely
    moves the residual stream; so norms get random values (ln1 is no longer ln2), text q/k
    are scaled x5 (sharper attention shows a wrong rope layout) and vision linears x10
    (activations large enough that gelu != quick_gelu). Measured: a right conversion differs
    from the reference by 1.7e-4 (text) and 5.6e-4 (vision, relative); a wrong rope, gate/up
    or norm by >= 0.13, wrong vision q/k, layer norm or activation by >= 9e-3."""
    copy = write_tiny_llava(tmp_path_factory.mktemp("lively") / "tiny-llava")
    weights = load_file(copy / "model.safetensors")
    rng = np.random.default_rng(5)
    for name, w in weights.items():
        if re.search(r"norm\d?\.weight$|layrnorm\.weight$", name):
            weights[name] = (1 + 0.2 * rng.standard_normal(w.shape)).astype(np.float32)
        elif re.search(r"norm\d?\.bias$|layrnorm\.bias$", name):
            weights[name] = (0.1 * rng.standard_normal(w.shape)).astype(np.float32)
        elif name.startswith("language_model.") and re.search(r"\.[qk]_proj\.", name):
            weights[name] = w * 5
        elif name.startswith("vision_tower.") and re.search(r"_proj\.weight$|fc\d\.weight$", name):
            weights[name] = w * 10
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    return copy


@pytest.fixture(scope="module")
def hf_model(lively: Path) -> Any:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return transformers.LlavaForConditionalGeneration.from_pretrained(
        lively, dtype=torch.float32
    ).eval()


@needs_llama_cpp
@pytest.mark.slow  # loading transformers takes ~2.5 s
def test_text_logits_match_transformers_at_f32(lively: Path, hf_model: Any, tmp_path: Path) -> None:
    import torch

    model, _ = convert_llava(lively, tmp_path, "f32")
    ids = Tokenizer.from_file(str(lively / "tokenizer.json")).encode(CORPUS[6]).ids
    with torch.no_grad():
        want = hf_model(input_ids=torch.tensor([ids])).logits[0].numpy()
    llm = load(model, logits_all=True)
    try:
        llm.eval(ids)
        got = llm.scores[: len(ids)]
    finally:
        llm.close()

    assert np.abs(got - want).max() < 1e-3  # every position, so every rope angle
    assert (got.argmax(-1) == want.argmax(-1)).all()  # greedy decoding picks the same tokens


def picture(seed: int = 1, width: int = SIDE, height: int = SIDE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encode_picture(model: Path, mmproj: Path, rgb: np.ndarray) -> tuple[list[int], np.ndarray]:
    """libmtmd's view of `USER: <picture>\\nWhat is this? ASSISTANT:`: the kinds of its
    chunks (0 text, 1 image) and the picture's embedding, one row per image token."""
    llm = load(model, n_ctx=1024)
    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.print_timings = False, 2, False
    ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), llm.model, params)
    assert ctx, "libmtmd refused the projector"
    data = np.ascontiguousarray(rgb)
    bitmap = mtmd.mtmd_bitmap_init(
        data.shape[1], data.shape[0], (ctypes.c_uint8 * data.size).from_buffer_copy(data.tobytes())
    )
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        prompt = f"USER: {mtmd.mtmd_default_marker().decode()}\nWhat is this? ASSISTANT:".encode()
        text = mtmd.mtmd_input_text(
            text=prompt, text_len=len(prompt), add_special=True, parse_special=True
        )
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        assert mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), bitmaps, 1) == 0
        parts = [
            mtmd.mtmd_input_chunks_get(chunks, i)
            for i in range(mtmd.mtmd_input_chunks_size(chunks))
        ]
        kinds = [mtmd.mtmd_input_chunk_get_type(c) for c in parts]
        image = parts[kinds.index(mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE)]
        n = mtmd.mtmd_input_chunk_get_n_tokens(image)
        assert mtmd.mtmd_encode_chunk(ctx, image) == 0
        rows = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(ctx), shape=(n * llm.n_embd(),))
        return kinds, rows.reshape(n, llm.n_embd()).copy()
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)
        mtmd.mtmd_free(ctx)
        llm.close()


@needs_llama_cpp
@pytest.mark.parametrize("level", ["f16", "q4_0"])
@pytest.mark.parametrize("size", [(SIDE, SIDE), (500, 300)])
def test_a_picture_becomes_576_image_tokens(
    converted: dict[str, tuple[Path, Path]], level: str, size: tuple[int, int]
) -> None:
    kinds, rows = encode_picture(*converted[level], picture(width=size[0], height=size[1]))

    assert kinds == [
        mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT,
        mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE,
        mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT,
    ]
    assert rows.shape == (576, 64)  # (336/14)^2 tokens of the text model's width
    assert np.isfinite(rows).all() and rows.std() > 0


@needs_llama_cpp
@pytest.mark.slow  # loading transformers takes ~2.5 s
def test_projector_runs_every_converted_weight_where_llama_cpp_expects_it(
    lively: Path, hf_model: Any, tmp_path: Path
) -> None:
    """libmtmd's embedding equals the same computation done in torch with the HF weights.

    That computation is llama.cpp's LLaVA graph, not transformers' (engines.md §2.4, llama.cpp
    #25814): CLS is appended after the patches, positions are taken in that order, and rows
    1..576 go to the projector. Any misnamed, transposed or swapped tensor, or a wrong feature
    layer or activation, breaks the equality.
    """
    import torch

    model, mmproj = convert_llava(lively, tmp_path, "f32")
    rgb = picture()
    _, got = encode_picture(model, mmproj, rgb)

    tower, projector = hf_model.model.vision_tower, hf_model.model.multi_modal_projector
    pixels = (rgb / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    with torch.no_grad():
        x = tower.embeddings.patch_embedding(
            torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None]
        )
        x = torch.cat(
            [x.flatten(2).transpose(1, 2), tower.embeddings.class_embedding[None, None]], dim=1
        )
        x = tower.pre_layrnorm(x + tower.embeddings.position_embedding.weight[None])
        for layer in tower.encoder.layers[: VISION_LAYERS - 1]:  # vision_feature_layer -2
            x = layer(x, None)
        want = projector(x[0, 1:]).numpy()

    assert np.abs(got - want).max() < 2e-3 * np.abs(want).max()


# --- the projector's layout --------------------------------------------------------------


def test_projector_has_every_vision_block_and_the_feature_layer(
    converted: dict[str, tuple[Path, Path]],
) -> None:
    _, mmproj = converted["f16"]
    info = gguf_info(mmproj)
    names = set(tensor_types(mmproj))

    assert info["clip.projector_type"] == "mlp" and info["clip.has_vision_encoder"] is True
    assert info["clip.vision.block_count"] == VISION_LAYERS  # not n-1, llama.cpp #25817
    assert info["clip.vision.feature_layer"] == [VISION_LAYERS - 1]  # hidden_states[-2]
    assert info["clip.use_gelu"] is False  # quick_gelu
    assert info["clip.vision.projection_dim"] == 64
    assert (info["clip.vision.image_size"], info["clip.vision.patch_size"]) == (336, 14)
    assert info["clip.vision.image_mean"] == pytest.approx(CLIP_MEAN)
    assert info["clip.vision.image_std"] == pytest.approx(CLIP_STD)
    assert {
        f"v.blk.{VISION_LAYERS - 1}.{p}.weight" for p in ("attn_q", "ffn_up", "ffn_down", "ln2")
    } <= names
    assert {
        "v.class_embd",
        "v.patch_embd.weight",
        "v.position_embd.weight",
        "mm.0.weight",
        "mm.2.bias",
    } <= names
    assert not any(n.startswith("v.post_ln") for n in names)
    # ggml order: ffn_up maps 32 -> 64, ffn_down 64 -> 32, so clip.cpp's swap check stays off.
    shapes = {t.name: list(t.shape) for t in gguf.GGUFReader(mmproj).tensors}
    assert shapes["v.blk.0.ffn_up.weight"] == [32, 64] and shapes["v.blk.0.ffn_down.weight"] == [
        64,
        32,
    ]


@pytest.mark.parametrize(("feature_layer", "written"), [(-1, 3), (-3, 1), (1, 1), ([-2], 2)])
def test_feature_layer_follows_the_config(
    folder: Path, tmp_path: Path, feature_layer: Any, written: int
) -> None:
    src = edited_copy(tmp_path / "src", vision_feature_layer=feature_layer)
    _, mmproj = convert_llava(src, tmp_path / "out")
    assert gguf_info(mmproj)["clip.vision.feature_layer"] == [written]


# --- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["q9_z", "int4", ""])
def test_unknown_quantization_is_refused_naming_the_allowed_ones(
    folder: Path, tmp_path: Path, level: str
) -> None:
    with pytest.raises(InvalidRequest, match=r"use one of q4_k_m, q4_k_s, .*, f32"):
        convert_llava(folder, tmp_path, level)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model_type": "mistral"}, "only LLaVA models"),
        ({"vision_feature_select_strategy": "full"}, "vision_feature_select_strategy 'full'"),
        (
            {"vision_config__model_type": "siglip_vision_model"},
            "vision tower 'siglip_vision_model'",
        ),
        ({"text_config__model_type": "qwen2"}, "text model_type 'qwen2'"),
        ({"projector_hidden_act": "relu"}, "projector_hidden_act 'relu'"),
        ({"vision_feature_layer": [-2, -5]}, "several vision_feature_layer"),
        ({"vision_feature_layer": -9}, "outside the 3 vision layers"),
    ],
)
def test_unsupported_models_are_refused_saying_what_is_unsupported(
    folder: Path, tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    src = edited_copy(tmp_path / "src", **config)
    with pytest.raises(InvalidRequest, match=message):
        convert_llava(src, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_pickle_weights_and_missing_weights_are_refused(folder: Path, tmp_path: Path) -> None:
    pickled = write_tiny_llava(tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(UnsafeWeights, match="only safetensors"):
        convert_llava(pickled, tmp_path / "out")

    partial = write_tiny_llava(tmp_path / "partial")
    weights = load_file(partial / "model.safetensors")
    del weights["multi_modal_projector.linear_2.weight"]
    save_file(weights, str(partial / "model.safetensors"))
    with pytest.raises(InvalidRequest, match=r"multi_modal_projector\.linear_2\.weight"):
        convert_llava(partial, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_failure_while_writing_leaves_dest_as_it_was(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convert_llava(folder, tmp_path, "f16")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    calls = 0
    real = np.ndarray.astype

    class Failing(np.ndarray):
        def astype(self, dtype: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 5:  # some tensors of the new model.gguf are already on disk
                raise OSError("disk full")
            return real(self, dtype, *args, **kwargs)

    get = convert._Checkpoint.get
    monkeypatch.setattr(convert._Checkpoint, "get", lambda self, key: get(self, key).view(Failing))
    with pytest.raises(OSError, match="disk full"):
        convert_llava(folder, tmp_path, "q4_0")

    assert calls == 5
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_failing_quantizer_leaves_dest_as_it_was(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convert_llava(folder, tmp_path, "f16")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setitem(convert.QUANTIZATIONS, "q4_0", 9999)  # no file type llama.cpp knows
    with pytest.raises(LimnerError, match=r"llama\.cpp.s quantizer failed"):
        convert_llava(folder, tmp_path, "q4_0")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# --- checkpoints in other layouts --------------------------------------------------------


def test_sharded_bf16_checkpoints_convert_like_one_f32_file(folder: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    weights = {
        k: torch.from_numpy(v).to(torch.bfloat16)
        for k, v in load_file(folder / "model.safetensors").items()
    }
    plain = write_tiny_llava(tmp_path / "plain" / "tiny-llava")
    save_file({k: v.float().numpy() for k, v in weights.items()}, str(plain / "model.safetensors"))
    sharded = write_tiny_llava(tmp_path / "sharded" / "tiny-llava")
    (sharded / "model.safetensors").unlink()
    names = sorted(weights)
    for i, part in enumerate((names[::2], names[1::2]), start=1):
        save_torch(
            {k: weights[k] for k in part}, str(sharded / f"model-0000{i}-of-00002.safetensors")
        )

    for level in ("f32", "q8_0"):
        want = convert_llava(plain, tmp_path / "want" / level, level)
        got = convert_llava(sharded, tmp_path / "got" / level, level)
        assert [p.read_bytes() for p in got] == [p.read_bytes() for p in want]


# --- gguf_info ---------------------------------------------------------------------------


def test_gguf_info_reports_architecture_context_blocks_and_parameters(
    folder: Path, converted: dict[str, tuple[Path, Path]]
) -> None:
    text_params = sum(
        math.prod(v.shape)
        for k, v in load_file(folder / "model.safetensors").items()
        if k.startswith("language_model.")
    )
    for level in LEVELS:
        info = gguf_info(converted[level][0])
        assert info["general.architecture"] == "llama"
        assert info["llama.context_length"] == 32768
        assert info["llama.block_count"] == 2
        assert info["llama.attention.layer_norm_rms_epsilon"] == 1e-05
        assert info["general.parameter_count"] == text_params  # quantized blocks count as weights
        json.dumps(info)  # plain Python values, ready for /api/show
    assert gguf_info(converted["f16"][1])["general.parameter_count"] > 0


@pytest.fixture
def garbage(tmp_path: Path, converted: dict[str, tuple[Path, Path]]) -> Iterator[list[Path]]:
    real = converted["f16"][0].read_bytes()
    contents = {
        "empty": b"",
        "random": np.random.default_rng(0).bytes(4096),
        "magic-only": b"GGUF" + np.random.default_rng(1).bytes(64),
        "truncated": real[: len(real) // 3],
        "json": b'{"not": "gguf"}',
    }
    paths = []
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    yield paths


def test_gguf_info_refuses_files_that_are_not_gguf(garbage: list[Path]) -> None:
    for path in garbage:
        with pytest.raises(InvalidRequest, match="not a valid GGUF"):
            gguf_info(path)


# --- the tiny pair -----------------------------------------------------------------------


def test_tiny_gguf_pair_is_deterministic_and_needs_no_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from limner.tiny import write_tiny_llava_gguf; "
        f"write_tiny_llava_gguf(Path({str(tmp_path / 'a')!r}), seed=3, quantize='q8_0'); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"

    again = write_tiny_llava_gguf(tmp_path / "b", seed=3, quantize="q8_0")
    other = write_tiny_llava_gguf(tmp_path / "c", seed=4, quantize="q8_0")
    for name in ("model.gguf", "mmproj.gguf"):
        assert (tmp_path / "a" / name).read_bytes() == (again / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (other / name).read_bytes()
    assert gguf_info(again / "model.gguf")["general.file_type"] == FILE_TYPES["q8_0"]
