"""Follow-up questions about the same picture: time to first token of turn 2 over turn 1.

    .venv/bin/python bench/context.py                      # BakLLaVA size, 32 layers (~10 minutes)
    .venv/bin/python bench/context.py --layers 2 --runs 1  # a quick look
    .venv/bin/python bench/context.py --family gemma3      # a tiny model of a family, limner only
    .venv/bin/python bench/context.py --family gemma3 --quantize q8_0   # the same on llama.cpp

A conversation of two turns goes, in one run on one machine, through two paths:
  raw llama-cpp-python   Llama + Llava15ChatHandler, create_chat_completion(stream=True): the
                         handler clears the KV cache and encodes every picture on every call
  limner serve           streamed /api/chat: the runner keeps the last conversation's cache
Turn 1 is [system, user: picture + question]; turn 2 adds the answer of turn 1 and a new
question about the same picture, as a chat client sends it. Each run uses a picture no path
has seen. Reported: TTFT of each turn at the client and turn 2 / turn 1 (target for limner:
at most 0.10), with the model of bench/vlm.py (BakLLaVA's architecture, random weights, Q4_0).

This is a benchmark, not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import vlm  # bench/ is a folder of scripts, not a package

FOLLOW_UP = "What colour is its top left corner?"
Turn = Callable[[list[dict[str, Any]]], tuple[float, str, int | None]]  # ttft, answer, evaluated


def conversation(jpeg: bytes, answer: str | None) -> list[dict[str, Any]]:
    """The chat in Ollama's shape; `answer` set: with the first answer and the follow-up."""
    image = base64.b64encode(jpeg).decode()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": vlm.SYSTEM},
        {"role": "user", "content": vlm.QUESTION, "images": [image]},
    ]
    if answer is not None:
        messages += [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": FOLLOW_UP},
        ]
    return messages


def as_openai(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        if not message.get("images"):
            out.append({"role": message["role"], "content": message["content"]})
            continue
        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image}"}}
            for image in message["images"]
        ]
        out.append(
            {
                "role": message["role"],
                "content": [*parts, {"type": "text", "text": message["content"]}],
            }
        )
    return out


@contextlib.contextmanager
def raw(folder: Path, args: argparse.Namespace) -> Iterator[Turn]:
    import llama_cpp.mtmd_cpp as mtmd
    from llama_cpp import Llama
    from llama_cpp._logger import llama_log_callback
    from llama_cpp.llama_chat_format import Llava15ChatHandler

    # libmtmd logs every picture at info level; quiet it as limner's engine does.
    for log_set in (mtmd.mtmd_log_set, mtmd.mtmd_helper_log_set):
        log_set(llama_log_callback, vlm.ctypes.c_void_p(0))

    with vlm.plain_weights(not args.repack):
        llm = Llama(
            model_path=str(folder / "model.gguf"),
            chat_handler=Llava15ChatHandler(clip_model_path=str(folder / "mmproj.gguf"), verbose=False),
            n_ctx=args.ctx, n_threads=args.threads, n_threads_batch=args.threads, verbose=False,
        )  # fmt: skip

    def turn(messages: list[dict[str, Any]]) -> tuple[float, str, int | None]:
        began = time.perf_counter()
        stream = llm.create_chat_completion(
            messages=as_openai(messages),  # type: ignore[arg-type]
            stream=True,
            max_tokens=args.tokens,
            temperature=0.0,
        )
        pieces = (chunk["choices"][0]["delta"].get("content") or "" for chunk in stream)  # type: ignore[index,union-attr]
        ttft, text = first_and_text(began, pieces)
        return ttft, text, None  # the handler evaluates the whole prompt every time

    try:
        yield turn
    finally:
        llm.close()


def first_and_text(began: float, pieces: Iterator[str]) -> tuple[float, str]:
    first, text = 0.0, []
    for piece in pieces:
        if piece and not first:
            first = time.perf_counter() - began
        text.append(piece)
    return first, "".join(text)


@contextlib.contextmanager
def limner(folder: Path, args: argparse.Namespace) -> Iterator[Turn]:
    port = vlm.free_port()
    env = {
        **os.environ,
        "LIMNER_MODELS": str(args.work / "models"),
        "LIMNER_HOST": f"127.0.0.1:{port}",
    }
    with vlm.started(
        [sys.executable, "-m", "limner", "serve"], env, args.work / "limner.log"
    ) as process:
        base = f"http://127.0.0.1:{port}"
        vlm.wait_ready(process, f"{base}/api/version")
        create = [sys.executable, "-m", "limner", "create", vlm.MODEL_NAME, "--from", str(folder)]
        if getattr(args, "quantize", None):  # a family's folder converted to llama.cpp's pair
            create += ["--quantize", args.quantize]
        vlm.subprocess.run(create, env=env, check=True, capture_output=True)
        options = {"num_ctx": args.ctx, "num_predict": args.tokens, "temperature": 0}

        def turn(messages: list[dict[str, Any]]) -> tuple[float, str, int | None]:
            body = {
                "model": vlm.MODEL_NAME,
                "messages": messages,
                "options": options,
                "keep_alive": -1,
            }
            began = time.perf_counter()
            evaluated: list[int] = []

            def pieces(response: httpx.Response) -> Iterator[str]:
                for text, extra in vlm.ndjson_events(response):
                    if extra.get("prompt_eval_count") is not None:
                        evaluated.append(extra["prompt_eval_count"])
                    yield text

            with httpx.stream("POST", f"{base}/api/chat", json=body, timeout=None) as response:
                response.raise_for_status()
                ttft, text = first_and_text(began, pieces(response))
            return ttft, text, evaluated[-1] if evaluated else None

        yield turn


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=vlm.FULL_LAYERS, help="text layers to build")
    parser.add_argument("--ctx", type=int, default=4096, help="n_ctx / num_ctx")
    parser.add_argument("--tokens", type=int, default=16, help="tokens generated per turn")
    parser.add_argument("--runs", type=int, default=2, help="conversations per path")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/limner-bench").expanduser())
    parser.add_argument("--family", help="a tiny model of this family (limner.tiny_families) "
                        "on transformers, through limner only")  # fmt: skip
    parser.add_argument("--quantize", metavar="TYPE", help="with --family: converted to GGUF "
                        "at TYPE (e.g. q8_0), so llama.cpp runs it")  # fmt: skip
    args = parser.parse_args()
    from limner.engines.llava_llamacpp import _may_repack

    began = time.perf_counter()
    args.repack = _may_repack()
    results: dict[str, list[tuple[float, float, int | None]]] = {"limner serve": []}
    with contextlib.ExitStack() as stack:
        args.work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="limner-bench-")))
        if args.family:  # raw llama-cpp-python has no handler for these families
            from limner.tiny_families import write_tiny_family

            folder = write_tiny_family(args.family, args.work / args.family)
            paths = {"limner serve": stack.enter_context(limner(folder, args))}
        else:
            folder = vlm.build(args.cache, args.layers)
            results["raw llama-cpp-python"] = []
            paths = {
                "limner serve": stack.enter_context(limner(folder, args)),
                "raw llama-cpp-python": stack.enter_context(raw(folder, args)),
            }
        for run in range(args.runs + 1):  # the first conversation warms each path up
            jpeg = vlm.picture(100 + run)
            for label, turn in paths.items():
                first, answer, opened = turn(conversation(jpeg, None))
                second, _, evaluated = turn(conversation(jpeg, answer))
                print(f"{label}: run {run}{' (warm-up)' if not run else ''}: turn 1 {first:6.2f} s, "
                      f"turn 2 {second:6.2f} s, ratio {second / first:.3f}"
                      + (f", prompt tokens evaluated: turn 1 {opened}, turn 2 {evaluated}"
                         if evaluated is not None else ""),
                      flush=True)  # fmt: skip
                if run:
                    results[label].append((first, second, evaluated))
    model = f"tiny {args.family}" if args.family else f"{args.layers} of {vlm.FULL_LAYERS} layers"
    print(f"\n{model}, n_ctx {args.ctx}, {args.tokens} tokens per turn, "
          f"{args.threads} threads, median of {args.runs}")  # fmt: skip
    print(f"{'path':22} {'TTFT turn 1':>12} {'TTFT turn 2':>12} {'turn 2 / turn 1':>16}")
    for label, rows in results.items():
        one = statistics.median(r[0] for r in rows)
        two = statistics.median(r[1] for r in rows)
        print(f"{label:22} {one:11.2f}s {two:11.2f}s {two / one:16.3f}")
    print(f"\nwall time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
