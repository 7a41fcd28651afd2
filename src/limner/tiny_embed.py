"""A tiny random-weight embedding model in its two real formats, for tests and users' CI.

`write_tiny_embed` writes a BERT encoder (all-MiniLM's topology at tiny widths) as
sentence-transformers lays it out on the Hugging Face Hub: `config.json`, safetensors
weights, a WordPiece `vocab.txt`, and `1_Pooling/config.json` (mean pooling).
`write_tiny_embed_gguf` writes the same weights as llama.cpp's `bert` architecture runs them
(one `model.gguf` with the WordPiece vocabulary and the pooling type in its metadata), so the
two engines can be compared vector for vector. Both need only numpy, safetensors and gguf,
run offline in well under a second, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 128}  # fmt: skip
LAYER_NORM_EPS = 1e-12
STD = 0.02
# BERT's special tokens at their usual ids; [unused] fills the gap as in bert-base's vocab.
SPECIALS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
WORDS = ["a", "the", "is", "of", "and", "in", "on", "with", "red", "green", "blue", "yellow", "orange", "purple", "black", "white", "circle", "square", "triangle", "shape", "picture", "small", "large", "left", "right", "top", "bottom", "what", "this", "that", "there", "color", "colour", "one", "two", "three"]  # fmt: skip
POOLING_MEAN = 1  # llama.cpp's LLAMA_POOLING_TYPE_MEAN


def vocabulary() -> list[str]:
    """WordPiece tokens as `vocab.txt` lists them: whole words, then `##` continuations,
    so every lower-case ASCII text tokenises without [UNK]."""
    tokens = [SPECIALS.get(i, f"[unused{i}]") for i in range(104)]
    singles = [c for c in string.ascii_lowercase + string.digits + string.punctuation]
    tokens += WORDS + [c for c in singles if c not in WORDS]
    return tokens + [f"##{c}" for c in string.ascii_lowercase + string.digits]


def write_tiny_embed(dest: Path, seed: int = 0) -> Path:
    """Write the tiny encoder in sentence-transformers' folder layout; returns `dest`."""
    dest = Path(dest)
    (dest / "1_Pooling").mkdir(parents=True, exist_ok=True)
    tokens = vocabulary()
    (dest / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    _json(dest / "config.json", _config(len(tokens)))
    _json(dest / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizer", "do_lower_case": True,
        "model_max_length": BERT["max_position_embeddings"],
        "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "unk_token": "[UNK]", "mask_token": "[MASK]",
    })  # fmt: skip
    _json(dest / "special_tokens_map.json", {
        "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "unk_token": "[UNK]", "mask_token": "[MASK]",
    })  # fmt: skip
    _json(dest / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
    ])  # fmt: skip
    _json(dest / "1_Pooling" / "config.json", {
        "word_embedding_dimension": BERT["hidden_size"], "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
    })  # fmt: skip
    save_file(_weights(seed, len(tokens)), str(dest / "model.safetensors"), {"format": "pt"})
    return dest


def write_tiny_embed_gguf(dest: Path, seed: int = 0) -> Path:
    """Write the same encoder as llama.cpp's `bert` GGUF: `dest/model.gguf`; returns `dest`."""
    import gguf

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tokens = vocabulary()
    writer = gguf.GGUFWriter(str(dest / "model.gguf"), "bert")
    writer.add_name("tiny-embed")
    writer.add_context_length(BERT["max_position_embeddings"])
    writer.add_embedding_length(BERT["hidden_size"])
    writer.add_feed_forward_length(BERT["intermediate_size"])
    writer.add_block_count(BERT["num_hidden_layers"])
    writer.add_head_count(BERT["num_attention_heads"])
    writer.add_layer_norm_eps(LAYER_NORM_EPS)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("bert")
    writer.add_token_list([_phantom(t) for t in tokens])
    writer.add_token_types([_token_type(t) for t in tokens])
    writer.add_token_type_count(2)
    for key, token in (("bos", "[CLS]"), ("sep", "[SEP]"), ("unk", "[UNK]"),
                       ("pad", "[PAD]"), ("mask", "[MASK]")):  # fmt: skip
        writer.add_uint32(f"tokenizer.ggml.{key}_token_id", tokens.index(token))
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_bool("tokenizer.ggml.add_sep_token", True)
    for name, value in _gguf_tensors(_weights(seed, len(tokens))):
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def _config(vocab_size: int) -> dict[str, Any]:
    return {
        "architectures": ["BertModel"], "model_type": "bert", **BERT,
        "vocab_size": vocab_size, "type_vocab_size": 2, "hidden_act": "gelu",
        "layer_norm_eps": LAYER_NORM_EPS, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "pad_token_id": 0,
        "position_embedding_type": "absolute", "torch_dtype": "float32",
    }  # fmt: skip


def _weights(seed: int, vocab_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    width, inner = BERT["hidden_size"], BERT["intermediate_size"]

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * STD).astype(np.float32)

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.weight": (1 + normal(width)).astype(np.float32),
                f"{prefix}.bias": normal(width)}  # fmt: skip

    weights = {
        # Larger token embeddings than BERT's init, so that texts differ visibly.
        "embeddings.word_embeddings.weight": normal(vocab_size, width) * 25,
        "embeddings.position_embeddings.weight": normal(BERT["max_position_embeddings"], width),
        "embeddings.token_type_embeddings.weight": normal(2, width),
        **norm("embeddings.LayerNorm"),
        "pooler.dense.weight": normal(width, width),
        "pooler.dense.bias": normal(width),
    }
    for i in range(BERT["num_hidden_layers"]):
        layer = f"encoder.layer.{i}"
        for part in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):  # fmt: skip
            weights[f"{layer}.{part}.weight"] = normal(width, width) * 10
            weights[f"{layer}.{part}.bias"] = normal(width)
        weights |= norm(f"{layer}.attention.output.LayerNorm")
        weights[f"{layer}.intermediate.dense.weight"] = normal(inner, width) * 10
        weights[f"{layer}.intermediate.dense.bias"] = normal(inner)
        weights[f"{layer}.output.dense.weight"] = normal(width, inner) * 10
        weights[f"{layer}.output.dense.bias"] = normal(width)
        weights |= norm(f"{layer}.output.LayerNorm")
    return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in weights.items()}


# Hugging Face BERT names -> llama.cpp's (gguf-py's tensor map for MODEL_ARCH.BERT).
_GGUF_NAMES = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.token_type_embeddings": "token_types",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.LayerNorm": "token_embd_norm",
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}


def _gguf_tensors(weights: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    out = []
    for name, value in weights.items():
        stem, _, kind = name.rpartition(".")
        if stem.startswith("pooler."):
            continue  # llama.cpp pools by the metadata's pooling type, not BERT's pooler
        if stem.startswith("encoder.layer."):
            _, _, number, part = stem.split(".", 3)
            out.append((f"blk.{number}.{_GGUF_NAMES[part]}.{kind}", value))
        else:
            out.append((f"{_GGUF_NAMES[stem]}.{kind}", value))
    return out


def _phantom(token: str) -> str:
    """llama.cpp's WordPiece spelling: a word start carries '▁', a `##` piece drops it."""
    if token.startswith("[") and token.endswith("]"):
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def _token_type(token: str) -> int:
    if token == "[UNK]":
        return 2  # gguf.TokenType.UNKNOWN
    return 3 if token.startswith("[") and token.endswith("]") else 1  # CONTROL, NORMAL


def _json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
