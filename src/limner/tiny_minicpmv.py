"""A tiny MiniCPM-V 2.6 as llama.cpp runs it, for tests and users' CI.

MiniCPM-V 2.6 is Ollama's `minicpm-v` and openbmb's `MiniCPM-V-2_6-gguf`. Its Hugging Face
model is remote code (no transformers class), so the seeded weights are drawn here and written
straight into the two files those repos publish, in the layout llama.cpp's own tools give them
(`minicpmv-surgery.py`, then `convert_hf_to_gguf.py` for the text model and
`minicpmv-convert-image-encoder-to-gguf.py --minicpmv_version 3` for the projector):

- `model.gguf`: arch `qwen2` (Qwen2 blocks, biased q/k/v) with a byte-level BPE vocabulary
  split as Qwen2's is, holding the family's special tokens (`<image>`, `</image>`, `<slice>`,
  `</slice>`, `<unk>`, ...) and the chat template MiniCPM-V 2.6 publishes (`TEMPLATE`).
- `mmproj.gguf`: projector `resampler`, `clip.minicpmv_version` 3. A SigLIP tower (learned
  positions on a 70x70 grid, onto which clip.cpp buckets every picture's patches; fc1 named
  `ffn_down` and fc2 `ffn_up`, as the converter names them and clip.cpp swaps back by shape)
  and the resampler: `clip.minicpmv_query_num` learned queries attend, in heads 128 wide, to
  the tower's patches (keys carry 2-D sin-cos positions), then a layernorm and `proj`.

libmtmd cuts a picture as MiniCPM-V 2.6 does (slices of about `clip.vision.image_size`
pixels, at most 9): `<image>` overview `</image>`, then each slice in `<slice>` `</slice>`, a
newline after each row of slices but the last; every part costs `QUERIES` tokens.

    >>> write_tiny_minicpmv_gguf(Path("tiny-minicpm-v"))
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType, GGUFWriter

    from limner.store.gguf import _Tensor

TEXT_WIDTH = 128  # the resampler's heads are 128 wide in clip.cpp: one head
TEXT_LAYERS, TEXT_HEADS, TEXT_KV_HEADS, TEXT_FF = 2, 4, 2, 256
VISION_WIDTH, VISION_FF, VISION_LAYERS, VISION_HEADS = 64, 96, 2, 2
PATCH = 4
SLICE = 32  # clip.vision.image_size, the slice side (448 in MiniCPM-V 2.6): 8x8 patches
QUERIES = 16  # tokens a picture part costs (MiniCPM-V 2.6's query_num is 64)
POSITION_GRID = 70  # clip.cpp buckets every picture onto 70x70 learned positions
IMAGE_MEAN = IMAGE_STD = [0.5, 0.5, 0.5]  # as llama.cpp's README converts MiniCPM-V 2.6
EPS = 1e-6
STD = 0.02
# MiniCPM-V 2.6's chat template, from openbmb/MiniCPM-V-2_6's tokenizer_config.json; its GGUF
# carries it as tokenizer.chat_template (convert_hf_to_gguf.py copies it). ChatML with a
# default system turn, reading a message's content as one string: it has no place for a
# picture (the model's own chat() writes each picture, then a newline, before the text).
TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The special tokens of MiniCPM-V 2.6's tokenizer (Qwen2's and the family's own).
SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", "<image>", "</image>", "<ref>",
    "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<point>", "</point>", "<slice>",
    "</slice>", "<image_id>", "</image_id>",
]  # fmt: skip


def write_tiny_minicpmv_gguf(dest: Path, seed: int = 0, quantize: str = "f16") -> Path:
    """Write `dest/model.gguf` and `dest/mmproj.gguf` (seeded random weights); returns `dest`.

    `quantize` applies to the text model as in `store.gguf.convert_llava`: f32 and f16 are
    written here, other types by llama.cpp's quantizer; the projector is f16 (f32 with "f32").
    """
    from limner.store.gguf import (
        _GGUF,
        CONVERTED,
        CONVERTED_FTYPES,
        PROJECTOR_FILE,
        TEXT_FILE,
        _text_metadata,
        _TextParams,
        _write_all,
        quantization,
    )
    from limner.store.gguf_families import vocab

    number = quantization(quantize)
    qtype, ftype = CONVERTED["f32" if quantize.lower() == "f32" else "f16"]
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="limner-minicpmv-") as tmp:
        n_tokens = _write_tokenizer(Path(tmp))
        rows = -(-n_tokens // 64) * 64  # padded as Qwen2 pads its embedding
        text = _TextParams(
            name="MiniCPM-V-2_6",
            n_vocab=rows,
            n_embd=TEXT_WIDTH,
            n_layer=TEXT_LAYERS,
            n_ff=TEXT_FF,
            n_head=TEXT_HEADS,
            n_head_kv=TEXT_KV_HEADS,
            head_dim=TEXT_WIDTH // TEXT_HEADS,
            context_length=4096,
            rms_eps=EPS,
            rope_theta=1e6,
            has_output=True,
        )
        words = vocab(Path(tmp), {}, rows)
        files = {
            TEXT_FILE: _GGUF(
                "qwen2",
                _text_metadata(text, words, CONVERTED_FTYPES[qtype]),
                _tensors(_text_weights(rng, rows), qtype),
            ),
            PROJECTOR_FILE: _GGUF(
                "clip", _projector_metadata(qtype), _tensors(_projector_weights(rng), qtype)
            ),
        }
        _write_all(Path(dest), files, None if number == ftype else number)
    return Path(dest)


def _write_tokenizer(folder: Path) -> int:
    """MiniCPM-V 2.6's tokenizer files at tiny size (a byte-level BPE learnt from a small
    corpus, Qwen2's split, the family's special tokens); returns its size."""
    from limner.store.gguf_families import QWEN2_SPLIT
    from limner.tiny_families import _tokenizer

    tokenizer = _tokenizer(
        SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", bos="<|im_start|>", template=TEMPLATE,
        split=QWEN2_SPLIT,
    )  # fmt: skip
    tokenizer.save_pretrained(folder)
    return len(tokenizer)


def _text_weights(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    """Qwen2's blocks under llama.cpp's names (q, k and v with biases; the untied output)."""
    d, kv = TEXT_WIDTH, TEXT_WIDTH // TEXT_HEADS * TEXT_KV_HEADS
    weights = {"token_embd.weight": _normal(rng, rows, d)}
    for i in range(TEXT_LAYERS):
        block = f"blk.{i}"
        weights |= {
            f"{block}.attn_norm.weight": _scale(rng, d),
            f"{block}.attn_q.weight": _normal(rng, d, d),
            f"{block}.attn_q.bias": _normal(rng, d),
            f"{block}.attn_k.weight": _normal(rng, kv, d),
            f"{block}.attn_k.bias": _normal(rng, kv),
            f"{block}.attn_v.weight": _normal(rng, kv, d),
            f"{block}.attn_v.bias": _normal(rng, kv),
            f"{block}.attn_output.weight": _normal(rng, d, d),
            f"{block}.ffn_norm.weight": _scale(rng, d),
            f"{block}.ffn_gate.weight": _normal(rng, TEXT_FF, d),
            f"{block}.ffn_up.weight": _normal(rng, TEXT_FF, d),
            f"{block}.ffn_down.weight": _normal(rng, d, TEXT_FF),
        }
    weights["output_norm.weight"] = _scale(rng, d)
    weights["output.weight"] = _normal(rng, rows, d)
    return weights


def _projector_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The SigLIP tower and the resampler under the converter's names (numpy shapes are
    PyTorch's: a Linear's weight is out x in)."""
    w, d = VISION_WIDTH, TEXT_WIDTH
    weights = {
        "v.patch_embd.weight": _normal(rng, w, 3, PATCH, PATCH, std=0.2),
        "v.patch_embd.bias": _normal(rng, w),
        "v.position_embd.weight": _normal(rng, POSITION_GRID**2, w, std=0.2),
    }
    for i in range(VISION_LAYERS):
        block = f"v.blk.{i}"
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            weights |= {f"{block}.{part}.weight": _normal(rng, w, w, std=0.1),
                        f"{block}.{part}.bias": _normal(rng, w)}  # fmt: skip
        weights |= {
            f"{block}.ln1.weight": _scale(rng, w),
            f"{block}.ln1.bias": _normal(rng, w),
            f"{block}.ln2.weight": _scale(rng, w),
            f"{block}.ln2.bias": _normal(rng, w),
            # The converter's names: fc1 (width -> n_ff) as ffn_down, fc2 as ffn_up.
            f"{block}.ffn_down.weight": _normal(rng, VISION_FF, w, std=0.1),
            f"{block}.ffn_down.bias": _normal(rng, VISION_FF),
            f"{block}.ffn_up.weight": _normal(rng, w, VISION_FF, std=0.1),
            f"{block}.ffn_up.bias": _normal(rng, w),
        }
    weights |= {"v.post_ln.weight": _scale(rng, w), "v.post_ln.bias": _normal(rng, w)}
    weights |= {
        "resampler.query": _normal(rng, QUERIES, d, std=0.5),
        "resampler.kv.weight": _normal(rng, d, w, std=0.1),
        "resampler.pos_embed_k": sincos_positions(d, POSITION_GRID, POSITION_GRID),
    }
    # nn.MultiheadAttention's in_proj (the converter splits it in three) and out_proj.
    for part in ("q", "k", "v", "out"):
        weights |= {f"resampler.attn.{part}.weight": _normal(rng, d, d, std=0.1),
                    f"resampler.attn.{part}.bias": _normal(rng, d)}  # fmt: skip
    for norm in ("q", "kv", "post"):
        weights |= {f"resampler.ln_{norm}.weight": _scale(rng, d),
                    f"resampler.ln_{norm}.bias": _normal(rng, d)}  # fmt: skip
    # MiniCPM-V applies `x @ proj`; the converter writes proj transposed, as a Linear weight.
    weights["resampler.proj.weight"] = _normal(rng, d, d, std=d**-0.5)
    return weights


def sincos_positions(width: int, rows: int, columns: int) -> np.ndarray:
    """MiniCPM-V's 2-D sin-cos positions of a rows x columns patch grid, row by row: sin and
    cos of the column times width/4 frequencies, then of the row (resampler.py's
    get_2d_sincos_pos_embed; clip.cpp computes the same for each picture's own grid)."""
    omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float32) / (width // 4))
    row, column = np.divmod(np.arange(rows * columns, dtype=np.float32), columns)
    parts = [f(p[:, None] * omega) for p in (column, row) for f in (np.sin, np.cos)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def _projector_metadata(qtype: GGMLQuantizationType) -> Callable[[GGUFWriter], None]:
    from gguf import GGMLQuantizationType as QType
    from gguf import LlamaFileType

    f32 = qtype == QType.F32

    def write(w: GGUFWriter) -> None:
        w.add_name("MiniCPM-V-2_6 projector")
        w.add_description("image encoder for MiniCPM-V")
        w.add_file_type(LlamaFileType.ALL_F32 if f32 else LlamaFileType.MOSTLY_F16)
        w.add_bool("clip.has_text_encoder", False)
        w.add_bool("clip.has_vision_encoder", True)
        w.add_bool("clip.has_minicpmv_projector", True)
        w.add_string("clip.projector_type", "resampler")
        w.add_int32("clip.minicpmv_version", 3)
        w.add_uint32("clip.minicpmv_query_num", QUERIES)
        w.add_uint32("clip.vision.image_size", SLICE)
        w.add_uint32("clip.vision.patch_size", PATCH)
        w.add_uint32("clip.vision.embedding_length", VISION_WIDTH)
        w.add_uint32("clip.vision.feed_forward_length", VISION_FF)
        w.add_uint32("clip.vision.projection_dim", 0)
        w.add_uint32("clip.vision.attention.head_count", VISION_HEADS)
        w.add_float32("clip.vision.attention.layer_norm_epsilon", EPS)
        w.add_uint32("clip.vision.block_count", VISION_LAYERS)
        w.add_array("clip.vision.image_mean", IMAGE_MEAN)
        w.add_array("clip.vision.image_std", IMAGE_STD)
        w.add_bool("clip.use_gelu", True)  # SigLIP's gelu_pytorch_tanh

    return write


def _tensors(weights: dict[str, np.ndarray], qtype: GGMLQuantizationType) -> list[_Tensor]:
    """The converter's types: matrices (`.weight`, 2-D or the 4-D patch convolution) in
    `qtype`, everything else (norms, biases, queries, positions) in f32."""
    from gguf import GGMLQuantizationType as QType

    from limner.store.gguf import _Tensor

    plan: list[_Tensor] = []
    for name, value in weights.items():
        kind = qtype if name.endswith(".weight") and value.ndim >= 2 else QType.F32
        dtype = np.float32 if kind == QType.F32 else np.float16
        plan.append(_Tensor(name, value.shape, kind, functools.partial(value.astype, dtype)))
    return plan


def _normal(rng: np.random.Generator, *shape: int, std: float = STD) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _scale(rng: np.random.Generator, width: int) -> np.ndarray:
    """A norm's weight: about one, so that it is seen at work."""
    return (1 + rng.standard_normal(width) * 0.1).astype(np.float32)
