"""MiniCPM-V 4.6 (transformers' `minicpmv4_6`: a SigLIP tower with a window-attention merger,
a merger MLP and a Qwen3.5 language model) as llama.cpp's GGUF pair, the way llama.cpp's own
converter writes it:

- `model.gguf`: arch `qwen35`, Qwen3.5's hybrid stack: Gated DeltaNet (linear attention)
  blocks and, every `full_attention_interval`-th block, gated full attention with q/k norms
  and partial M-RoPE. Its RMSNorms are stored as 1 + w (Qwen3.5 scales by 1 + w; the gated
  norm of the linear blocks by w itself), `A_log` as A = -exp(A_log), and, where a key head
  serves several value heads, the value heads in the tiled order ggml broadcasts in.
- `mmproj.gguf`: projector `minicpmv4_6`: the SigLIP blocks with learned positions on a 70x70
  grid (clip.cpp buckets a picture's patches onto it), the ViT merger after block
  `insert_layer_id` (`clip.vision.wa_layer_indexes`: 2x2 window attention, then 2x2 patches
  merged by an MLP), the remaining blocks, the post-layernorm, and the final 2x2 merger MLP
  (`mm.input_norm`, `mm.up`, `mm.down`): one token per 16x16 patches.

libmtmd slices a picture as MiniCPM-V 2.6 does (the preprocessor's `scale_resolution` is
`clip.vision.image_size`): `<image>` overview `</image>`, then each slice in `<slice>`
`</slice>`, a "\\n" after each row of slices but the last; the tokens take consecutive
positions, as in transformers. The chat template writes "<|image_pad|>" where a picture goes.
Two things differ from transformers' processor, as in llama.cpp itself: libmtmd writes no
`<image_id>N</image_id>` before a picture, and stretches a picture that fits in one slice to
a square overview (transformers keeps its aspect).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
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
    _layer,
    _matrix,
    _plus_one,
    _read_json,
    _Tensor,
    _TextParams,
    _vector,
)
from limner.store.gguf import _text_metadata as _llama_metadata

POSITION_GRID = 70  # clip.cpp buckets every picture onto 70x70 learned positions
MERGE = 2  # the ViT merger's and the final merger's 2x2, fixed in clip.cpp's graph
MAX_SLICES = 9  # libmtmd cuts a picture into at most 9 slices
EPS = 1e-6  # the final merger's LayerNorm in transformers; clip.cpp uses the tower's eps there
SLICE_TOKENS = ("<image>", "</image>", "<slice>", "</slice>")
# transformers' Qwen3.5 text defaults for what a config.json may leave out.
QWEN35_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "hidden_act": "silu",
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
}
QWEN35_MROPE_SECTION = [11, 11, 10]  # transformers' default when rope_parameters has none
# MiniCPM-V 4.6's image processor defaults (preprocessor_config.json may leave them out).
PREPROCESSOR_DEFAULTS: dict[str, Any] = {
    "scale_resolution": 448,
    "patch_size": 14,
    "max_slice_nums": MAX_SLICES,
    "slice_mode": True,
    "downsample_mode": "16x",
}
Words = Callable[[Path, dict[str, Any], int], VocabWriter]
SigLIP = Callable[[dict[str, Any], Path, _Checkpoint], Any]


@dataclass(frozen=True)
class _Qwen35(_TextParams):
    """Qwen3.5's sizes: llama's, and the rotary part of a head, its sections, and the Gated
    DeltaNet blocks'."""

    n_rot: int
    sections: list[int]
    interval: int  # every interval-th block attends fully, the others are Gated DeltaNet
    conv_kernel: int
    state_size: int  # key (= value) head width of the linear blocks
    n_k_heads: int
    n_v_heads: int


def minicpmv46_files(
    src: Path,
    config: dict[str, Any],
    weights: _Checkpoint,
    qtype: QType,
    vision_qtype: QType,
    words: Words,
    siglip: SigLIP,
    tower_tensors: Callable[[_Checkpoint, Any, QType], list[_Tensor]],
    tower_metadata: Callable[..., Callable[[GGUFWriter], None]],
) -> dict[str, _GGUF]:
    """A `qwen35` text model and a `minicpmv4_6` projector. `words` reads the vocabulary;
    `siglip`, `tower_tensors` and `tower_metadata` are gguf_families' SigLIP tower helpers."""
    _check_model(config)
    text = _text(src, config, weights)
    _check_slice_tokens(src)
    vocab = words(src, config, text.n_vocab)
    tower = siglip(config, src, weights)
    preprocessor = _preprocessor(src, tower.patch_size)
    _check_tower(tower)
    vision = config.get("vision_config") or {}
    insert = int(config.get("insert_layer_id", vision.get("insert_layer_id", 6)))
    if not 0 <= insert < tower.n_layer:
        raise InvalidRequest(
            f"unsupported MiniCPM-V 4.6 for GGUF: insert_layer_id {insert} is not one of the "
            f"{tower.n_layer} vision blocks"
        )
    # clip.cpp cuts pictures into slices of image_size pixels: the processor's scale_resolution.
    tower = replace(tower, image_size=int(preprocessor["scale_resolution"]))
    plain = tower_metadata(tower, text.name, "minicpmv4_6", text.n_embd, vision_qtype, 2 * MERGE)

    def metadata(w: GGUFWriter) -> None:
        plain(w)
        w.add_array("clip.vision.wa_layer_indexes", [insert])  # where the ViT merger goes

    return {
        TEXT_FILE: _GGUF(
            "qwen35", _text_metadata(text, vocab, qtype), _text_tensors(weights, text, qtype)
        ),
        PROJECTOR_FILE: _GGUF(
            "clip",
            metadata,
            [
                *tower_tensors(weights, tower, vision_qtype),
                *_merger_tensors(weights, tower.n_embd, text.n_embd, vision_qtype),
            ],
        ),
    }


# --- checks ------------------------------------------------------------------------------


def _refuse(what: str, value: Any, allowed: str) -> InvalidRequest:
    return InvalidRequest(
        f"unsupported MiniCPM-V 4.6 for GGUF: {what} {value!r} (llama.cpp takes {allowed})"
    )


def _check_model(config: dict[str, Any]) -> None:
    """The merging llama.cpp's `minicpmv4_6` graph computes: 16x, one 2x2 merger round."""
    vision = config.get("vision_config") or {}
    fixed: dict[str, tuple[Any, Any]] = {
        "downsample_mode": (config.get("downsample_mode", "16x"), "16x"),
        "merger_times": (int(config.get("merger_times", 1)), 1),
        "merge_kernel_size": (
            list(config.get("merge_kernel_size", [MERGE, MERGE])),
            [MERGE, MERGE],
        ),
        "window_kernel_size": (
            list(vision.get("window_kernel_size", [MERGE, MERGE])),
            [MERGE, MERGE],
        ),
    }
    for what, (value, allowed) in fixed.items():
        if value != allowed:
            raise _refuse(what, value, repr(allowed))


def _check_tower(tower: Any) -> None:
    """A tower clip.cpp computes as transformers does."""
    if tower.image_size // tower.patch_size != POSITION_GRID:
        raise _refuse(
            "vision position grid",
            f"{tower.image_size // tower.patch_size}x{tower.image_size // tower.patch_size}",
            f"{POSITION_GRID}x{POSITION_GRID}: image_size = {POSITION_GRID} x patch_size",
        )
    if tower.eps != EPS:  # the final merger's norm is 1e-6 in transformers, the tower's in clip.cpp
        raise _refuse("vision layer_norm_eps", tower.eps, str(EPS))
    if tower.n_ff == tower.n_embd:
        # clip.cpp swaps a block's ffn_up and ffn_down when ffn_down's input is n_embd.
        raise _refuse("vision intermediate_size", tower.n_ff, "one other than hidden_size")


def _preprocessor(src: Path, patch: int) -> dict[str, Any]:
    """The image processor's slicing, which libmtmd reproduces: a 4x4-patch aligned
    scale_resolution, up to 9 slices, slicing on."""
    found: dict[str, Any] = {}
    if (src / "preprocessor_config.json").exists():
        found = _read_json(src / "preprocessor_config.json")
    elif (src / "processor_config.json").exists():
        found = _read_json(src / "processor_config.json").get("image_processor") or {}
    settings = {**PREPROCESSOR_DEFAULTS, **found}
    side, align = int(settings["scale_resolution"]), patch * 2 * MERGE
    fixed: dict[str, tuple[Any, Any, str]] = {
        "image processor patch_size": (int(settings["patch_size"]), patch, str(patch)),
        "max_slice_nums": (int(settings["max_slice_nums"]), MAX_SLICES, str(MAX_SLICES)),
        "slice_mode": (bool(settings["slice_mode"]), True, "true"),
        "image processor downsample_mode": (settings["downsample_mode"], "16x", "16x"),
        "scale_resolution": (side % align, 0, f"a multiple of {align}"),
    }
    for what, (value, allowed, said) in fixed.items():
        if value != allowed:
            raise _refuse(what, side if what == "scale_resolution" else value, said)
    return settings


def _check_slice_tokens(src: Path) -> None:
    """libmtmd writes <image>, </image>, <slice> and </slice> around a picture's parts as
    tokens it looks up by text; a vocabulary without them is refused."""
    tok = _read_json(src / "tokenizer.json")
    texts = set((tok.get("model") or {}).get("vocab") or {})
    texts |= {added.get("content") for added in tok.get("added_tokens") or []}
    missing = [t for t in SLICE_TOKENS if t not in texts]
    if missing:
        raise InvalidRequest(
            f"unsupported MiniCPM-V 4.6 for GGUF: the vocabulary has no token {', '.join(missing)}"
        )


# --- the Qwen3.5 text model --------------------------------------------------------------


def _text(src: Path, config: dict[str, Any], weights: _Checkpoint) -> _Qwen35:
    """Sizes from the tensors, the rest from text_config; a 400 for what llama.cpp's `qwen35`
    computes differently."""
    text = {**QWEN35_DEFAULTS, **(config.get("text_config") or {})}
    model_type = text.get("model_type", "qwen3_5_text")
    if model_type != "qwen3_5_text":
        raise _refuse("text model_type", model_type, "'qwen3_5_text'")
    for what, allowed in (("hidden_act", "silu"), ("attention_bias", False)):
        if text.get(what, allowed) != allowed:
            raise _refuse(f"text {what}", text[what], repr(allowed))
    lm = "language_model"
    n_vocab, n_embd = weights.shape(f"{lm}.embed_tokens.weight")
    n_layer = _count_layers(weights, f"{lm}.layers.{{}}.input_layernorm.weight")
    interval = _interval(text, n_layer)
    n_head, head_dim = int(text["num_attention_heads"]), int(text["head_dim"])
    q_rows = weights.shape(f"{lm}.layers.{interval - 1}.self_attn.q_proj.weight")[0]
    if q_rows != 2 * n_head * head_dim:  # each head's query, then its output gate
        raise InvalidRequest("text_config's head count does not match the q_proj weights")
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise _refuse("rope scaling", rope, "default")
    factor = rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.25))
    n_rot = int(head_dim * float(factor))
    sections = [int(v) for v in rope.get("mrope_section") or QWEN35_MROPE_SECTION]
    if n_rot % 2 or len(sections) > 4 or sum(sections) != n_rot // 2:
        raise _refuse("mrope_section", sections, f"sections of the {n_rot // 2} rotary pairs")
    k_dim, v_dim = int(text["linear_key_head_dim"]), int(text["linear_value_head_dim"])
    n_k, n_v = int(text["linear_num_key_heads"]), int(text["linear_num_value_heads"])
    if k_dim != v_dim:  # llama.cpp sizes both head widths by ssm.state_size
        raise _refuse("linear_value_head_dim", v_dim, f"linear_key_head_dim ({k_dim})")
    if n_v % n_k:
        raise _refuse("linear_num_value_heads", n_v, f"a multiple of {n_k} key heads")
    return _Qwen35(
        name=str(config.get("_name_or_path") or src.name),
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=n_layer,
        n_ff=weights.shape(f"{lm}.layers.0.mlp.gate_proj.weight")[0],
        n_head=n_head,
        n_head_kv=int(text["num_key_value_heads"]),
        head_dim=head_dim,
        n_rot=n_rot,
        sections=sections + [0] * (4 - len(sections)),
        context_length=int(text["max_position_embeddings"]),
        rms_eps=float(text["rms_norm_eps"]),
        rope_theta=float(rope.get("rope_theta") or text.get("rope_theta") or 10000.0),
        interval=interval,
        conv_kernel=int(text["linear_conv_kernel_dim"]),
        state_size=k_dim,
        n_k_heads=n_k,
        n_v_heads=n_v,
        has_output="lm_head.weight" in weights and not config.get("tie_word_embeddings"),
    )


def _interval(text: dict[str, Any], n_layer: int) -> int:
    """llama.cpp's full_attention_interval: block i attends fully when (i + 1) is a multiple
    of it; layer_types laid out otherwise are refused."""
    types = text.get("layer_types")
    if not types:
        return int(text.get("full_attention_interval", 4))
    full = [i for i, kind in enumerate(types) if kind == "full_attention"]
    if not full:
        raise _refuse("layer_types", types, "full attention every n-th block")
    interval = full[0] + 1
    expected = ["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                for i in range(n_layer)]  # fmt: skip
    if list(types) != expected:
        raise _refuse("layer_types", types, "full attention every n-th block")
    return interval


def _text_metadata(text: _Qwen35, vocab: VocabWriter, qtype: QType) -> Callable[[GGUFWriter], None]:
    llama_like = _llama_metadata(text, vocab, CONVERTED_FTYPES[qtype], rope_dims=text.n_rot)

    def write(w: GGUFWriter) -> None:
        llama_like(w)
        w.add_rope_dimension_sections(text.sections)
        w.add_ssm_conv_kernel(text.conv_kernel)
        w.add_ssm_state_size(text.state_size)
        w.add_ssm_group_count(text.n_k_heads)
        w.add_ssm_time_step_rank(text.n_v_heads)
        w.add_ssm_inner_size(text.state_size * text.n_v_heads)
        w.add_full_attention_interval(text.interval)

    return write


def _text_tensors(weights: _Checkpoint, text: _Qwen35, qtype: QType) -> list[_Tensor]:
    lm = "language_model"
    plan = [_matrix(weights, "token_embd.weight", f"{lm}.embed_tokens.weight", qtype)]
    norms = {"attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm"}
    full = {
        "attn_q": "self_attn.q_proj",  # queries and their gates, head by head, as llama.cpp reads
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
    }
    full_norms = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
    mlp = {"ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(text.n_layer):
        hf, blk = f"{lm}.layers.{i}", f"blk.{i}"
        attends = (i + 1) % text.interval == 0
        for name, key in (norms | full_norms if attends else norms).items():
            plan.append(_plus_one(weights, f"{blk}.{name}.weight", f"{hf}.{key}.weight"))
        if attends:
            for name, key in full.items():
                plan.append(_matrix(weights, f"{blk}.{name}.weight", f"{hf}.{key}.weight", qtype))
        else:
            plan += _delta_net(weights, text, f"{hf}.linear_attn", blk, qtype)
        for name, key in mlp.items():
            plan.append(_matrix(weights, f"{blk}.{name}.weight", f"{hf}.{key}.weight", qtype))
    plan.append(_plus_one(weights, "output_norm.weight", f"{lm}.norm.weight"))
    if text.has_output:
        plan.append(_matrix(weights, "output.weight", "lm_head.weight", qtype))
    return plan


def _delta_net(
    weights: _Checkpoint, text: _Qwen35, hf: str, blk: str, qtype: QType
) -> list[_Tensor]:
    """A Gated DeltaNet block. HF groups the value heads by the key head they share
    (k0: v0 v1, k1: v0 v1); ggml broadcasts the key heads tiled (k0 k1 k0 k1), so every
    value-head axis is put in that order, as llama.cpp's converter does. The convolution
    kernel loses its group axis and stays f32 (ggml's ssm_conv reads f32); A is stored as
    -exp(A_log); the gated norm scales by w itself."""
    tile = _Tiling(text.n_k_heads, text.n_v_heads // text.n_k_heads, text.state_size)
    keys = 2 * text.state_size * text.n_k_heads  # the q and k channels before the values
    conv_dim, _, kernel = weights.shape(f"{hf}.conv1d.weight")

    def tensor(name: str, key: str, head: int, kind: QType, make: Callable[..., np.ndarray],
               shape: tuple[int, ...] | None = None) -> _Tensor:  # fmt: skip
        key = f"{hf}.{key}"
        dtype = np.float32 if kind == QType.F32 else np.float16
        return _Tensor(
            f"{blk}.{name}",
            shape or weights.shape(key),
            kind,
            lambda: make(weights.get(key), head).reshape(shape or weights.shape(key)).astype(dtype),
        )

    def values(w: np.ndarray, head: int, skip: int = 0) -> np.ndarray:
        """`w` with its value-head rows (those after `skip`) in tiled order."""
        w = w.reshape(len(w), -1)
        return np.concatenate([w[:skip], tile.rows(w[skip:], head)])

    return [
        tensor("attn_qkv.weight", "in_proj_qkv.weight", tile.width, qtype,
               lambda w, head: values(w, head, skip=keys)),
        tensor("attn_gate.weight", "in_proj_z.weight", tile.width, qtype, values),
        tensor("ssm_beta.weight", "in_proj_b.weight", 1, qtype, values),
        tensor("ssm_alpha.weight", "in_proj_a.weight", 1, qtype, values),
        tensor("ssm_conv1d.weight", "conv1d.weight", tile.width, QType.F32,
               lambda w, head: values(w, head, skip=keys), shape=(conv_dim, kernel)),
        tensor("ssm_dt.bias", "dt_bias", 1, QType.F32, values),
        tensor("ssm_a", "A_log", 1, QType.F32, lambda w, head: -np.exp(values(w, head))),
        _vector(weights, f"{blk}.ssm_norm.weight", f"{hf}.norm.weight"),
        tensor("ssm_out.weight", "out_proj.weight", tile.width, qtype,
               lambda w, head: values(w.T, head).T),
    ]  # fmt: skip


@dataclass(frozen=True)
class _Tiling:
    """Value heads from grouped order (by key head) to tiled order."""

    n_k_heads: int
    per_key: int
    width: int  # a value head's width

    def rows(self, w: np.ndarray, head: int) -> np.ndarray:
        """`w`'s rows, `head` rows a value head, in tiled order."""
        grouped = w.reshape(self.n_k_heads, self.per_key, head, *w.shape[1:])
        return np.ascontiguousarray(grouped.swapaxes(0, 1)).reshape(w.shape)


# --- the mergers ---------------------------------------------------------------------------


def _merger_tensors(
    weights: _Checkpoint, n_embd: int, text_embd: int, qtype: QType
) -> list[_Tensor]:
    """The ViT merger (2x2 window attention, then 2x2 patches merged by an MLP with a mean
    residual) and the final merger (norm, MLP into the text model's width)."""
    vit, final = "vision_tower.vit_merger", "model.merger.mlp.0"
    merged = n_embd * MERGE * MERGE
    if weights.shape(f"{vit}.linear_1.weight")[1] != merged:
        raise InvalidRequest("the ViT merger does not merge 2x2 patches of the tower's width")
    if weights.shape(f"{final}.linear_2.weight") != (text_embd, merged):
        raise InvalidRequest("the merger does not project 2x2 patches to the text model's width")
    parts = {
        "v.vit_merger.ln1": f"{vit}.layer_norm1",
        "v.vit_merger.attn_q": f"{vit}.self_attn.q_proj",
        "v.vit_merger.attn_k": f"{vit}.self_attn.k_proj",
        "v.vit_merger.attn_v": f"{vit}.self_attn.v_proj",
        "v.vit_merger.attn_out": f"{vit}.self_attn.out_proj",
        "v.vit_merger.ds_ln": f"{vit}.pre_norm",
        "v.vit_merger.ds_ffn_up": f"{vit}.linear_1",
        "v.vit_merger.ds_ffn_down": f"{vit}.linear_2",
        "mm.up": f"{final}.linear_1",
        "mm.down": f"{final}.linear_2",
    }
    plan: list[_Tensor] = []
    for name, key in parts.items():
        plan += _layer(weights, name, key, qtype)
    return [
        *plan,
        _vector(weights, "mm.input_norm.weight", f"{final}.pre_norm.weight"),
        _vector(weights, "mm.input_norm.bias", f"{final}.pre_norm.bias"),
    ]
