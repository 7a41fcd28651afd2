"""Hugging Face LLaVA folders to llama.cpp's GGUF pair, and the metadata of any GGUF file.

`convert_llava` turns a llava-hf folder (the layout of `llava-hf/bakLlava-v1-hf`, and of
`limner.tiny.write_tiny_llava`) into the two files Ollama's `bakllava` and llama.cpp's
`--mmproj` run: `model.gguf` (arch `llama`: the language model and its SentencePiece-style
vocabulary) and `mmproj.gguf` (arch `clip`: the CLIP tower and the two-layer projector).
Only numpy, safetensors and gguf-py are used, and tensors are read, converted and written one
at a time, so a 7B checkpoint needs about the memory of its largest tensor.
`gguf_families.convert` takes the other families libmtmd runs (LLaVA-NeXT, Gemma 3,
Idefics3/SmolVLM, Qwen2-VL, Qwen2.5-VL, Mistral Small 3.1, MiniCPM-V 4.6) with the same parts
and guarantees (`convert_family`).

The projector is written in the "exact" layout: every vision block and an explicit feature
layer. Published LLaVA-1.5/BakLLaVA projectors write `block_count = n_layer - 1`, and
llama.cpp then skips one more block (llama.cpp #25817), so they run one CLIP block short.

`gguf_info` reads a GGUF's key/value metadata for /api/show and memory estimates.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QType
from gguf import GGUFWriter, LlamaFileType, TokenType
from safetensors import SafetensorError, safe_open

from limner.errors import InvalidRequest, LimnerError, UnsafeWeights

# quantize= name (any case) -> llama.cpp's file type (llama.h's LLAMA_FTYPE_*). The converter
# writes f32 and f16 itself; every other type is llama.cpp's quantizer's (engines/quantize.py).
QUANTIZATIONS: dict[str, int] = {
    "q4_k_m": 15, "q4_k_s": 14, "q5_k_m": 17, "q5_k_s": 16, "q6_k": 18, "q8_0": 7,
    "q3_k_l": 13, "q3_k_m": 12, "q3_k_s": 11, "q2_k": 10, "iq4_xs": 30, "iq4_nl": 25,
    "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "f16": 1, "bf16": 32, "f32": 0,
}  # fmt: skip
DEFAULT_QUANTIZATION = "q4_k_m"  # Ollama's and llama.cpp's usual choice
CONVERTED = {
    "f32": (QType.F32, LlamaFileType.ALL_F32),
    "f16": (QType.F16, LlamaFileType.MOSTLY_F16),
}
CONVERTED_FTYPES = {qtype: ftype for qtype, ftype in CONVERTED.values()}
# The file types llama.cpp's quantizer reads as a source.
UNQUANTIZED = {0, 1, 32}
TEXT_FILE, PROJECTOR_FILE = "model.gguf", "mmproj.gguf"

# What transformers fills in when a llava-hf config.json leaves a field out (BakLLaVA's does:
# its text_config has no head count, its vision_config no activation).
TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"num_attention_heads": 32, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
    "mistral": {
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 131072,
    },
}
CLIP_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 12,
    "layer_norm_eps": 1e-5,
    "hidden_act": "quick_gelu",
}
# LlavaConfig's vision tower when config.json has none: CLIP ViT-L/14 at 336 px.
LLAVA_VISION_DEFAULT: dict[str, Any] = {
    "model_type": "clip_vision_model",
    "num_attention_heads": 16,
    "image_size": 336,
}
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Arrays gguf_info leaves out: the vocabulary, and anything too long to be a setting.
VOCAB_KEYS = {
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
}
MAX_INFO_ARRAY = 64


def convert_llava(src: Path, dest: Path, quantize: str = "f16") -> tuple[Path, Path]:
    """Write `dest/model.gguf` and `dest/mmproj.gguf` from the llava-hf folder `src`; any
    other folder is a 400 (`gguf_families.convert` takes every family that converts).

    `quantize` (a name of QUANTIZATIONS, any case) applies to the text model: f32 and f16 are
    written here, any other type by llama.cpp's quantizer from the f16 file. Norms stay f32
    and the projector f16 (f32 with "f32"), as in published projectors. Everything is checked
    before anything is written, and both files appear only when both are complete, so a
    failure never leaves a half-written file in `dest`.
    """
    return convert_family(src, dest, quantize, _llava_family)


# A family: (folder, its config.json, its weights, text and projector tensor types) -> its files.
_Family = Callable[[Path, dict[str, Any], "_Checkpoint", QType, QType], dict[str, "_GGUF"]]


def convert_family(
    src: Path, dest: Path, quantize: str, family_of: Callable[[dict[str, Any]], _Family]
) -> tuple[Path, Path]:
    """`convert_llava`'s guarantees for the family `family_of` picks from config.json."""
    ftype_number = quantization(quantize)
    written = "f32" if quantize.lower() == "f32" else "f16"
    qtype, ftype = CONVERTED[written]
    src, dest = Path(src), Path(dest)
    config: dict[str, Any] = _read_json(src / "config.json")
    family = family_of(config)
    with ExitStack() as stack:
        weights = _Checkpoint(src, stack)
        vision_qtype = QType.F32 if qtype == QType.F32 else QType.F16
        files = family(src, config, weights, qtype, vision_qtype)
        quantized = None if ftype_number == ftype else ftype_number
        _write_all(dest, files, quantized)
    return dest / TEXT_FILE, dest / PROJECTOR_FILE


def _llava_family(config: dict[str, Any]) -> _Family:
    if config.get("model_type") != "llava":
        raise InvalidRequest(
            f"only LLaVA models (config.json model_type 'llava') convert to GGUF, "
            f"not model_type {config.get('model_type')!r}"
        )
    return llava_files


def llava_files(
    src: Path,
    config: dict[str, Any],
    weights: _Checkpoint,
    qtype: QType,
    vision_qtype: QType,
    words: Callable[[Path, dict[str, Any], int], VocabWriter] | None = None,
) -> dict[str, _GGUF]:
    """LLaVA-1.5's pair: a `llama` text model and an `mlp` projector. `words` reads the
    vocabulary (SentencePiece-style only, unless another reader is given)."""
    check_llava(config)
    text = _text_params(config, weights, name=src.name)
    vision = _vision_params(config, src, weights, projection_dim=text.n_embd)
    vocab = (words or _vocab)(src, config, text.n_vocab)
    return {
        TEXT_FILE: llama_text(text, vocab, weights, qtype),
        PROJECTOR_FILE: _GGUF(
            arch="clip",
            metadata=_vision_metadata(vision, text.name, vision_qtype),
            tensors=_vision_tensors(weights, vision, vision_qtype),
        ),
    }


def llama_text(text: _TextParams, vocab: VocabWriter, weights: _Checkpoint, qtype: QType) -> _GGUF:
    """A text model in llama.cpp's `llama` arch (LLaVA's, SmolVLM's and Mistral's)."""
    return _GGUF(
        arch="llama",
        metadata=_text_metadata(text, vocab, CONVERTED_FTYPES[qtype]),
        tensors=_text_tensors(weights, text, qtype),
    )


def quantization(name: str) -> int:
    """llama.cpp's file type for a quantization name, or a 400 naming the allowed ones."""
    try:
        return QUANTIZATIONS[name.lower()]
    except KeyError:
        allowed = ", ".join(QUANTIZATIONS)
        raise InvalidRequest(
            f"unsupported quantization type {name!r}: use one of {allowed}"
        ) from None


def llama_quantize(source: Path, dest: Path, ftype: int) -> None:
    """`dest`: the GGUF model `source` quantized by llama.cpp to file type `ftype`, in a
    child process (the server never loads llama.cpp)."""
    command = [sys.executable, "-m", "limner.engines.quantize", str(source), str(dest), str(ftype)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        dest.unlink(missing_ok=True)
        said = done.stderr.strip().splitlines()
        raise LimnerError(f"llama.cpp's quantizer failed: {said[-1] if said else done.returncode}")


def gguf_info(path: Path) -> dict[str, Any]:
    """A GGUF file's metadata as plain values, plus `general.parameter_count`.

    The vocabulary arrays and other long arrays are left out (they are data, not settings);
    the parameter count is summed from the tensor shapes when the file does not say it.
    """
    try:
        check_header(Path(path))
        reader = gguf.GGUFReader(path)
        info: dict[str, Any] = {}
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name in VOCAB_KEYS:
                continue
            value = field.contents()
            if isinstance(value, list) and len(value) > MAX_INFO_ARRAY:
                continue
            if field.types[-1] == gguf.GGUFValueType.FLOAT32:
                value = _shortest_float32(value)
            info[name] = value
        info.setdefault("general.parameter_count", sum(int(t.n_elements) for t in reader.tensors))
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, struct.error) as e:
        raise InvalidRequest(f"{Path(path).name} is not a valid GGUF file: {e}") from None
    return info


# GGUF value types by id: struct format of the fixed-size ones; 8 is a string, 9 an array.
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS


def check_header(path: Path) -> None:
    """Walk a GGUF file's header (metadata and tensor infos) with every count and length
    checked against the bytes left in the file, before any reader allocates from them: a
    header that claims 2**60 entries is refused here, not turned into a list by GGUFReader."""
    size = path.stat().st_size
    with path.open("rb") as file:
        header = _Header(file, size)
        if header.take(4) != b"GGUF" or header.number("I") not in (2, 3):
            raise ValueError("not GGUF version 2 or 3")
        tensors, values = header.count(24), header.count(12)  # the smallest entry of each
        for _ in range(values):
            header.string()
            header.value(header.number("I"), nested=False)
        for _ in range(tensors):
            header.string()
            dims = header.number("I")
            if not 1 <= dims <= _MAX_DIMS:
                raise ValueError(f"a tensor with {dims} dimensions")
            header.skip(8 * dims + 4 + 8)


class _Header:
    """A forward reader over a GGUF header that refuses to read or skip past the file."""

    def __init__(self, file: Any, size: int) -> None:
        self.file, self.left = file, size

    def take(self, count: int) -> bytes:
        if count > self.left:
            raise ValueError("the header runs past the end of the file")
        self.left -= count
        data: bytes = self.file.read(count)
        return data

    def skip(self, count: int) -> None:
        if count > self.left:
            raise ValueError("the header runs past the end of the file")
        self.left -= count
        self.file.seek(count, os.SEEK_CUR)

    def number(self, kind: str) -> int:
        value: int = struct.unpack("<" + kind, self.take(struct.calcsize(kind)))[0]
        return value

    def count(self, smallest: int) -> int:
        """A uint64 count of entries of at least `smallest` bytes each, that fit what is left."""
        count = self.number("Q")
        if count * smallest > self.left:
            raise ValueError(f"a count of {count} that the file is too short to hold")
        return count

    def string(self) -> None:
        self.skip(self.count(1))

    def value(self, kind: int, nested: bool) -> None:
        if kind in _SCALARS:
            self.skip(struct.calcsize(_SCALARS[kind]))
        elif kind == _STRING:
            self.string()
        elif kind == _ARRAY and not nested:
            item = self.number("I")
            smallest = struct.calcsize(_SCALARS[item]) if item in _SCALARS else 8
            count = self.count(smallest)
            if item in _SCALARS:
                self.skip(count * smallest)
            else:
                for _ in range(count):
                    self.value(item, nested=True)
        else:
            raise ValueError(f"unknown value type {kind}")


def _shortest_float32(value: Any) -> Any:
    """1e-05, not 9.999999747378752e-06: the shortest decimal that is the same float32."""
    if isinstance(value, list):
        return [_shortest_float32(v) for v in value]
    return float(str(np.float32(value)))


# --- options and config ------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRequest(f"{path.parent.name}: {path.name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"{path.parent.name}: {path.name} is not valid JSON: {e}") from None


def check_llava(config: dict[str, Any]) -> None:
    """A LLaVA config.json that llama.cpp's `llava` graph computes faithfully, or a 400."""
    unsupported = {
        "vision_feature_select_strategy": (
            config.get("vision_feature_select_strategy", "default"),
            {"default"},
        ),
        "projector_hidden_act": (config.get("projector_hidden_act", "gelu"), {"gelu"}),
        "text model_type": (_text_config(config).get("model_type", "llama"), set(TEXT_DEFAULTS)),
        "vision tower": (_vision_config(config).get("model_type"), {"clip_vision_model"}),
        "vision hidden_act": (_vision_config(config)["hidden_act"], {"gelu", "quick_gelu"}),
    }
    for what, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise InvalidRequest(
                f"unsupported LLaVA for GGUF: {what} {value!r} (supported: {', '.join(sorted(allowed))})"
            )
    rope = _text_config(config).get("rope_parameters") or _text_config(config).get("rope_scaling")
    if rope and rope.get("rope_type", rope.get("type", "default")) != "default":
        raise InvalidRequest(f"unsupported LLaVA for GGUF: rope scaling {rope!r}")


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    text: dict[str, Any] = config.get("text_config") or {}
    return {**TEXT_DEFAULTS.get(text.get("model_type", "llama"), {}), **text}


def _vision_config(config: dict[str, Any]) -> dict[str, Any]:
    vision: dict[str, Any] = config.get("vision_config") or LLAVA_VISION_DEFAULT
    return {**CLIP_DEFAULTS, **vision}


# --- weights -----------------------------------------------------------------------------

# llava-hf (transformers 4) and transformers 5 checkpoints name the same weights differently;
# both are read under one canonical set of names.
NAME_PREFIXES = (
    ("model.language_model.", "language_model."),
    ("language_model.model.", "language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("vision_tower.vision_model.", "vision_tower."),
    ("model.text_model.", "language_model."),  # Idefics3 / SmolVLM
    ("model.vision_model.", "vision_tower."),
    ("model.connector.", "connector."),
    ("model.image_newline", "image_newline"),  # LLaVA-NeXT in transformers 5
    ("model.visual.", "visual."),  # Qwen-VL in transformers 5
    # Qwen-VL in transformers 4: the text model's weights at the top of "model."
    ("model.embed_tokens.", "language_model.embed_tokens."),
    ("model.layers.", "language_model.layers."),
    ("model.norm.", "language_model.norm."),
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def _canonical(name: str) -> str:
    for old, new in NAME_PREFIXES:
        if name.startswith(old):
            name = new + name[len(old) :]
    return name


class _Checkpoint:
    """Every tensor of a folder's *.safetensors files (one or many shards), by canonical
    name, read one at a time as float32."""

    def __init__(self, folder: Path, stack: ExitStack) -> None:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            if any(p.suffix in PICKLE_SUFFIXES for p in folder.iterdir()):
                raise UnsafeWeights(f"{folder.name}: only safetensors weights convert, not pickle")
            raise InvalidRequest(f"{folder.name}: no .safetensors weights")
        self._where: dict[str, tuple[Any, str, Path]] = {}
        for path in files:
            try:
                handle = stack.enter_context(safe_open(str(path), framework="np"))
            except (SafetensorError, OSError) as e:
                raise InvalidRequest(f"{path.name} is not a valid safetensors file: {e}") from None
            keys = handle.keys()
            for key in keys:
                self._where[_canonical(key)] = (handle, key, path)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        handle, key, _ = self._locate(name)
        return tuple(handle.get_slice(key).get_shape())

    def get(self, name: str) -> np.ndarray:
        handle, key, path = self._locate(name)
        if handle.get_slice(key).get_dtype() == "BF16":
            return _read_bf16(path, key)  # numpy has no bfloat16
        return np.asarray(handle.get_tensor(key), dtype=np.float32)

    def _locate(self, name: str) -> tuple[Any, str, Path]:
        try:
            return self._where[name]
        except KeyError:
            raise InvalidRequest(f"the checkpoint has no weight {name!r}") from None


def _read_bf16(path: Path, key: str) -> np.ndarray:
    # bfloat16 is the top half of a float32: widen the raw bits.
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        entry = json.loads(f.read(length))[key]
    start, end = entry["data_offsets"]
    raw = np.fromfile(path, dtype="<u2", count=(end - start) // 2, offset=8 + length + start)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


# --- the text model ----------------------------------------------------------------------


@dataclass(frozen=True)
class _TextParams:
    name: str
    n_vocab: int  # embedding rows, padding included
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    context_length: int
    rms_eps: float
    rope_theta: float
    has_output: bool  # False: tied embeddings, llama.cpp reuses token_embd


def _text_params(config: dict[str, Any], weights: _Checkpoint, name: str) -> _TextParams:
    """Sizes from the tensors themselves (config.json often leaves them to defaults),
    everything else from text_config."""
    text = _text_config(config)
    n_vocab, n_embd = weights.shape("language_model.embed_tokens.weight")
    n_head = int(text["num_attention_heads"])
    n_head_kv = int(text.get("num_key_value_heads") or n_head)
    head_dim = int(text.get("head_dim") or n_embd // n_head)
    if weights.shape("language_model.layers.0.self_attn.q_proj.weight")[0] != n_head * head_dim:
        raise InvalidRequest("text_config's head count does not match the q_proj weights")
    rope = text.get("rope_parameters") or {}
    return _TextParams(
        name=str(config.get("_name_or_path") or name),
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=_count_layers(weights, "language_model.layers.{}.input_layernorm.weight"),
        n_ff=weights.shape("language_model.layers.0.mlp.gate_proj.weight")[0],
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        context_length=int(text["max_position_embeddings"]),
        rms_eps=float(text["rms_norm_eps"]),
        rope_theta=float(rope.get("rope_theta") or text.get("rope_theta") or 10000.0),
        has_output="lm_head.weight" in weights,
    )


def _count_layers(weights: _Checkpoint, pattern: str) -> int:
    n = 0
    while pattern.format(n) in weights:
        n += 1
    if n == 0:
        raise InvalidRequest(f"the checkpoint has no weight {pattern.format(0)!r}")
    return n


class VocabWriter(Protocol):
    """A vocabulary that writes itself into a GGUF: SentencePiece-style or byte-level BPE."""

    def write(self, w: GGUFWriter) -> None: ...


def _text_metadata(
    text: _TextParams, vocab: VocabWriter, ftype: LlamaFileType, rope_dims: int | None = None
) -> _Metadata:
    """llama's keys for `text`; rotary embedding over `rope_dims` of each head (all of it by
    default)."""

    def write(w: GGUFWriter) -> None:
        w.add_name(text.name)
        w.add_file_type(ftype)
        w.add_context_length(text.context_length)
        w.add_embedding_length(text.n_embd)
        w.add_block_count(text.n_layer)
        w.add_feed_forward_length(text.n_ff)
        w.add_head_count(text.n_head)
        w.add_head_count_kv(text.n_head_kv)
        w.add_layer_norm_rms_eps(text.rms_eps)
        w.add_rope_freq_base(text.rope_theta)
        w.add_rope_dimension_count(rope_dims or text.head_dim)
        w.add_key_length(text.head_dim)
        w.add_value_length(text.head_dim)
        w.add_vocab_size(text.n_vocab)
        vocab.write(w)

    return write


def _text_tensors(weights: _Checkpoint, text: _TextParams, qtype: QType) -> list[_Tensor]:
    lm = "language_model"
    plan = [_matrix(weights, "token_embd.weight", f"{lm}.embed_tokens.weight", qtype)]
    for i in range(text.n_layer):
        hf = f"{lm}.layers.{i}"

        def mat(name: str, key: str, heads: int = 0, hf: str = hf, i: int = i) -> _Tensor:
            return _matrix(weights, f"blk.{i}.{name}.weight", f"{hf}.{key}.weight", qtype, heads)

        plan += [
            _vector(weights, f"blk.{i}.attn_norm.weight", f"{hf}.input_layernorm.weight"),
            mat("attn_q", "self_attn.q_proj", heads=text.n_head),
            mat("attn_k", "self_attn.k_proj", heads=text.n_head_kv),
            mat("attn_v", "self_attn.v_proj"),
            mat("attn_output", "self_attn.o_proj"),
            _vector(weights, f"blk.{i}.ffn_norm.weight", f"{hf}.post_attention_layernorm.weight"),
            mat("ffn_gate", "mlp.gate_proj"),
            mat("ffn_up", "mlp.up_proj"),
            mat("ffn_down", "mlp.down_proj"),
        ]
    plan.append(_vector(weights, "output_norm.weight", f"{lm}.norm.weight"))
    if text.has_output:
        plan.append(_matrix(weights, "output.weight", "lm_head.weight", qtype))
    return plan


def _rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores each head's rotary pairs as two halves; GGML wants them interleaved."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


# --- the vocabulary ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos: int | None
    eos: int | None
    unk: int | None
    pad: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    chat_template: str | None

    def write(self, w: GGUFWriter) -> None:
        w.add_tokenizer_model("llama")
        w.add_token_list(self.tokens)
        w.add_token_scores(self.scores)
        w.add_token_types(self.types)
        for special, add in (
            (self.bos, w.add_bos_token_id),
            (self.eos, w.add_eos_token_id),
            (self.unk, w.add_unk_token_id),
            (self.pad, w.add_pad_token_id),
        ):
            if special is not None:
                add(special)
        w.add_add_bos_token(self.add_bos)
        w.add_add_eos_token(self.add_eos)
        w.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template is not None:
            w.add_chat_template(self.chat_template)


BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _vocab(src: Path, config: dict[str, Any], rows: int) -> _Vocab:
    """tokenizer.json's byte-fallback BPE as llama.cpp's SentencePiece ("llama") vocabulary,
    padded with UNUSED `[PADi]` tokens to the embedding's `rows`."""
    tok = _read_json(src / "tokenizer.json")
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise InvalidRequest(
            "only SentencePiece-style tokenizers (BPE with byte_fallback, as Llama and "
            "Mistral use) convert to GGUF"
        )
    tok_config: dict[str, Any] = {}
    if (src / "tokenizer_config.json").exists():
        tok_config = _read_json(src / "tokenizer_config.json")
    pieces: dict[int, str] = {i: p for p, i in model["vocab"].items()}
    special = _added_tokens(src, tok, tok_config, pieces)
    if max(pieces) >= rows:
        raise InvalidRequest(
            f"the tokenizer has {max(pieces) + 1} tokens but the embedding only {rows} rows"
        )
    ids = {p: i for i, p in pieces.items()}
    unk = ids.get(model.get("unk_token") or "")
    kinds = [_kind(i, pieces.get(i), unk, special) for i in range(rows)]
    ranks = _merge_ranks(model.get("merges") or [])
    text = config.get("text_config") or {}
    return _Vocab(
        tokens=[pieces.get(i, f"[PAD{i}]") for i in range(rows)],
        scores=[_score(i, pieces.get(i), kind, ranks) for i, kind in enumerate(kinds)],
        types=[int(kind) for kind in kinds],
        bos=_special_id(tok_config, "bos_token", ids, text.get("bos_token_id", 1)),
        eos=_special_id(tok_config, "eos_token", ids, text.get("eos_token_id", 2)),
        unk=unk,
        pad=_special_id(tok_config, "pad_token", ids, config.get("pad_token_id")),
        add_bos=bool(tok_config.get("add_bos_token", True)),
        add_eos=bool(tok_config.get("add_eos_token", False)),
        add_space_prefix=_adds_space_prefix(tok),
        chat_template=_chat_template(src, tok_config),
    )


def _kind(i: int, piece: str | None, unk: int | None, special: dict[int, bool]) -> TokenType:
    if piece is None:  # vocabulary padding, or a hole in the ids
        return TokenType.UNUSED
    if i == unk:
        return TokenType.UNKNOWN
    if i in special:
        return TokenType.CONTROL if special[i] else TokenType.USER_DEFINED
    return TokenType.BYTE if BYTE_PIECE.fullmatch(piece) else TokenType.NORMAL


def _merge_ranks(merges: list[Any]) -> dict[str, int]:
    """Each piece a merge makes -> the rank of the first merge that makes it."""
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        ranks.setdefault(left + right, rank)
    return ranks


def _score(i: int, piece: str | None, kind: TokenType, ranks: dict[str, int]) -> float:
    """llama.cpp merges the adjacent pair whose joined piece scores highest; HF merges the pair
    of lowest merge rank. Minus the rank gives HF's order whatever order the ids are in (with
    "minus the id" it would only hold when ids follow the merges, as a BPE trainer's do)."""
    if kind != TokenType.NORMAL or piece is None:
        return 0.0 if kind != TokenType.UNUSED else -1e9
    # A piece no merge makes is never a merge result in HF; rank it after every merge.
    return -float(ranks.get(piece, len(ranks) + i))


def _special_id(
    tok_config: dict[str, Any], field: str, ids: dict[str, int], fallback: Any
) -> int | None:
    """The id of tokenizer_config's `field` token ("<s>" or {"content": "<s>", ...})."""
    value = tok_config.get(field)
    content = value.get("content") if isinstance(value, dict) else value
    found = ids.get(content) if isinstance(content, str) else None
    if found is not None:
        return found
    return fallback if isinstance(fallback, int) else None


def _added_tokens(
    src: Path, tok: dict[str, Any], tok_config: dict[str, Any], pieces: dict[int, str]
) -> dict[int, bool]:
    """Added tokens by id -> whether special; adds the ones outside the BPE vocab to `pieces`.
    tokenizer.json lists them; older folders also keep them in added_tokens.json."""
    special: dict[int, bool] = {}
    for added in tok.get("added_tokens") or []:
        pieces[added["id"]] = added["content"]
        special[added["id"]] = bool(added.get("special", False))
    decoder = tok_config.get("added_tokens_decoder") or {}
    if (src / "added_tokens.json").exists():
        for content, i in _read_json(src / "added_tokens.json").items():
            pieces.setdefault(i, content)
            special.setdefault(i, bool(decoder.get(str(i), {}).get("special", False)))
    return special


def _adds_space_prefix(tok: dict[str, Any]) -> bool:
    """Whether the tokenizer puts "▁" before the text, as SentencePiece's dummy prefix does:
    a Metaspace pre-tokenizer (not `never`) or a Prepend("▁") normalizer."""
    steps: list[dict[str, Any]] = []
    for part in (tok.get("normalizer"), tok.get("pre_tokenizer")):
        if part:
            steps += [part, *part.get("normalizers", []), *part.get("pretokenizers", [])]
    for step in steps:
        if step.get("type") == "Metaspace":
            scheme = step.get("prepend_scheme") or (
                "always" if step.get("add_prefix_space", True) else "never"
            )
            return bool(scheme != "never")
        if step.get("type") == "Prepend" and step.get("prepend") == "▁":
            return True
    return False


def _chat_template(src: Path, tok_config: dict[str, Any]) -> str | None:
    if (src / "chat_template.jinja").exists():
        return (src / "chat_template.jinja").read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    if template is None and (src / "chat_template.json").exists():
        template = _read_json(src / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


# --- the vision tower and projector ------------------------------------------------------


@dataclass(frozen=True)
class _VisionParams:
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    eps: float
    image_size: int
    patch_size: int
    use_gelu: bool
    feature_layer: int  # index into HF's hidden_states: 0 = embeddings, n_layer = last block
    projection_dim: int
    image_mean: list[float]
    image_std: list[float]


def _vision_params(
    config: dict[str, Any], src: Path, weights: _Checkpoint, projection_dim: int
) -> _VisionParams:
    """Sizes from the tensors, the rest from vision_config; refuses what clip.cpp misreads."""
    vision = _vision_config(config)
    n_embd, _, patch, _ = weights.shape("vision_tower.embeddings.patch_embedding.weight")
    n_ff = weights.shape("vision_tower.encoder.layers.0.mlp.fc1.weight")[0]
    if n_ff == n_embd:
        # clip.cpp swaps ffn_up/ffn_down of MLP projectors when ffn_down's input is n_embd.
        raise InvalidRequest("unsupported LLaVA for GGUF: vision intermediate_size == hidden_size")
    n_layer = _count_layers(weights, "vision_tower.encoder.layers.{}.layer_norm1.weight")
    image_size = int(vision.get("image_size", 224))
    positions = weights.shape("vision_tower.embeddings.position_embedding.weight")[0]
    if positions != (image_size // patch) ** 2 + 1:
        raise InvalidRequest(f"vision image_size {image_size} does not match {positions} positions")
    mean, std = _image_normalization(src)
    return _VisionParams(
        n_embd=n_embd,
        n_ff=n_ff,
        n_layer=n_layer,
        n_head=int(vision["num_attention_heads"]),
        eps=float(vision["layer_norm_eps"]),
        image_size=image_size,
        patch_size=patch,
        use_gelu=vision["hidden_act"] == "gelu",
        feature_layer=_feature_layer(config.get("vision_feature_layer", -2), n_layer),
        projection_dim=projection_dim,
        image_mean=mean,
        image_std=std,
    )


def _feature_layer(value: Any, n_layer: int) -> int:
    """HF's vision_feature_layer (negative counts from the end of hidden_states, which holds
    n_layer + 1 entries) as the non-negative index llama.cpp's `feature_layer` expects."""
    if isinstance(value, list):
        if len(value) != 1:
            raise InvalidRequest(
                f"unsupported LLaVA for GGUF: several vision_feature_layer {value}"
            )
        value = value[0]
    index = int(value) + (n_layer + 1 if int(value) < 0 else 0)
    if not 0 <= index <= n_layer:
        raise InvalidRequest(f"vision_feature_layer {value} is outside the {n_layer} vision layers")
    return index


def _image_normalization(src: Path) -> tuple[list[float], list[float]]:
    # transformers 4 writes preprocessor_config.json; 5 nests it in processor_config.json.
    for name, nested in (
        ("preprocessor_config.json", None),
        ("processor_config.json", "image_processor"),
    ):
        if (src / name).exists():
            found = _read_json(src / name)
            found = found.get(nested, {}) if nested else found
            if "image_mean" in found and "image_std" in found:
                mean, std = found["image_mean"], found["image_std"]
                return [float(v) for v in mean], [float(v) for v in std]
    return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def _vision_metadata(vision: _VisionParams, name: str, qtype: QType) -> _Metadata:
    def write(w: GGUFWriter) -> None:
        w.add_name(f"{name} projector")
        w.add_file_type(LlamaFileType.ALL_F32 if qtype == QType.F32 else LlamaFileType.MOSTLY_F16)
        w.add_string("clip.projector_type", "mlp")
        w.add_bool("clip.has_vision_encoder", True)
        w.add_bool("clip.has_text_encoder", False)
        w.add_bool("clip.use_gelu", vision.use_gelu)
        w.add_uint32("clip.vision.image_size", vision.image_size)
        w.add_uint32("clip.vision.patch_size", vision.patch_size)
        w.add_uint32("clip.vision.embedding_length", vision.n_embd)
        w.add_uint32("clip.vision.feed_forward_length", vision.n_ff)
        w.add_uint32("clip.vision.projection_dim", vision.projection_dim)
        w.add_uint32("clip.vision.attention.head_count", vision.n_head)
        w.add_float32("clip.vision.attention.layer_norm_epsilon", vision.eps)
        w.add_uint32("clip.vision.block_count", vision.n_layer)
        w.add_array("clip.vision.feature_layer", [vision.feature_layer])
        w.add_array("clip.vision.image_mean", vision.image_mean)
        w.add_array("clip.vision.image_std", vision.image_std)

    return write


def _vision_tensors(weights: _Checkpoint, vision: _VisionParams, qtype: QType) -> list[_Tensor]:
    """CLIP's tower without post_layernorm (the feature layer is taken before it), and the
    projector as mm.0 (linear_1) and mm.2 (linear_2), the indices of LLaVA's nn.Sequential."""
    emb = "vision_tower.embeddings"
    plan = [
        _vector(weights, "v.class_embd", f"{emb}.class_embedding"),
        _matrix(weights, "v.patch_embd.weight", f"{emb}.patch_embedding.weight", qtype),
        _matrix(weights, "v.position_embd.weight", f"{emb}.position_embedding.weight", qtype),
        *_layer(weights, "v.pre_ln", "vision_tower.pre_layrnorm", qtype),  # sic: CLIP's spelling
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
    for i in range(vision.n_layer):
        for name, key in parts.items():
            plan += _layer(
                weights, f"v.blk.{i}.{name}", f"vision_tower.encoder.layers.{i}.{key}", qtype
            )
    for name, key in (("mm.0", "linear_1"), ("mm.2", "linear_2")):
        plan += _layer(weights, name, f"multi_modal_projector.{key}", qtype, bias_required=True)
    return plan


def _layer(
    weights: _Checkpoint, name: str, key: str, qtype: QType, bias_required: bool = False
) -> list[_Tensor]:
    """A weight and its bias. llama.cpp adds the projector's biases unconditionally, so a
    projector without them (multimodal_projector_bias false) gets zeros."""
    weight = f"{key}.weight"
    if len(weights.shape(weight)) > 1:
        plan = [_matrix(weights, f"{name}.weight", weight, qtype)]
    else:
        plan = [_vector(weights, f"{name}.weight", weight)]
    if f"{key}.bias" in weights:
        plan.append(_vector(weights, f"{name}.bias", f"{key}.bias"))
    elif bias_required:
        rows = weights.shape(weight)[0]
        plan.append(_Tensor(f"{name}.bias", (rows,), QType.F32, lambda: np.zeros(rows, np.float32)))
    return plan


# --- writing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tensor:
    """One tensor to write: its GGUF name, shape (numpy order), type, and how to make it."""

    name: str
    shape: tuple[int, ...]
    qtype: QType
    make: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block * size


_Metadata = Callable[[GGUFWriter], None]


@dataclass(frozen=True)
class _GGUF:
    arch: str
    metadata: _Metadata
    tensors: Sequence[_Tensor]


def _vector(weights: _Checkpoint, name: str, key: str) -> _Tensor:
    """Norms, biases and other 1-D tensors: always f32, as llama.cpp's own converter keeps them."""
    return _Tensor(name, weights.shape(key), QType.F32, lambda: weights.get(key))


def _plus_one(weights: _Checkpoint, name: str, key: str) -> _Tensor:
    """A norm stored as w that scales by 1 + w (Gemma's, Qwen3.5's RMSNorm) as the plain scale
    llama.cpp multiplies by, in f32."""
    return _Tensor(name, weights.shape(key), QType.F32, lambda: weights.get(key) + np.float32(1))


def _matrix(
    weights: _Checkpoint, name: str, key: str, qtype: QType, rope_heads: int = 0
) -> _Tensor:
    """A weight in `qtype`: f32 or f16 (quantizing is llama.cpp's)."""
    shape = weights.shape(key)
    dtype = np.float32 if qtype == QType.F32 else np.float16

    def make() -> np.ndarray:
        w = weights.get(key)
        if rope_heads:
            w = _rope_permute(w, rope_heads)
        return w.astype(dtype)

    return _Tensor(name, shape, qtype, make)


def _write_all(dest: Path, files: dict[str, _GGUF], quantized: int | None = None) -> None:
    """Write each file under a temporary name in `dest`, then rename them all; on any
    failure remove the temporary files, leaving `dest` as it was. With `quantized`, the text
    model is written in f16 and then quantized to that file type by llama.cpp."""
    dest.mkdir(parents=True, exist_ok=True)
    done: list[tuple[Path, Path]] = []
    try:
        for name, spec in files.items():
            partial = dest / f".{name}.{secrets.token_hex(8)}.partial"
            done.append((partial, dest / name))
            _write_gguf(partial, spec)
            if quantized is not None and name == TEXT_FILE:
                wide = partial.with_suffix(".f16")
                done.append((wide, wide))  # removed below, never renamed
                os.replace(partial, wide)
                llama_quantize(wide, partial, quantized)
        for tmp, final in done:
            if tmp == final:
                continue
            os.replace(tmp, final)
    finally:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)


def _write_gguf(path: Path, spec: _GGUF) -> None:
    # Tensor infos first, then the data one tensor at a time: nothing big stays in memory.
    writer = GGUFWriter(path, spec.arch)
    try:
        spec.metadata(writer)
        for t in spec.tensors:
            writer.add_tensor_info(
                t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in spec.tensors:
            writer.write_tensor_data(t.make())
    finally:
        writer.close()
