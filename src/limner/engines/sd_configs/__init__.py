"""Bundled diffusers config folders for single-file Stable Diffusion checkpoints.

An A1111/Civitai checkpoint is one `.safetensors` file in the original (LDM) layout: weights
only, no configs and no tokenizer. diffusers' `from_single_file` then needs a diffusers folder
with the configs of the matching family, and without `config=` it downloads one from the Hub.
These folders are that config, shipped with limner, so loading never goes online:

    sd15                 runwayml/stable-diffusion-v1-5           512, epsilon, CLIP-L
    sd15-inpaint         runwayml/stable-diffusion-inpainting     9-channel UNet
    sd2                  stabilityai/stable-diffusion-2-1         768, v-prediction, OpenCLIP-H
    sd2-inpaint          stabilityai/stable-diffusion-2-inpainting  512, epsilon, 9 channels
    sdxl                 stabilityai/stable-diffusion-xl-base-1.0   CLIP-L + OpenCLIP-bigG
    sdxl-inpaint         diffusers/stable-diffusion-xl-1.0-inpainting-0.1
    limner-tiny(-inpaint)  limner.tiny's random-weight SD 1.5 (tests exercise this same path)

Each holds model_index.json, scheduler/, unet/, vae/, text_encoder/ (+ text_encoder_2/) and
tokenizer/ (+ tokenizer_2/) with the values of those repos. Deliberate differences: no safety
checker and no feature extractor (limner loads neither); the SD 2 tokenizer_config.json names
the pad token "!" like its special_tokens_map.json; sdxl-inpaint keeps force_upcast true (the
Hub repo ships the fp16-fix VAE, but a single file carries its own VAE, usually SDXL's original
one, which overflows in fp16); EMA training fields are dropped.

The real tokenizers are CLIP's byte-level BPE. Only the merges are shipped
(`clip_bpe_simple_vocab_16e6.txt.gz`, see README.md); `materialise` builds vocab.json and
merges.txt from them exactly as OpenAI's SimpleTokenizer does, which is the vocabulary of
`openai/clip-vit-large-patch14` (49408 tokens). The tiny families ship their own small files.

Pure Python: no torch, no diffusers.
"""

from __future__ import annotations

import gzip
import json
import shutil
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
BPE_FILE = HERE / "clip_bpe_simple_vocab_16e6.txt.gz"
FAMILIES = (
    "sd15",
    "sd15-inpaint",
    "sd2",
    "sd2-inpaint",
    "sdxl",
    "sdxl-inpaint",
    "limner-tiny",
    "limner-tiny-inpaint",
)
CLIP_VOCAB_SIZE = 49408
CLIP_MERGES = CLIP_VOCAB_SIZE - 256 - 256 - 2  # 48894


def folder(family: str) -> Path:
    """The bundled config folder of `family` (read-only; see `materialise`)."""
    if family not in FAMILIES:
        raise KeyError(f"no bundled config for {family!r}; known: {', '.join(FAMILIES)}")
    return HERE / family


def materialise(family: str, dest: Path) -> Path:
    """Write a complete diffusers config folder for `family` into `dest`; returns `dest`.

    The bundled JSON files are copied; every tokenizer folder without a vocabulary gets CLIP's
    vocab.json and merges.txt, built from the shipped BPE merges.
    """
    dest = Path(dest)
    shutil.copytree(folder(family), dest, dirs_exist_ok=True)
    for tokenizer in sorted(dest.glob("tokenizer*")):
        if tokenizer.is_dir() and not (tokenizer / "vocab.json").exists():
            write_clip_vocab(tokenizer)
    return dest


def write_clip_vocab(tokenizer_folder: Path) -> None:
    """CLIP's vocab.json and merges.txt (the files of openai/clip-vit-large-patch14)."""
    vocab_text, merges_text = _clip_files()
    (tokenizer_folder / "vocab.json").write_text(vocab_text, encoding="utf-8")
    (tokenizer_folder / "merges.txt").write_text(merges_text, encoding="utf-8")


@lru_cache(maxsize=1)
def _clip_files() -> tuple[str, str]:
    vocab, merges = clip_vocab()
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return json.dumps(vocab, ensure_ascii=False), merges_text


@lru_cache(maxsize=1)
def clip_vocab() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """CLIP's vocabulary and merges, as OpenAI's `SimpleTokenizer` builds them: the 256 byte
    symbols, the same with `</w>`, one token per merge in rank order, then `<|startoftext|>`
    and `<|endoftext|>` (ids 49406 and 49407)."""
    with gzip.open(BPE_FILE, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # Line 0 is a version header; SimpleTokenizer keeps the next 49152 - 256 - 2 lines.
    merges = tuple(_pair(line) for line in lines[1 : CLIP_MERGES + 1])
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{BPE_FILE.name} gave {len(vocab)} tokens, not {CLIP_VOCAB_SIZE}")
    return vocab, merges


def _pair(line: str) -> tuple[str, str]:
    first, second = line.split()
    return first, second


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table, in CLIP's order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes, strict=True)}
