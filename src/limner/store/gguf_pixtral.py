"""Mistral Small 3.1 (transformers' `mistral3`: a Mistral text model and a Pixtral tower) as
llama.cpp's GGUF pair, the way llama.cpp's own converter writes it:

- `model.gguf`: arch `llama` with Mistral's settings (llama.cpp's converter writes Mistral
  Small 3.1 as `llama`; its `mistral3` arch is Ministral 3's, with YaRN).
- `mmproj.gguf`: projector `pixtral`: the Pixtral tower (RMSNorm blocks, gated MLP, 2-D RoPE
  whose theta clip.cpp fixes at 10000), then Mistral Small 3.1's patch merger
  (`mm.input_norm`, `mm.patch_merger` over spatial_merge_size² patches), the two-layer GELU
  projector (`mm.1`, `mm.2`), and the `[IMG_BREAK]` token's embedding row
  (`v.token_embd.img_break`), which clip.cpp puts after each row of a picture but the last.

libmtmd writes `[IMG_END]` after the picture itself, so a picture of r x c merged patches
costs r * (c + 1) tokens, as in transformers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as QType
from gguf import GGUFWriter

from limner.errors import InvalidRequest
from limner.store.gguf import (
    _GGUF,
    CONVERTED_FTYPES,
    PROJECTOR_FILE,
    TEXT_FILE,
    VocabWriter,
    _Checkpoint,
    _count_layers,
    _image_normalization,
    _layer,
    _matrix,
    _read_json,
    _Tensor,
    _text_params,
    _TextParams,
    _vector,
    llama_text,
)

PIXTRAL_ROPE_THETA = 10000.0  # clip.cpp's, whatever the file says
PIXTRAL_EPS = 1e-5  # Pixtral's norms, fixed in transformers' code
PICTURE_TOKENS = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")
MISTRAL_TEXT_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 131072,
}
Words = Callable[[Path, dict[str, Any], int], VocabWriter]


def mistral3_files(
    src: Path,
    config: dict[str, Any],
    weights: _Checkpoint,
    qtype: QType,
    vision_qtype: QType,
    words: Words,
) -> dict[str, _GGUF]:
    """A `llama` text model and a `pixtral` projector; `words` reads the vocabulary."""
    text_config = {**MISTRAL_TEXT_DEFAULTS, **(config.get("text_config") or {})}
    _check_text(text_config)
    text = _text_params({**config, "text_config": text_config}, weights, name=src.name)
    ids = _picture_ids(src)
    return {
        TEXT_FILE: llama_text(text, words(src, config, text.n_vocab), weights, qtype),
        PROJECTOR_FILE: _projector(src, config, weights, text, ids["[IMG_BREAK]"], vision_qtype),
    }


def _check_text(text: dict[str, Any]) -> None:
    """What llama.cpp's `llama` arch computes as transformers' Mistral does, or a 400."""
    model_type = text.get("model_type", "mistral")
    if model_type not in ("mistral", "llama"):
        raise InvalidRequest(f"unsupported Mistral 3 for GGUF: text model_type {model_type!r}")
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise InvalidRequest(f"unsupported Mistral 3 for GGUF: rope scaling {rope!r}")
    window = text.get("sliding_window")
    # The `llama` arch attends to the whole window; a shorter sliding window would differ.
    if window and int(window) < int(text["max_position_embeddings"]):
        raise InvalidRequest(
            f"unsupported Mistral 3 for GGUF: sliding_window {window} (llama.cpp's llama arch "
            "attends to the whole context)"
        )


def _picture_ids(src: Path) -> dict[str, int]:
    """The ids of [IMG], [IMG_BREAK] and [IMG_END] as added tokens: libmtmd writes [IMG_END]
    as text that only an added (special) token reads back whole, and the projector carries
    [IMG_BREAK]'s embedding, so a vocabulary without them is refused."""
    tok = _read_json(src / "tokenizer.json")
    ids = {added["content"]: added["id"] for added in tok.get("added_tokens") or []}
    missing = [t for t in PICTURE_TOKENS if t not in ids]
    if missing:
        raise InvalidRequest(
            f"unsupported Mistral 3 for GGUF: the vocabulary has no added token {', '.join(missing)}"
        )
    return {t: int(ids[t]) for t in PICTURE_TOKENS}


def _projector(
    src: Path,
    config: dict[str, Any],
    weights: _Checkpoint,
    text: _TextParams,
    img_break: int,
    qtype: QType,
) -> _GGUF:
    vision = config.get("vision_config") or {}
    _check_vision(config, vision)
    n_embd, _, patch, _ = weights.shape("vision_tower.patch_conv.weight")
    n_layer = _count_layers(weights, "vision_tower.transformer.layers.{}.attention_norm.weight")
    n_head = int(vision.get("num_attention_heads", 16))
    merge = int(config.get("spatial_merge_size", 2))
    merger = "multi_modal_projector.patch_merger.merging_layer.weight"
    if weights.shape(merger) != (n_embd, n_embd * merge * merge):
        raise InvalidRequest(
            f"the patch merger {weights.shape(merger)} does not match spatial_merge_size {merge}"
        )
    if weights.shape("multi_modal_projector.linear_2.weight")[0] != text.n_embd:
        raise InvalidRequest("the projector does not project to the text model's width")
    mean, std = _image_normalization(src)
    n_ff = weights.shape("vision_tower.transformer.layers.0.feed_forward.gate_proj.weight")[0]

    def metadata(w: GGUFWriter) -> None:
        w.add_name(f"{text.name} projector")
        w.add_file_type(CONVERTED_FTYPES[qtype])
        w.add_string("clip.projector_type", "pixtral")
        w.add_bool("clip.has_vision_encoder", True)
        w.add_bool("clip.has_text_encoder", False)
        # the tower's gated MLP: SiLU in Mistral Small 3.1, GELU in Pixtral-12B
        w.add_bool("clip.use_silu" if vision.get("hidden_act") == "silu" else "clip.use_gelu", True)
        w.add_uint32("clip.vision.image_size", int(vision.get("image_size", 1540)))
        w.add_uint32("clip.vision.patch_size", patch)
        w.add_uint32("clip.vision.embedding_length", n_embd)
        w.add_uint32("clip.vision.feed_forward_length", n_ff)
        w.add_uint32("clip.vision.projection_dim", text.n_embd)
        w.add_uint32("clip.vision.attention.head_count", n_head)
        w.add_float32("clip.vision.attention.layer_norm_epsilon", PIXTRAL_EPS)
        w.add_uint32("clip.vision.block_count", n_layer)
        w.add_uint32("clip.vision.spatial_merge_size", merge)
        w.add_array("clip.vision.image_mean", mean)
        w.add_array("clip.vision.image_std", std)

    tensors = [
        *_tower_tensors(weights, n_layer, n_head, qtype),
        _vector(weights, "mm.input_norm.weight", "multi_modal_projector.norm.weight"),
        _matrix(weights, "mm.patch_merger.weight", merger, qtype),
        *_layer(weights, "mm.1", "multi_modal_projector.linear_1", qtype),
        *_layer(weights, "mm.2", "multi_modal_projector.linear_2", qtype),
        _embedding_row(weights, "v.token_embd.img_break", img_break),
    ]
    return _GGUF("clip", metadata, tensors)


def _check_vision(config: dict[str, Any], vision: dict[str, Any]) -> None:
    """A Pixtral tower and projector that clip.cpp's `pixtral` graph computes faithfully."""
    rope = vision.get("rope_parameters") or {}
    theta = float(rope.get("rope_theta") or vision.get("rope_theta") or PIXTRAL_ROPE_THETA)
    unsupported: dict[str, tuple[Any, set[Any]]] = {
        "vision model_type": (vision.get("model_type", "pixtral"), {"pixtral"}),
        "vision hidden_act": (vision.get("hidden_act", "gelu"), {"silu", "gelu"}),
        "projector_hidden_act": (config.get("projector_hidden_act", "gelu"), {"gelu"}),
        # clip.cpp takes the last block's output
        "vision_feature_layer": (config.get("vision_feature_layer", -1), {-1}),
        "vision rope_theta": (theta, {PIXTRAL_ROPE_THETA}),
    }
    for what, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise InvalidRequest(
                f"unsupported Mistral 3 for GGUF: {what} {value!r} "
                f"(llama.cpp takes {', '.join(map(str, sorted(allowed)))})"
            )


def _tower_tensors(weights: _Checkpoint, n_layer: int, n_head: int, qtype: QType) -> list[_Tensor]:
    """The patch convolution (f32, as llama.cpp's converter keeps embeddings), ln_pre and the
    blocks. q and k are permuted to the interleaved rotary pairs clip.cpp's 2-D RoPE rotates,
    as llama.cpp's converter does."""
    tower = "vision_tower"
    plan = [
        _matrix(weights, "v.patch_embd.weight", f"{tower}.patch_conv.weight", QType.F32),
        _vector(weights, "v.pre_ln.weight", f"{tower}.ln_pre.weight"),
    ]
    parts = {
        "attn_v": "attention.v_proj",
        "attn_out": "attention.o_proj",
        "ln1": "attention_norm",
        "ln2": "ffn_norm",
        "ffn_gate": "feed_forward.gate_proj",
        "ffn_up": "feed_forward.up_proj",
        "ffn_down": "feed_forward.down_proj",
    }
    for i in range(n_layer):
        hf = f"{tower}.transformer.layers.{i}"
        for name in ("attn_q", "attn_k"):
            key = f"{hf}.attention.{name[-1]}_proj.weight"
            plan.append(_matrix(weights, f"v.blk.{i}.{name}.weight", key, qtype, rope_heads=n_head))
        for name, key in parts.items():
            plan += _layer(weights, f"v.blk.{i}.{name}", f"{hf}.{key}", qtype)
    return plan


def _embedding_row(weights: _Checkpoint, name: str, row: int) -> _Tensor:
    """One row of the text model's token embedding, in f32."""
    key = "language_model.embed_tokens.weight"
    rows, width = weights.shape(key)
    if not 0 <= row < rows:
        raise InvalidRequest(f"token {row} is outside the {rows}-row embedding")
    return _Tensor(name, (width,), QType.F32, lambda: np.array(weights.get(key)[row]))
