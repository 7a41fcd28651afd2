"""Decode speed and time to first token of a GGUF vision model: limner vs llama-cpp-python.

    .venv/bin/python bench/vlm.py                       # BakLLaVA size (~17 min on 2 vCPUs)
    .venv/bin/python bench/vlm.py --layers 1 --runs 2   # a quick look (about a minute)

One picture and a short question go, in one run on one machine, through three paths:
  raw llama-cpp-python   Llama + Llava15ChatHandler in this process, create_chat_completion(stream)
  llama_cpp.server       `python -m llama_cpp.server` in a subprocess, streamed /v1/chat/completions
  limner serve           `limner serve` in a subprocess, the model stored with `limner create
                         NAME --from FOLDER`, streamed /api/chat (picture base64 in `images`)
  limner, each token     (--each-token) the same with LIMNER_STREAM_INTERVAL=0: one line per
                         token from the runner to the server and from the server to the client
with the same GGUF files, n_ctx, thread count, weight placement (llama.cpp's repacked buffers
on or off as limner's engine chooses) and number of generated tokens. All three are loaded at
once; each is warmed up (load + one request), then they take turns for --runs rounds, every
request with a picture no path has seen (so no KV cache holds it), and the median is reported:
  TTFT     request sent -> first non-empty piece of text, at the client (encoding the picture
           and prefilling the prompt are nearly all of it)
  decode   (tokens - 1) / (last piece - first piece), at the client; for limner also the
           server's own eval_count / eval_duration
as ratios of raw llama-cpp-python, next to the memory-bandwidth bound for decoding
(bandwidth of a 1 GiB numpy copy / bytes read per token).

The model is BakLLaVA's architecture with random weights (speed does not depend on their
values): Mistral-7B widths in Q4_0 (output.weight Q6_K, as llama.cpp's Q4_0 files have it)
and a CLIP-L/336 projector in f16, written with gguf-py and cached under --cache (4.7 GB for
32 layers, built in about 25 s). The output rows of every token but the synthetic words are
zero, so greedy decoding never picks EOS, a control or a byte token: every path generates
exactly --tokens tokens, one piece of text each.

This is a benchmark, not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

import gguf
import httpx
import numpy as np
from gguf import GGMLQuantizationType as QType
from gguf import GGUFWriter, LlamaFileType, TokenType

FORMAT = 2  # bump when the files written below change, so cached copies are rebuilt
FULL_LAYERS = 32
# Mistral-7B / BakLLaVA's text model
N_VOCAB, N_EMBD, N_FF, N_HEAD, N_HEAD_KV, HEAD_DIM = 32000, 4096, 14336, 32, 8, 128
# CLIP ViT-L/14 at 336 px, and LLaVA's two-layer projector
V_EMBD, V_FF, V_HEAD, V_LAYERS, PATCH, IMAGE = 1024, 4096, 16, 24, 14, 336
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# llama-cpp-python's Llava15ChatHandler adds this system message when there is none; every
# path is sent it explicitly, so all three prompts are the same text.
SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions."
)
QUESTION = "What is in this picture? Describe it in one sentence."
MODEL_NAME = "bench-bakllava"
RAW, SERVER_LABEL, LIMNER = "raw llama-cpp-python", "llama_cpp.server", "limner serve"
LIMNER_EACH = "limner, each token"  # LIMNER_STREAM_INTERVAL=0: one line per token
# `python -m llama_cpp.server` with the weights placed as limner's engine places them: argv[1]
# "repack" takes only AMX out of llama.cpp's repacked buffers where it would crash (as limner
# does), "plain" turns repacking off (llama-cpp-python has no option for either).
SERVER = """
import runpy, sys
if sys.argv.pop(1) == "plain":
    import llama_cpp.llama_cpp as c
    defaults = c.llama_model_default_params
    def plain():
        params = defaults()
        params.use_extra_bufts = False
        return params
    c.llama_model_default_params = plain
else:
    from limner.engines.llava_llamacpp import _may_repack
    _may_repack()
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


# --- the model ---------------------------------------------------------------------------


def build(cache: Path, layers: int) -> Path:
    """The folder holding `model.gguf` and `mmproj.gguf`, written unless already cached."""
    folder = cache / f"bakllava-random-q4_0-{layers}l-v{FORMAT}"
    if (folder / "model.gguf").is_file() and (folder / "mmproj.gguf").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    print(f"building the model with {layers} layers in {folder} ...", flush=True)
    rng = np.random.default_rng(0)
    for name, write in (("mmproj.gguf", write_projector), ("model.gguf", write_text_model)):
        partial = folder / f".{name}.partial"
        try:
            write(partial, rng, layers)
            partial.rename(folder / name)
        finally:
            partial.unlink(missing_ok=True)
    print(f"  built in {time.perf_counter() - began:.0f} s", flush=True)
    return folder


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary: specials, 256 byte tokens, single characters, every
    prefix of the prompt's words (so the prompt tokenizes into words, as a real vocabulary
    would), then synthetic words `▁w<n>` up to N_VOCAB."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    # "▁w" starts every synthetic word, so a generated answer tokenizes back into its own
    # tokens when a chat client sends it in the next turn, as a real vocabulary's words do.
    pieces = ["▁", "▁w"] + [chr(c) for c in range(33, 127)]
    for word in f"{SYSTEM} {QUESTION} USER: ASSISTANT:".split():
        for start in ("▁", ""):
            pieces += [start + word[:n] for n in range(1, len(word) + 1)]
    pieces = list(dict.fromkeys(p for p in pieces if p not in tokens))
    tokens += pieces
    types += [TokenType.NORMAL] * len(pieces)
    scores = [0.0] * (len(tokens) - len(pieces)) + [float(len(p)) for p in pieces]
    filler = N_VOCAB - len(tokens)
    tokens += [f"▁w{n}" for n in range(filler)]
    types += [TokenType.NORMAL] * filler
    scores += [-1000.0] * filler
    return tokens, scores, [int(t) for t in types]


def first_word_id() -> int:
    """The first synthetic word: every token before it gets a zero output row."""
    tokens, _, _ = vocabulary()
    return tokens.index("▁w0")


def q4_0(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Random Q4_0 blocks: an f16 scale of about 0.002 and 32 random nibbles each."""
    blocks = rng.integers(0, 256, size=(rows * cols // 32, 18), dtype=np.uint8)
    scales = rng.uniform(0.0015, 0.0025, size=len(blocks)).astype(np.float16)
    blocks[:, :2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks


def q6_k_output(rng: np.random.Generator, silent_rows: int) -> np.ndarray:
    """output.weight as random Q6_K blocks (ql 128, qh 64, int8 scales 16, f16 d), with the
    first `silent_rows` rows zero so those tokens' logits are 0, below every word's maximum."""
    blocks = rng.integers(0, 256, size=(N_VOCAB, N_EMBD // 256, 210), dtype=np.uint8)
    blocks[..., 192:208] = rng.integers(1, 16, size=(*blocks.shape[:2], 16), dtype=np.uint8)
    d = np.full(blocks.shape[:2], 6e-5, dtype=np.float16)
    d[:silent_rows] = 0
    blocks[..., 208:210] = d.view(np.uint8).reshape(*d.shape, 2)
    return blocks


def write_text_model(path: Path, rng: np.random.Generator, layers: int) -> None:
    tokens, scores, types = vocabulary()
    w = GGUFWriter(path, "llama")
    w.add_name("BakLLaVA architecture, random weights")
    w.add_file_type(LlamaFileType.MOSTLY_Q4_0)
    w.add_context_length(32768)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(layers)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_vocab_size(N_VOCAB)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    kv = N_HEAD_KV * HEAD_DIM
    matrices = {"attn_q": (N_EMBD, N_EMBD), "attn_k": (kv, N_EMBD), "attn_v": (kv, N_EMBD)}
    matrices |= {"attn_output": (N_EMBD, N_EMBD), "ffn_gate": (N_FF, N_EMBD)}
    matrices |= {"ffn_up": (N_FF, N_EMBD), "ffn_down": (N_EMBD, N_FF)}
    norm = lambda: np.ones(N_EMBD, np.float32)  # noqa: E731
    plan: list[tuple[str, tuple[int, ...], QType, Any]] = [
        ("token_embd.weight", (N_VOCAB, N_EMBD), QType.Q4_0, lambda: q4_0(rng, N_VOCAB, N_EMBD))
    ]
    for i in range(layers):
        plan.append((f"blk.{i}.attn_norm.weight", (N_EMBD,), QType.F32, norm))
        plan.append((f"blk.{i}.ffn_norm.weight", (N_EMBD,), QType.F32, norm))
        for name, (rows, cols) in matrices.items():
            plan.append(
                (f"blk.{i}.{name}.weight", (rows, cols), QType.Q4_0,
                 lambda r=rows, c=cols: q4_0(rng, r, c))
            )  # fmt: skip
    plan.append(("output_norm.weight", (N_EMBD,), QType.F32, norm))
    silent = first_word_id()
    plan.append(("output.weight", (N_VOCAB, N_EMBD), QType.Q6_K, lambda: q6_k_output(rng, silent)))
    write_tensors(w, plan)


def write_projector(path: Path, rng: np.random.Generator, layers: int) -> None:
    """CLIP-L/336 and the mlp projector, keys and tensor names as limner.store.gguf writes
    them (the "exact" layout: all 24 blocks, feature layer 23 = HF's -2)."""
    del layers  # the projector does not depend on the text model's depth
    w = GGUFWriter(path, "clip")
    w.add_name("BakLLaVA architecture projector, random weights")
    w.add_file_type(LlamaFileType.MOSTLY_F16)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_text_encoder", False)
    w.add_bool("clip.use_gelu", False)  # quick_gelu
    w.add_uint32("clip.vision.image_size", IMAGE)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", V_EMBD)
    w.add_uint32("clip.vision.feed_forward_length", V_FF)
    w.add_uint32("clip.vision.projection_dim", N_EMBD)
    w.add_uint32("clip.vision.attention.head_count", V_HEAD)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    w.add_uint32("clip.vision.block_count", V_LAYERS)
    w.add_array("clip.vision.feature_layer", [V_LAYERS - 1])
    w.add_array("clip.vision.image_mean", CLIP_MEAN)
    w.add_array("clip.vision.image_std", CLIP_STD)

    def f16(*shape: int) -> Any:
        return lambda: (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    def f32(size: int, value: float) -> Any:
        return lambda: np.full(size, value, np.float32)

    def linear(name: str, rows: int, cols: int) -> list[tuple[str, tuple[int, ...], QType, Any]]:
        return [
            (f"{name}.weight", (rows, cols), QType.F16, f16(rows, cols)),
            (f"{name}.bias", (rows,), QType.F32, f32(rows, 0.0)),
        ]

    def layer_norm(name: str) -> list[tuple[str, tuple[int, ...], QType, Any]]:
        return [
            (f"{name}.weight", (V_EMBD,), QType.F32, f32(V_EMBD, 1.0)),
            (f"{name}.bias", (V_EMBD,), QType.F32, f32(V_EMBD, 0.0)),
        ]

    positions = (IMAGE // PATCH) ** 2 + 1
    plan = [
        ("v.class_embd", (V_EMBD,), QType.F32, lambda: rng.standard_normal(V_EMBD, np.float32)),
        ("v.patch_embd.weight", (V_EMBD, 3, PATCH, PATCH), QType.F16, f16(V_EMBD, 3, PATCH, PATCH)),
        ("v.position_embd.weight", (positions, V_EMBD), QType.F16, f16(positions, V_EMBD)),
        *layer_norm("v.pre_ln"),
    ]
    for i in range(V_LAYERS):
        for part in ("attn_q", "attn_k", "attn_v", "attn_out"):
            plan += linear(f"v.blk.{i}.{part}", V_EMBD, V_EMBD)
        plan += linear(f"v.blk.{i}.ffn_up", V_FF, V_EMBD)
        plan += linear(f"v.blk.{i}.ffn_down", V_EMBD, V_FF)
        plan += layer_norm(f"v.blk.{i}.ln1") + layer_norm(f"v.blk.{i}.ln2")
    plan += linear("mm.0", N_EMBD, V_EMBD) + linear("mm.2", N_EMBD, N_EMBD)
    write_tensors(w, plan)


def write_tensors(w: GGUFWriter, plan: list[tuple[str, tuple[int, ...], QType, Any]]) -> None:
    """Tensor infos, then the data one tensor at a time (nothing big stays in memory)."""
    try:
        for name, shape, qtype, _ in plan:
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            nbytes = int(np.prod(shape)) // block * size
            w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for _, _, _, make in plan:
            w.write_tensor_data(make())
    finally:
        w.close()


def picture(seed: int) -> bytes:
    """A 640x480 JPEG, about the size of a phone photo scaled for the web; each seed gives
    different pixels, so no path can reuse an earlier request's picture or KV cache."""
    from PIL import Image

    y, x = np.mgrid[0:480, 0:640]
    rgb = np.stack([x * 255 // 640, y * 255 // 480, (x + y) * 255 // 1120], axis=-1)
    noise = np.random.default_rng(seed).integers(0, 24, size=rgb.shape)
    out = io.BytesIO()
    Image.fromarray((rgb + noise).clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


# --- what decoding may reach -------------------------------------------------------------


def copy_bandwidth() -> float:
    """Bytes per second read plus written by a 1 GiB numpy copy, best of 3 (one thread)."""
    src = np.ones(2**30 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return 2 * src.nbytes / best


@dataclass
class TokenBytes:
    weights: int  # every text tensor once, but one row of token_embd
    kv: int  # the KV cache at the middle of decoding
    per_layer: int  # one block's weights, to extrapolate to FULL_LAYERS

    @property
    def total(self) -> int:
        return self.weights + self.kv


def bytes_per_token(model: Path, positions: int) -> TokenBytes:
    reader = gguf.GGUFReader(model)
    weights = per_layer = 0
    for t in reader.tensors:
        size = int(t.n_bytes)
        if t.name == "token_embd.weight":
            size //= N_VOCAB
        weights += size
        if t.name.startswith("blk.0."):
            per_layer += size
    layers = len({t.name.split(".")[1] for t in reader.tensors if t.name.startswith("blk.")})
    kv = layers * 2 * N_HEAD_KV * HEAD_DIM * 2 * positions  # keys and values, f16
    return TokenBytes(weights, kv, per_layer)


# --- timing a stream ---------------------------------------------------------------------


@dataclass
class Sample:
    ttft: float  # seconds from the request to the first piece of text
    rate: float  # tokens per second between the first and the last piece
    tokens: int
    finish: str
    server_rate: float | None = None  # limner's eval_count / eval_duration
    prompt_tokens: int | None = None


def timed(started: float, events: Iterable[tuple[str, dict[str, Any]]]) -> Sample:
    """Time a stream of (text, fields) events; fields may carry finish/eval counts."""
    first = last = 0.0
    pieces = 0
    fields: dict[str, Any] = {}
    for text, extra in events:
        if text:
            last = time.perf_counter()
            first = first or last
            pieces += 1
        fields |= extra
    tokens = int(fields.get("eval_count", pieces))
    sample = Sample(
        ttft=first - started,
        rate=(tokens - 1) / (last - first) if last > first else float("nan"),
        tokens=tokens,
        finish=str(fields.get("finish", "?")),
        prompt_tokens=fields.get("prompt_eval_count"),
    )
    if fields.get("eval_duration"):
        sample.server_rate = tokens / (fields["eval_duration"] / 1e9)
    return sample


def openai_events(chunks: Iterable[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for chunk in chunks:
        choice = chunk["choices"][0]
        finish = {"finish": choice["finish_reason"]} if choice.get("finish_reason") else {}
        yield choice["delta"].get("content") or "", finish


def sse(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            if line == "data: [DONE]":
                return
            yield json.loads(line.removeprefix("data: "))


def ndjson_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    for line in response.iter_lines():
        if not line:
            continue
        chunk = json.loads(line)
        if "error" in chunk:
            raise RuntimeError(f"limner: {chunk['error']}")
        extra = {}
        if chunk.get("done"):
            extra = {k: chunk.get(k) for k in ("eval_count", "eval_duration", "prompt_eval_count")}
            extra["finish"] = chunk.get("done_reason")
        yield chunk.get("message", {}).get("content", ""), extra


def openai_messages(jpeg: bytes) -> list[dict[str, Any]]:
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


Once = Callable[[bytes], Sample]  # one timed request with this picture


def measure(paths: dict[str, Once], pictures: list[bytes]) -> dict[str, list[Sample]]:
    """A warm-up request per path with the first picture, then rounds of one request per path
    with each other picture: the paths take turns, so a machine that slows down or speeds up
    during the run (other jobs, clocks) weighs on all of them alike."""
    for label, once in paths.items():
        print(f"{label}: warm-up  {describe(once(pictures[0]))}", flush=True)
    results: dict[str, list[Sample]] = {label: [] for label in paths}
    for n, jpeg in enumerate(pictures[1:], 1):
        for label, once in paths.items():
            results[label].append(once(jpeg))
            print(f"{label}: run {n}  {describe(results[label][-1])}", flush=True)
    return results


def describe(s: Sample) -> str:
    server = f", server {s.server_rate:.2f} tok/s" if s.server_rate else ""
    prompt = f", prompt {s.prompt_tokens} tokens" if s.prompt_tokens else ""
    return (
        f"TTFT {s.ttft:6.2f} s, decode {s.rate:6.2f} tok/s{server}, "
        f"{s.tokens} tokens ({s.finish}){prompt}"
    )


# --- the three paths ---------------------------------------------------------------------


@contextlib.contextmanager
def raw_llama_cpp(folder: Path, args: argparse.Namespace) -> Iterator[Once]:
    import llama_cpp.mtmd_cpp as mtmd
    from llama_cpp import Llama
    from llama_cpp._logger import llama_log_callback
    from llama_cpp.llama_chat_format import Llava15ChatHandler

    # libmtmd logs every picture at info level; quiet it as limner's engine does.
    for log_set in (mtmd.mtmd_log_set, mtmd.mtmd_helper_log_set):
        log_set(llama_log_callback, ctypes.c_void_p(0))

    with plain_weights(not args.repack):
        llm = Llama(
            model_path=str(folder / "model.gguf"),
            chat_handler=Llava15ChatHandler(
                clip_model_path=str(folder / "mmproj.gguf"), verbose=False
            ),
            n_ctx=args.ctx,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            verbose=False,
        )

    def once(jpeg: bytes) -> Sample:
        messages: Any = openai_messages(jpeg)
        started = time.perf_counter()
        stream = llm.create_chat_completion(
            messages=messages, stream=True, max_tokens=args.tokens, temperature=0.0
        )
        sample = timed(started, openai_events(stream))  # type: ignore[arg-type]
        sample.prompt_tokens = llm.n_tokens - sample.tokens + 1  # the last token is not decoded
        return sample

    try:
        yield once
    finally:
        llm.close()


@contextlib.contextmanager
def llama_cpp_server(folder: Path, args: argparse.Namespace) -> Iterator[Once]:
    port = free_port()
    command = [
        sys.executable, "-c", SERVER, "repack" if args.repack else "plain",
        "--model", str(folder / "model.gguf"), "--clip_model_path", str(folder / "mmproj.gguf"),
        "--chat_format", "llava-1-5", "--n_ctx", str(args.ctx),
        "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
        "--host", "127.0.0.1", "--port", str(port), "--verbose", "False",
    ]  # fmt: skip
    with started(command, os.environ.copy(), args.work / "llama_cpp.server.log") as process:
        base = f"http://127.0.0.1:{port}"
        wait_ready(process, f"{base}/v1/models")
        request = {"model": "bench", "max_tokens": args.tokens, "temperature": 0, "stream": True}

        def once(jpeg: bytes) -> Sample:
            payload = {**request, "messages": openai_messages(jpeg)}
            begun = time.perf_counter()
            with httpx.stream(
                "POST", f"{base}/v1/chat/completions", json=payload, timeout=None
            ) as response:
                response.raise_for_status()
                return timed(begun, openai_events(sse(response)))

        yield once


@contextlib.contextmanager
def limner_serve(
    folder: Path, args: argparse.Namespace, settings: dict[str, str] | None = None
) -> Iterator[Once]:
    port = free_port()
    store = args.work / f"limner-models-{port}"
    env = {**os.environ, "LIMNER_MODELS": str(store), "LIMNER_HOST": f"127.0.0.1:{port}"}
    env.update(settings or {})
    cores = sorted(os.sched_getaffinity(0))
    # limner uses one thread per core it may run on; fewer threads means fewer cores.
    pin = cores[: args.threads] if args.threads < len(cores) else None
    serve = [sys.executable, "-m", "limner", "serve"]
    with started(serve, env, args.work / f"limner-{port}.log", pin) as process:
        base = f"http://127.0.0.1:{port}"
        wait_ready(process, f"{base}/api/version")
        stored = time.perf_counter()
        create = [sys.executable, "-m", "limner", "create", MODEL_NAME, "--from", str(folder)]
        subprocess.run(create, env=env, check=True, capture_output=True)
        os.sync()  # the store's copy is on disk before anything is timed
        print(f"limner create --from: stored in {time.perf_counter() - stored:.1f} s", flush=True)
        options = {"num_ctx": args.ctx, "num_predict": args.tokens, "temperature": 0}
        request = {"model": MODEL_NAME, "options": options, "keep_alive": -1, "stream": True}

        def once(jpeg: bytes) -> Sample:
            image = base64.b64encode(jpeg).decode()
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": QUESTION, "images": [image]},
            ]
            payload = {**request, "messages": messages}
            begun = time.perf_counter()
            with httpx.stream("POST", f"{base}/api/chat", json=payload, timeout=None) as response:
                response.raise_for_status()
                return timed(begun, ndjson_events(response))

        yield once


@contextlib.contextmanager
def plain_weights(enabled: bool) -> Iterator[None]:
    """Load without llama.cpp's repacked (extra) weight buffers, as limner's engine does where
    they crash; llama-cpp-python has no argument for it."""
    import llama_cpp.llama_cpp as c

    defaults = c.llama_model_default_params

    def plain() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    if enabled:
        c.llama_model_default_params = plain
    try:
        yield
    finally:
        c.llama_model_default_params = defaults


@contextlib.contextmanager
def started(
    command: list[str], env: dict[str, str], log: Path, cores: list[int] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A server in its own process group, ended with everything it started (limner's runner
    included) on the way out, whether the benchmark finished, failed or was interrupted."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
        )
        try:
            yield process
        except BaseException:
            print(f"--- last lines of {log} ---\n{tail(log)}", file=sys.stderr)
            raise
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)
            return


def wait_ready(process: subprocess.Popen[bytes], url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s")


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the report --------------------------------------------------------------------------


def median(samples: list[Sample], field: str) -> float:
    values = [getattr(s, field) for s in samples if getattr(s, field) is not None]
    return statistics.median(values) if values else float("nan")


def report(
    results: dict[str, list[Sample]], args: argparse.Namespace, folder: Path, out: IO[str]
) -> None:
    raw = results[RAW]
    raw_ttft, raw_rate = median(raw, "ttft"), median(raw, "rate")
    print(
        f"\n{args.layers} of {FULL_LAYERS} layers, n_ctx {args.ctx}, {args.tokens} tokens, "
        f"{args.threads} threads, median of {args.runs} after a warm-up",
        file=out,
    )
    print(
        f"{'path':<22} {'prompt':>6} {'TTFT s':>7} {'decode tok/s':>13} {'server tok/s':>13} "
        f"{'TTFT / raw':>11} {'decode / raw':>13}",
        file=out,
    )
    for label, samples in results.items():
        ttft, rate = median(samples, "ttft"), median(samples, "rate")
        row = (
            f"{label:<22} {median(samples, 'prompt_tokens'):6.0f} {ttft:7.2f} {rate:13.2f} "
            f"{median(samples, 'server_rate'):13.2f} {ttft / raw_ttft:11.3f} {rate / raw_rate:13.3f}"
        )
        print(row.replace("nan", "  -"), file=out)
    if LIMNER in results and SERVER_LABEL in results:
        limner, server = results[LIMNER], results[SERVER_LABEL]
        print(
            f"limner / llama_cpp.server: TTFT {median(limner, 'ttft') / median(server, 'ttft'):.3f}, "
            f"decode {median(limner, 'rate') / median(server, 'rate'):.3f}",
            file=out,
        )
    print(
        "prompt: tokens prefilled per request (limner keeps the KV cache of the text before the "
        "picture from the last request; llama_cpp.server does not report it)",
        file=out,
    )
    short = [
        f"{label} run {n}"
        for label, samples in results.items()
        for n, sample in enumerate(samples, 1)
        if sample.tokens < args.tokens
    ]
    if short:
        print(f"fewer than {args.tokens} tokens (EOS): {', '.join(short)}", file=out)
    bound(results, args, folder, out)


def bound(
    results: dict[str, list[Sample]], args: argparse.Namespace, folder: Path, out: IO[str]
) -> None:
    """The decode rate memory bandwidth allows, next to the measured ones."""
    positions = int(median(results[RAW], "prompt_tokens")) + args.tokens // 2
    per_token = bytes_per_token(folder / "model.gguf", positions)
    bandwidth = args.bandwidth
    limit = bandwidth / per_token.total
    print(
        f"\nmemory bandwidth (1 GiB numpy copy, one thread, read + written, best of 3): "
        f"{bandwidth / 1e9:.1f} GB/s",
        file=out,
    )
    print(
        f"bytes read per token: {per_token.total / 1e9:.2f} GB = weights "
        f"{per_token.weights / 1e9:.2f} (token_embd: one row) + KV cache at {positions} "
        f"positions {per_token.kv / 1e9:.3f}",
        file=out,
    )
    rates = ", ".join(
        f"{label} {median(s, 'rate'):.2f} ({median(s, 'rate') / limit:.0%})"
        for label, s in results.items()
    )
    print(f"bound {limit:.2f} tok/s; measured: {rates}", file=out)
    if args.layers < FULL_LAYERS:
        more = FULL_LAYERS - args.layers
        full = per_token.total + more * per_token.per_layer + per_token.kv * more // args.layers
        rate = median(results[RAW], "rate")
        print(
            f"at {FULL_LAYERS} layers: {full / 1e9:.2f} GB/token, bound {bandwidth / full:.2f} "
            f"tok/s; raw llama-cpp-python ~{rate * per_token.total / full:.2f} tok/s if its "
            f"time per token grows with bytes read (extrapolated from {args.layers}, not "
            "measured; TTFT is not extrapolated)",
            file=out,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=FULL_LAYERS, help="text layers to build")
    parser.add_argument("--ctx", type=int, default=4096, help="n_ctx / num_ctx")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--runs", type=int, default=3, help="timed requests per path")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/limner-bench").expanduser())
    parser.add_argument("--skip-server", action="store_true", help="leave out llama_cpp.server")
    parser.add_argument(
        "--each-token", action="store_true",
        help="also time limner streaming every token alone (LIMNER_STREAM_INTERVAL=0)",
    )  # fmt: skip
    args = parser.parse_args()
    # A SIGTERM ends the benchmark as Ctrl+C does, so the servers are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import llama_cpp

    began = time.perf_counter()
    folder = build(args.cache, args.layers)
    pictures = [picture(seed) for seed in range(args.runs + 1)]
    print(
        f"llama-cpp-python {llama_cpp.__version__}, limner {version('limner')}, "
        f"{os.cpu_count()} CPUs, {args.threads} threads; picture 640x480 JPEG "
        f"({len(pictures[0]) // 1024} KiB, new pixels each request); model {folder}",
        flush=True,
    )
    # The three paths place the weights as limner's engine does: repacked for llama.cpp's
    # fast CPU kernels (without the AMX buffer where that crashes), or plain if that fails.
    from limner.engines.llava_llamacpp import _may_repack

    args.repack = _may_repack()
    print(
        f"weights: {'repacked' if args.repack else 'plain (llama.cpp repacking off)'}"
        " in all three paths",
        flush=True,
    )
    args.bandwidth = copy_bandwidth()
    with contextlib.ExitStack() as stack:
        args.work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="limner-bench-")))
        # limner first: its store's copy of the model is written before anything is timed.
        limner = stack.enter_context(limner_serve(folder, args))
        if args.each_token:
            each = limner_serve(folder, args, {"LIMNER_STREAM_INTERVAL": "0"})
            limner_each = stack.enter_context(each)
        paths = {RAW: stack.enter_context(raw_llama_cpp(folder, args))}
        if not args.skip_server:
            paths[SERVER_LABEL] = stack.enter_context(llama_cpp_server(folder, args))
        paths[LIMNER] = limner
        if args.each_token:
            paths[LIMNER_EACH] = limner_each
        results = measure(paths, pictures)
    report(results, args, folder, sys.stdout)
    print(f"\nwall time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
