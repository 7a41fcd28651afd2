"""Hugging Face vision models of every family llama.cpp's libmtmd runs as its GGUF pair
(text model `model.gguf` + projector `mmproj.gguf`).

`convert` picks a family by config.json's `model_type` (FAMILIES) and writes the two files
its writer plans, with `gguf.convert_llava`'s guarantees. Each writer names keys and tensors as llama.cpp's gguf-py and
libmtmd's clip loader read them:

- `llava_next` (LLaVA-1.6): LLaVA-1.5's `llama` text model and `mlp` projector, plus the
  any-resolution grid (`clip.vision.image_grid_pinpoints`, spatial_unpad) and the
  `model.image_newline` tensor.
- `gemma3`: text arch `gemma3` (norms stored as 1 + w, as Gemma's RMSNorm scales), projector
  `gemma3`: a SigLIP tower, `mm.soft_emb_norm` and `mm.input_projection`.
- `idefics3` (SmolVLM): a `llama` text model, projector `idefics3`: a SigLIP tower and the
  pixel-shuffle connector `mm.model.fc`.
- `qwen2_vl`, `qwen2_5_vl`: text arch `qwen2vl` (Qwen2 with biased q/k/v and M-RoPE's
  `rope.dimension_sections`), projectors `qwen2vl_merger` / `qwen2.5vl_merger`: a ViT whose
  two-frame patch convolution is split into two 2-D ones, then the 2x2 merger MLP.
- `mistral3` (Mistral Small 3.1): a `llama` text model and projector `pixtral`
  (`gguf_pixtral.py`).
- `minicpmv4_6` (MiniCPM-V 4.6): text arch `qwen35` (Qwen3.5's Gated DeltaNet and gated
  full attention) and projector `minicpmv4_6`: a SigLIP tower with a window-attention merger
  inside and a merger MLP after it (`gguf_minicpmv.py`).

Vocabularies are SentencePiece-style (byte-fallback BPE, gguf.py's `_vocab`) or byte-level
BPE (GPT-2 style, here, with GPT-2's, SmolLM's, Qwen2's, Qwen3.5's or tekken's word split),
whichever the folder's tokenizer.json holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as QType
from gguf import GGUFWriter, RopeScalingType, TokenType

from limner.errors import InvalidRequest
from limner.store.gguf import (
    _GGUF,
    CONVERTED_FTYPES,
    PROJECTOR_FILE,
    TEXT_FILE,
    VocabWriter,
    _added_tokens,
    _chat_template,
    _Checkpoint,
    _count_layers,
    _Family,
    _image_normalization,
    _layer,
    _matrix,
    _Metadata,
    _plus_one,
    _read_json,
    _special_id,
    _Tensor,
    _text_metadata,
    _text_params,
    _TextParams,
    _vector,
    _vocab,
    convert_family,
    llama_text,
    llava_files,
)
from limner.store.gguf_minicpmv import minicpmv46_files
from limner.store.gguf_pixtral import mistral3_files

# transformers' defaults for what a Gemma 3 config.json may leave out (gemma-3-4b-it's does).
GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 131072,
    "sliding_window": 4096,
}
SIGLIP_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 12,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
}
GEMMA3_DEFAULT_SCALE = 4  # clip.cpp pools 4x4 patches when the file does not say
# Byte-level pre-tokenizers by llama.cpp's name for them (tokenizer.ggml.pre).
BYTE_LEVEL_PRE = {"ByteLevel": "gpt-2", "Digits+ByteLevel": "smollm"}
# Qwen2's split (tokenizer.json's Split regex before a ByteLevel step without one), which
# llama.cpp compiles in under the name "qwen2".
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Mistral's tekken split (Mistral Small 3.1, Pixtral), llama.cpp's "tekken".
TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen3.5's split (MiniCPM-V 4.6's language model): Qwen2's with combining marks in words,
# llama.cpp's "qwen35".
QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_PRE = {QWEN2_SPLIT: "qwen2", TEKKEN_SPLIT: "tekken", QWEN35_SPLIT: "qwen35"}


def convert(src: Path, dest: Path, quantize: str = "f16") -> tuple[Path, Path]:
    """Write `dest/model.gguf` and `dest/mmproj.gguf` from the Hugging Face folder `src`.

    `quantize` applies to the text model as in `gguf.convert_llava`: everything is checked
    before anything is written, and both files appear only when both are complete.
    """
    return convert_family(src, dest, quantize, family_of)


def family_of(config: dict[str, Any]) -> _Family:
    """The writer of config.json's model_type, or a 400 naming the families that convert."""
    model_type = config.get("model_type")
    try:
        return FAMILIES[str(model_type)]
    except KeyError:
        raise InvalidRequest(
            f"config.json model_type {model_type!r} does not convert to GGUF; the families "
            f"that do: {', '.join(FAMILIES)}"
        ) from None


# --- LLaVA-NeXT --------------------------------------------------------------------------


def llava_next_files(
    src: Path, config: dict[str, Any], weights: _Checkpoint, qtype: QType, vision_qtype: QType
) -> dict[str, _GGUF]:
    """LLaVA-1.5's pair with the any-resolution grid libmtmd tiles a picture by."""
    files = llava_files(src, config, weights, qtype, vision_qtype, words=vocab)
    pinpoints = config.get("image_grid_pinpoints") or []
    if not pinpoints or any(len(pair) != 2 for pair in pinpoints):
        raise InvalidRequest(f"unsupported LLaVA-NeXT for GGUF: image_grid_pinpoints {pinpoints!r}")
    projector = files[PROJECTOR_FILE]
    plain = projector.metadata

    def metadata(w: GGUFWriter) -> None:
        plain(w)
        w.add_array(
            "clip.vision.image_grid_pinpoints", [int(v) for pair in pinpoints for v in pair]
        )
        w.add_string("clip.vision.mm_patch_merge_type", "spatial_unpad")

    newline = _vector(weights, "model.image_newline", "image_newline")
    files[PROJECTOR_FILE] = _GGUF(projector.arch, metadata, [*projector.tensors, newline])
    return files


# --- byte-level BPE vocabularies -----------------------------------------------------------


@dataclass(frozen=True)
class _BpeVocab:
    """A GPT-2 style (byte-level BPE) vocabulary as llama.cpp's "gpt2" tokenizer model."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos: int | None
    eos: int | None
    eot: int | None
    pad: int | None
    add_bos: bool
    chat_template: str | None

    def write(self, w: GGUFWriter) -> None:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.types)
        w.add_token_merges(self.merges)
        for special, add in (
            (self.bos, w.add_bos_token_id),
            (self.eos, w.add_eos_token_id),
            (self.eot, w.add_eot_token_id),
            (self.pad, w.add_pad_token_id),
        ):
            if special is not None:
                add(special)
        w.add_add_bos_token(self.add_bos)
        w.add_add_eos_token(False)
        if self.chat_template is not None:
            w.add_chat_template(self.chat_template)


def vocab(src: Path, config: dict[str, Any], rows: int) -> VocabWriter:
    """The folder's tokenizer as llama.cpp reads it: SentencePiece-style or byte-level BPE."""
    tok = _read_json(src / "tokenizer.json")
    model = tok.get("model") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return _vocab(src, config, rows)
    pre = _byte_level_pre(tok)
    if model.get("type") != "BPE" or pre is None:
        raise InvalidRequest(
            "only BPE tokenizers with byte fallback (SentencePiece-style) or byte-level BPE "
            "(GPT-2 style) convert to GGUF"
        )
    return _bpe_vocab(src, config, rows, tok, pre)


def _byte_level_pre(tok: dict[str, Any]) -> str | None:
    """llama.cpp's pre-tokenizer name for tokenizer.json's byte-level pre-tokenizer."""
    pre: dict[str, Any] = tok.get("pre_tokenizer") or {}
    steps: list[dict[str, Any]] = (
        pre.get("pretokenizers") or [] if pre.get("type") == "Sequence" else [pre]
    )
    kinds = [str(step.get("type")) for step in steps]
    if not kinds or kinds[-1] != "ByteLevel":
        return None
    if steps[-1].get("use_regex", True):
        return BYTE_LEVEL_PRE.get("+".join(kinds))
    if kinds == ["Split", "ByteLevel"]:  # the split is the regex: llama.cpp must know it
        return SPLIT_PRE.get(str((steps[0].get("pattern") or {}).get("Regex")))
    return None


def _bpe_vocab(
    src: Path, config: dict[str, Any], rows: int, tok: dict[str, Any], pre: str
) -> _BpeVocab:
    tok_config: dict[str, Any] = {}
    if (src / "tokenizer_config.json").exists():
        tok_config = _read_json(src / "tokenizer_config.json")
    model = tok["model"]
    pieces: dict[int, str] = {i: p for p, i in model["vocab"].items()}
    special = _added_tokens(src, tok, tok_config, pieces)
    if max(pieces) >= rows:
        raise InvalidRequest(
            f"the tokenizer has {max(pieces) + 1} tokens but the embedding only {rows} rows"
        )
    ids = {p: i for i, p in pieces.items()}
    text = config.get("text_config") or {}
    eos = _special_id(tok_config, "eos_token", ids, text.get("eos_token_id"))
    return _BpeVocab(
        tokens=[pieces.get(i, f"[PAD{i}]") for i in range(rows)],
        types=[int(_bpe_kind(pieces.get(i), special.get(i))) for i in range(rows)],
        merges=[m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []],
        pre=pre,
        bos=_special_id(tok_config, "bos_token", ids, text.get("bos_token_id")),
        eos=eos,
        eot=_end_of_turn(src, eos),
        pad=_special_id(tok_config, "pad_token", ids, None),
        add_bos=_adds_bos(tok, tok_config),
        chat_template=_chat_template(src, tok_config),
    )


def _bpe_kind(piece: str | None, special: bool | None) -> TokenType:
    if piece is None:  # vocabulary padding
        return TokenType.UNUSED
    if special is None:
        return TokenType.NORMAL
    return TokenType.CONTROL if special else TokenType.USER_DEFINED


def _end_of_turn(src: Path, eos: int | None) -> int | None:
    """generation_config's stop token when it is not the tokenizer's eos (Gemma's
    <end_of_turn>): llama.cpp stops at it too."""
    if not (src / "generation_config.json").exists():
        return None
    stop = _read_json(src / "generation_config.json").get("eos_token_id")
    stop = stop[0] if isinstance(stop, list) and stop else stop
    return stop if isinstance(stop, int) and stop != eos else None


def _adds_bos(tok: dict[str, Any], tok_config: dict[str, Any]) -> bool:
    """Whether encoding starts with a special token, as the post-processor or config says."""
    post = tok.get("post_processor") or {}
    single = post.get("single") if post.get("type") == "TemplateProcessing" else None
    if single:
        return "SpecialToken" in single[0]
    return bool(tok_config.get("add_bos_token", False))


# --- SigLIP towers (Gemma 3, Idefics3) -----------------------------------------------------


@dataclass(frozen=True)
class _Tower:
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    eps: float
    image_size: int
    patch_size: int
    image_mean: list[float]
    image_std: list[float]


def _siglip(config: dict[str, Any], src: Path, weights: _Checkpoint) -> _Tower:
    """The tower's sizes from its tensors, the rest from vision_config."""
    vision = {**SIGLIP_DEFAULTS, **(config.get("vision_config") or {})}
    if vision["hidden_act"] != "gelu_pytorch_tanh":  # the GELU clip.cpp computes
        raise InvalidRequest(f"unsupported vision hidden_act {vision['hidden_act']!r} for GGUF")
    n_embd, _, patch, _ = weights.shape("vision_tower.embeddings.patch_embedding.weight")
    image_size = int(vision.get("image_size", 224))
    positions = weights.shape("vision_tower.embeddings.position_embedding.weight")[0]
    if positions != (image_size // patch) ** 2:
        raise InvalidRequest(f"vision image_size {image_size} does not match {positions} positions")
    mean, std = _image_normalization(src)
    return _Tower(
        n_embd=n_embd,
        n_ff=weights.shape("vision_tower.encoder.layers.0.mlp.fc1.weight")[0],
        n_layer=_count_layers(weights, "vision_tower.encoder.layers.{}.layer_norm1.weight"),
        n_head=int(vision["num_attention_heads"]),
        eps=float(vision["layer_norm_eps"]),
        image_size=image_size,
        patch_size=patch,
        image_mean=mean,
        image_std=std,
    )


def _tower_metadata(
    tower: _Tower,
    name: str,
    projector: str,
    projection_dim: int,
    qtype: QType,
    scale: int,
    longest: int = 0,
) -> _Metadata:
    """A SigLIP projector's keys; `scale` and `longest` (the side a picture is resized to
    before tiling) only when set."""

    def write(w: GGUFWriter) -> None:
        w.add_name(f"{name} projector")
        w.add_file_type(CONVERTED_FTYPES[qtype])
        w.add_string("clip.projector_type", projector)
        w.add_bool("clip.has_vision_encoder", True)
        w.add_bool("clip.has_text_encoder", False)
        w.add_bool("clip.use_gelu", True)  # SigLIP's tanh GELU is ggml's GELU
        w.add_uint32("clip.vision.image_size", tower.image_size)
        w.add_uint32("clip.vision.patch_size", tower.patch_size)
        w.add_uint32("clip.vision.embedding_length", tower.n_embd)
        w.add_uint32("clip.vision.feed_forward_length", tower.n_ff)
        w.add_uint32("clip.vision.projection_dim", projection_dim)
        w.add_uint32("clip.vision.attention.head_count", tower.n_head)
        w.add_float32("clip.vision.attention.layer_norm_epsilon", tower.eps)
        w.add_uint32("clip.vision.block_count", tower.n_layer)
        w.add_array("clip.vision.image_mean", tower.image_mean)
        w.add_array("clip.vision.image_std", tower.image_std)
        if scale:
            w.add_uint32("clip.vision.projector.scale_factor", scale)
        if longest:
            w.add_uint32("clip.vision.preproc_image_size", longest)

    return write


def _tower_tensors(weights: _Checkpoint, tower: _Tower, qtype: QType) -> list[_Tensor]:
    """The SigLIP tower with its post-layernorm (both projectors read the last block's
    output through it). Embeddings stay f32, as llama.cpp's converter keeps Gemma 3's."""
    emb = "vision_tower.embeddings"
    plan = [
        *_layer(weights, "v.patch_embd", f"{emb}.patch_embedding", QType.F32),
        _matrix(weights, "v.position_embd.weight", f"{emb}.position_embedding.weight", QType.F32),
    ]
    parts = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_out": "self_attn.out_proj",
        "ffn_up": "mlp.fc1",
        "ffn_down": "mlp.fc2",
        "ln1": "layer_norm1",
        "ln2": "layer_norm2",
    }
    for i in range(tower.n_layer):
        for name, key in parts.items():
            plan += _layer(
                weights, f"v.blk.{i}.{name}", f"vision_tower.encoder.layers.{i}.{key}", qtype
            )
    return plan + _layer(weights, "v.post_ln", "vision_tower.post_layernorm", qtype)


# --- Gemma 3 ------------------------------------------------------------------------------


def gemma3_files(
    src: Path, config: dict[str, Any], weights: _Checkpoint, qtype: QType, vision_qtype: QType
) -> dict[str, _GGUF]:
    """Text arch `gemma3` and projector `gemma3`."""
    text_config = {**GEMMA3_TEXT_DEFAULTS, **(config.get("text_config") or {})}
    text = _text_params({**config, "text_config": text_config}, weights, name=src.name)
    words = vocab(src, config, text.n_vocab)
    tower = _siglip(config, src, weights)
    return {
        TEXT_FILE: _GGUF(
            arch="gemma3",
            metadata=_gemma3_metadata(text, text_config, words, qtype),
            tensors=_gemma3_tensors(weights, text, qtype),
        ),
        PROJECTOR_FILE: _gemma3_projector(weights, config, tower, text, vision_qtype),
    }


def _gemma3_projector(
    weights: _Checkpoint, config: dict[str, Any], tower: _Tower, text: _TextParams, qtype: QType
) -> _GGUF:
    """The SigLIP tower, then clip.cpp's pooling to mm_tokens_per_image, the soft embedding
    norm (1 + w) and the input projection."""
    per_side = math.isqrt(int(config.get("mm_tokens_per_image", 256)))
    scale = (tower.image_size // tower.patch_size) // max(per_side, 1)
    if scale < 1 or per_side * scale * tower.patch_size != tower.image_size:
        raise InvalidRequest(
            f"unsupported Gemma 3 for GGUF: {per_side}x{per_side} tokens do not pool "
            f"{tower.image_size // tower.patch_size} patches a side"
        )
    scale = 0 if scale == GEMMA3_DEFAULT_SCALE else scale
    projector = "multi_modal_projector"
    return _GGUF(
        arch="clip",
        metadata=_tower_metadata(tower, text.name, "gemma3", text.n_embd, qtype, scale),
        tensors=[
            *_tower_tensors(weights, tower, qtype),
            _plus_one(weights, "mm.soft_emb_norm.weight", f"{projector}.mm_soft_emb_norm.weight"),
            _matrix(
                weights,
                "mm.input_projection.weight",
                f"{projector}.mm_input_projection_weight",
                qtype,
            ),
        ],
    )


def _gemma3_metadata(
    text: _TextParams, text_config: dict[str, Any], words: VocabWriter, qtype: QType
) -> _Metadata:
    """llama's keys with the global layers' rope, and Gemma 3's own: the sliding layers'
    window and rope base, and the final logit soft-cap when set."""
    full, sliding = _gemma3_rope(text_config)
    llama_like = _text_metadata(
        replace(text, rope_theta=float(full.get("rope_theta", 1_000_000.0))),
        words,
        CONVERTED_FTYPES[qtype],
    )

    def write(w: GGUFWriter) -> None:
        llama_like(w)
        w.add_rope_freq_base_swa(float(sliding.get("rope_theta", 10000.0)))
        if full.get("rope_type") == "linear":  # gemma-3-4b and up stretch the global layers
            w.add_rope_scaling_type(RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(full["factor"]))
        w.add_sliding_window(int(text_config["sliding_window"]))
        if text_config.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(text_config["final_logit_softcapping"]))

    return write


def _gemma3_rope(text_config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The global and the sliding layers' rope settings, from transformers 5's nested
    rope_parameters or transformers 4's rope_theta / rope_local_base_freq / rope_scaling;
    a 400 for a scaling llama.cpp's gemma3 does not apply."""
    nested = text_config.get("rope_parameters") or {}
    if "full_attention" in nested:
        full, sliding = nested["full_attention"], nested.get("sliding_attention") or {}
    else:
        scaling = text_config.get("rope_scaling") or {}
        full = {"rope_theta": text_config.get("rope_theta", 1_000_000.0), **scaling}
        full.setdefault("rope_type", scaling.get("type", "default"))
        sliding = {"rope_theta": text_config.get("rope_local_base_freq", 10000.0)}
    kinds = (full.get("rope_type", "default"), sliding.get("rope_type", "default"))
    if kinds[0] not in ("default", "linear") or kinds[1] != "default":
        raise InvalidRequest(f"unsupported Gemma 3 for GGUF: rope scaling {kinds}")
    return full, sliding


def _gemma3_tensors(weights: _Checkpoint, text: _TextParams, qtype: QType) -> list[_Tensor]:
    """Gemma 3's blocks; every norm as 1 + w, since Gemma's RMSNorm scales by (1 + weight)."""
    lm = "language_model"
    plan = [_matrix(weights, "token_embd.weight", f"{lm}.embed_tokens.weight", qtype)]
    norms = {
        "attn_norm": "input_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
    }
    matrices = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(text.n_layer):
        hf = f"{lm}.layers.{i}"
        for name, key in norms.items():
            plan.append(_plus_one(weights, f"blk.{i}.{name}.weight", f"{hf}.{key}.weight"))
        for name, key in matrices.items():
            plan.append(_matrix(weights, f"blk.{i}.{name}.weight", f"{hf}.{key}.weight", qtype))
    plan.append(_plus_one(weights, "output_norm.weight", f"{lm}.norm.weight"))
    if text.has_output:
        plan.append(_matrix(weights, "output.weight", "lm_head.weight", qtype))
    return plan


# --- Idefics3 / SmolVLM --------------------------------------------------------------------


def idefics3_files(
    src: Path, config: dict[str, Any], weights: _Checkpoint, qtype: QType, vision_qtype: QType
) -> dict[str, _GGUF]:
    """A `llama` text model and projector `idefics3` (pixel shuffle, then one linear)."""
    text_model = (config.get("text_config") or {}).get("model_type", "llama")
    if text_model != "llama":
        raise InvalidRequest(f"unsupported Idefics3 for GGUF: text model_type {text_model!r}")
    text = _text_params(config, weights, name=src.name)
    tower = _siglip(config, src, weights)
    scale = int(config.get("scale_factor", 2))
    longest = _longest_edge(src, tower.image_size)
    _check_blank_line_token(src)
    fc = "connector.modality_projection.proj.weight"
    if weights.shape(fc) != (text.n_embd, tower.n_embd * scale * scale):
        raise InvalidRequest(
            f"the connector {weights.shape(fc)} does not match scale_factor {scale}"
        )
    return {
        TEXT_FILE: llama_text(text, vocab(src, config, text.n_vocab), weights, qtype),
        PROJECTOR_FILE: _GGUF(
            arch="clip",
            metadata=_tower_metadata(
                tower, text.name, "idefics3", text.n_embd, vision_qtype, scale, longest
            ),
            tensors=[
                *_tower_tensors(weights, tower, vision_qtype),
                _matrix(weights, "mm.model.fc.weight", fc, vision_qtype),
            ],
        ),
    }


def _longest_edge(src: Path, image_size: int) -> int:
    """The side libmtmd resizes a picture to before cutting it into image_size tiles: the
    processor's size.longest_edge, as transformers' Idefics3 processor does."""
    for name, nested in (
        ("preprocessor_config.json", None),
        ("processor_config.json", "image_processor"),
    ):
        if (src / name).exists():
            found = _read_json(src / name)
            found = found.get(nested, {}) if nested else found
            edge = (found.get("size") or {}).get("longest_edge")
            if isinstance(edge, int) and edge >= image_size:
                return edge
    return image_size


def _check_blank_line_token(src: Path) -> None:
    """libmtmd writes the blank line ("\\n\\n") before a tiled picture's whole view as one
    token it looks up by text; without one it feeds an invalid token, so such a vocabulary
    is refused."""
    tok = _read_json(src / "tokenizer.json")
    texts = set((tok.get("model") or {}).get("vocab") or {})
    texts |= {added.get("content") for added in tok.get("added_tokens") or []}
    if not {"\u010a\u010a", "\n\n"} & texts:
        raise InvalidRequest(
            'unsupported Idefics3 for GGUF: the vocabulary has no single "\\n\\n" token, '
            "which llama.cpp writes between a picture's tiles and its whole view"
        )


# --- Qwen2-VL / Qwen2.5-VL ----------------------------------------------------------------

# clip.cpp's Qwen graphs merge 2x2 patches and take two frames a patch, whatever the file says,
# and its Qwen2.5-VL windows are 112 px a side.
QWEN_MERGE, QWEN_FRAMES, QWEN_WINDOW = 2, 2, 112
QWEN_PROJECTORS = {"qwen2_vl": "qwen2vl_merger", "qwen2_5_vl": "qwen2.5vl_merger"}
QWEN_VISION_EPS = 1e-6  # both towers' norms, fixed in transformers' code


def qwen_vl_files(
    src: Path, config: dict[str, Any], weights: _Checkpoint, qtype: QType, vision_qtype: QType
) -> dict[str, _GGUF]:
    """Text arch `qwen2vl` and projector `qwen2vl_merger` (Qwen2-VL) or `qwen2.5vl_merger`."""
    text_config = _qwen_text_config(config)
    text = _text_params({**config, "text_config": text_config}, weights, name=src.name)
    sections = _mrope_sections(text_config, text.head_dim)
    words = vocab(src, config, text.n_vocab)
    plain = _text_metadata(text, words, CONVERTED_FTYPES[qtype])

    def metadata(w: GGUFWriter) -> None:
        plain(w)
        w.add_rope_dimension_sections(sections)

    return {
        TEXT_FILE: _GGUF("qwen2vl", metadata, _qwen_text_tensors(weights, text, qtype)),
        PROJECTOR_FILE: _qwen_projector(src, config, weights, text, vision_qtype),
    }


def _qwen_text_config(config: dict[str, Any]) -> dict[str, Any]:
    """transformers 4 keeps Qwen-VL's text settings at the top of config.json, 5 nests them."""
    top = {k: v for k, v in config.items() if k not in ("text_config", "vision_config")}
    return {**top, **(config.get("text_config") or {})}


def _mrope_sections(text_config: dict[str, Any], head_dim: int) -> list[int]:
    """M-RoPE's time, height and width shares of the rotary half, padded to llama.cpp's four."""
    rope = text_config.get("rope_parameters") or text_config.get("rope_scaling") or {}
    sections = [int(v) for v in rope.get("mrope_section") or []]
    if not sections or len(sections) > 4 or sum(sections) != head_dim // 2:
        raise InvalidRequest(
            f"unsupported Qwen-VL for GGUF: mrope_section {sections} does not split the "
            f"{head_dim // 2} rotary pairs of a head"
        )
    return sections + [0] * (4 - len(sections))


def _qwen_text_tensors(weights: _Checkpoint, text: _TextParams, qtype: QType) -> list[_Tensor]:
    """Qwen2's blocks: q, k and v carry biases; no rotary permutation (llama.cpp rotates
    Qwen's halves as NeoX does, as transformers stores them)."""
    lm = "language_model"
    plan = [_matrix(weights, "token_embd.weight", f"{lm}.embed_tokens.weight", qtype)]
    parts = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    for i in range(text.n_layer):
        for name, key in parts.items():
            plan += _layer(weights, f"blk.{i}.{name}", f"{lm}.layers.{i}.{key}", qtype)
    plan.append(_vector(weights, "output_norm.weight", f"{lm}.norm.weight"))
    if text.has_output:
        plan.append(_matrix(weights, "output.weight", "lm_head.weight", qtype))
    return plan


@dataclass(frozen=True)
class _QwenTower:
    projector: str
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    patch_size: int
    wa_pattern: int  # every wa_pattern-th block attends to the whole picture; 0: all do


def _qwen_tower(config: dict[str, Any], weights: _Checkpoint) -> _QwenTower:
    """The tower's sizes from its tensors; a 400 for what clip.cpp computes differently."""
    vision = config.get("vision_config") or {}
    projector = QWEN_PROJECTORS[str(config["model_type"])]
    n_embd, _, frames, patch, _ = weights.shape("visual.patch_embed.proj.weight")
    merge = int(vision.get("spatial_merge_size", QWEN_MERGE))
    if (frames, merge) != (QWEN_FRAMES, QWEN_MERGE):
        raise InvalidRequest(
            f"unsupported Qwen-VL for GGUF: temporal_patch_size {frames} and spatial_merge_size "
            f"{merge} (llama.cpp takes {QWEN_FRAMES} and {QWEN_MERGE})"
        )
    gated = projector == "qwen2.5vl_merger"  # 2.5's SiLU-gated MLP; 2's is fc1, quick GELU, fc2
    act = vision.get("hidden_act", "silu" if gated else "quick_gelu")
    if act != ("silu" if gated else "quick_gelu"):
        raise InvalidRequest(f"unsupported Qwen-VL for GGUF: vision hidden_act {act!r}")
    n_layer = _count_layers(weights, "visual.blocks.{}.norm1.weight")
    up = "mlp.up_proj" if gated else "mlp.fc1"
    return _QwenTower(
        projector=projector,
        n_embd=n_embd,
        n_ff=weights.shape(f"visual.blocks.0.{up}.weight")[0],
        n_layer=n_layer,
        n_head=int(vision.get("num_heads", 16)),
        patch_size=patch,
        wa_pattern=_window_pattern(vision, n_layer, patch) if gated else 0,
    )


def _window_pattern(vision: dict[str, Any], n_layer: int, patch: int) -> int:
    """clip.cpp's n_wa_pattern: block i attends to the whole picture when (i + 1) is a
    multiple of it, and within 112-px windows otherwise; other layouts are refused."""
    window = int(vision.get("window_size", QWEN_WINDOW))
    if window // QWEN_MERGE // patch != QWEN_WINDOW // QWEN_MERGE // patch:
        raise InvalidRequest(
            f"unsupported Qwen2.5-VL for GGUF: window_size {window} (llama.cpp's is {QWEN_WINDOW})"
        )
    full = sorted(int(i) for i in vision.get("fullatt_block_indexes") or [])
    pattern = full[0] + 1 if full else n_layer + 1
    if [i for i in full if i < n_layer] != [i for i in range(n_layer) if (i + 1) % pattern == 0]:
        raise InvalidRequest(
            f"unsupported Qwen2.5-VL for GGUF: fullatt_block_indexes {full} are not evenly spaced"
        )
    return pattern


def _qwen_projector(
    src: Path, config: dict[str, Any], weights: _Checkpoint, text: _TextParams, qtype: QType
) -> _GGUF:
    tower = _qwen_tower(config, weights)
    if weights.shape("visual.merger.mlp.2.weight")[0] != text.n_embd:
        raise InvalidRequest("the vision merger does not project to the text model's width")
    mean, std = _image_normalization(src)

    def metadata(w: GGUFWriter) -> None:
        w.add_name(f"{text.name} projector")
        w.add_file_type(CONVERTED_FTYPES[qtype])
        w.add_string("clip.projector_type", tower.projector)
        w.add_bool("clip.has_vision_encoder", True)
        w.add_bool("clip.has_text_encoder", False)
        if tower.projector == "qwen2.5vl_merger":  # else clip.cpp's default, quick GELU
            w.add_bool("clip.use_silu", True)
            w.add_uint32("clip.vision.n_wa_pattern", tower.wa_pattern)
        # clip.cpp sizes Qwen's pictures by pixel count; image_size is only a required key.
        w.add_uint32("clip.vision.image_size", 560)
        w.add_uint32("clip.vision.patch_size", tower.patch_size)
        w.add_uint32("clip.vision.embedding_length", tower.n_embd)
        w.add_uint32("clip.vision.feed_forward_length", tower.n_ff)
        w.add_uint32("clip.vision.projection_dim", text.n_embd)
        w.add_uint32("clip.vision.attention.head_count", tower.n_head)
        w.add_float32("clip.vision.attention.layer_norm_epsilon", QWEN_VISION_EPS)
        w.add_uint32("clip.vision.block_count", tower.n_layer)
        w.add_array("clip.vision.image_mean", mean)
        w.add_array("clip.vision.image_std", std)

    return _GGUF("clip", metadata, _qwen_tower_tensors(weights, tower, qtype))


def _qwen_tower_tensors(weights: _Checkpoint, tower: _QwenTower, qtype: QType) -> list[_Tensor]:
    """The patch convolution as one 2-D kernel per frame, the blocks with q, k and v cut out
    of the fused qkv, the merger's norm as post_ln and its MLP as mm.0 / mm.2."""
    conv = "visual.patch_embed.proj.weight"
    plan = [_frame(weights, "v.patch_embd.weight", conv, 0, qtype),
            _frame(weights, "v.patch_embd.weight.1", conv, 1, qtype)]  # fmt: skip
    gated = tower.projector == "qwen2.5vl_merger"
    parts = {
        "ln1": "norm1",
        "ln2": "norm2",
        "attn_out": "attn.proj",
        **(
            {"ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
            if gated
            else {"ffn_up": "mlp.fc1", "ffn_down": "mlp.fc2"}
        ),
    }
    for i in range(tower.n_layer):
        hf = f"visual.blocks.{i}"
        plan += _split_qkv(weights, f"v.blk.{i}", f"{hf}.attn.qkv", tower.n_embd, qtype)
        for name, key in parts.items():
            plan += _layer(weights, f"v.blk.{i}.{name}", f"{hf}.{key}", qtype)
    plan += _layer(weights, "v.post_ln", "visual.merger.ln_q", qtype)
    for name, key in (("mm.0", "visual.merger.mlp.0"), ("mm.2", "visual.merger.mlp.2")):
        plan += _layer(weights, name, key, qtype)
    return plan


def _frame(weights: _Checkpoint, name: str, key: str, frame: int, qtype: QType) -> _Tensor:
    """One frame's slice of the (out, in, frames, h, w) patch convolution."""
    out, channels, _, h, w = weights.shape(key)
    dtype = np.float32 if qtype == QType.F32 else np.float16
    return _Tensor(
        name,
        (out, channels, h, w),
        qtype,
        lambda: np.ascontiguousarray(weights.get(key)[:, :, frame]).astype(dtype),
    )


def _split_qkv(
    weights: _Checkpoint, name: str, key: str, width: int, qtype: QType
) -> list[_Tensor]:
    """attn_q, attn_k and attn_v (weights and biases) from the fused qkv's thirds."""
    if weights.shape(f"{key}.weight") != (3 * width, width):
        raise InvalidRequest(f"{key}.weight is not a fused q, k, v of width {width}")
    plan = []
    for third, part in enumerate(("attn_q", "attn_k", "attn_v")):
        rows = slice(third * width, (third + 1) * width)
        plan += [
            _Tensor(f"{name}.{part}.weight", (width, width), qtype,
                    partial(_rows, weights, f"{key}.weight", rows, qtype)),
            _Tensor(f"{name}.{part}.bias", (width,), QType.F32,
                    partial(_rows, weights, f"{key}.bias", rows, QType.F32)),
        ]  # fmt: skip
    return plan


def _rows(weights: _Checkpoint, key: str, rows: slice, qtype: QType) -> np.ndarray:
    dtype = np.float32 if qtype == QType.F32 else np.float16
    return weights.get(key)[rows].astype(dtype)


FAMILIES: dict[str, _Family] = {
    "llava": partial(llava_files, words=vocab),
    "llava_next": llava_next_files,
    "gemma3": gemma3_files,
    "idefics3": idefics3_files,
    "qwen2_vl": qwen_vl_files,
    "qwen2_5_vl": qwen_vl_files,
    "mistral3": partial(mistral3_files, words=vocab),
    "minicpmv4_6": partial(
        minicpmv46_files,
        words=vocab,
        siglip=_siglip,
        tower_tensors=_tower_tensors,
        tower_metadata=_tower_metadata,
    ),
}
