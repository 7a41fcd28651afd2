"""The cost of a JSON schema: per-token decode time constrained vs free, on both engines.

    .venv/bin/python bench/schema.py                  # tiny models + BakLLaVA size, 4 layers
    .venv/bin/python bench/schema.py --layers 32      # BakLLaVA size, every layer (~5 GB)

Each model answers the same question through limner's own engine, in this process, taking
turns: free decoding, then decoding held to SCHEMA (llguidance's token masks, on both
engines), --runs times each after a warm-up of both. The per-token time is
the engine's own eval_duration / eval_count (prefill excluded); the ratio constrained / free
is the schema's overhead. Sampling is at temperature 0.8 with a fixed seed per run, and
every request generates up to --tokens tokens.

Models: the tiny text model on transformers (tiny_families "text"), the tiny LLaVA's text model
on llama.cpp, and BakLLaVA's architecture with random weights on llama.cpp (bench/vlm.py
builds it: Mistral-7B widths in Q4_0, 32000 tokens, --layers of its 32 layers, since a
grammar's cost per token does not depend on depth while the model's does: fewer layers make
the ratio larger, not smaller).

This is a benchmark, not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from limner.engines import Done, LoadOptions, Message, Options

# What a person extracting fields from a picture asks for: keys, enums, an array, a number.
SCHEMA = {
    "type": "object",
    "properties": {
        "caption": {"type": "string"},
        "colours": {"type": "array", "items": {"enum": ["red", "green", "blue", "white"]}},
        "objects": {"type": "integer"},
        "outdoors": {"type": "boolean"},
    },
    "required": ["caption", "colours", "objects", "outdoors"],
}
QUESTION = "Describe the picture as JSON."


def per_token(engine: Any, format_: str, tokens: int, seed: int) -> float:
    """Milliseconds per generated token, from the engine's own Done."""
    options = Options(num_predict=tokens, seed=seed, format=format_)
    done = None
    for step in engine.chat([Message("user", QUESTION)], options, lambda: False):
        if isinstance(step, Done):
            done = step
    assert done is not None and done.eval_count > 1
    return done.eval_duration / done.eval_count / 1e6


def compare(name: str, engine: Any, args: argparse.Namespace) -> None:
    schema = json.dumps(SCHEMA)
    for format_ in ("", schema):  # warm-up: grammar compiled, caches filled
        per_token(engine, format_, args.tokens, seed=0)
    free, held = [], []
    for run in range(args.runs):
        free.append(per_token(engine, "", args.tokens, seed=run + 1))
        held.append(per_token(engine, schema, args.tokens, seed=run + 1))
    f, h = statistics.median(free), statistics.median(held)
    print(f"{name:44} free {f:8.2f} ms/token  schema {h:8.2f} ms/token  "
          f"schema/free {h / f:5.3f}", flush=True)  # fmt: skip


def models(args: argparse.Namespace, work: Path) -> list[tuple[str, Callable[[], Any]]]:
    from limner.tiny import write_tiny_llava_gguf
    from limner.tiny_families import write_tiny_family

    def tiny_transformers() -> Any:
        from limner.engines.transformers_chat import load

        return load(write_tiny_family("text", work / "text"), LoadOptions())

    def tiny_llamacpp() -> Any:
        from limner.engines.llava_llamacpp import load

        return load(write_tiny_llava_gguf(work / "llava-gguf"), LoadOptions(num_ctx=1024))

    def bakllava_size() -> Any:
        from vlm import build

        from limner.engines.llava_llamacpp import load

        return load(build(args.cache, args.layers), LoadOptions(num_ctx=1024))

    return [
        ("tiny text model, transformers + llguidance", tiny_transformers),
        ("tiny LLaVA, llama.cpp + llguidance", tiny_llamacpp),
        (f"BakLLaVA size ({args.layers} layers), llama.cpp + llguidance", bakllava_size),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=4, help="BakLLaVA-size text layers")
    parser.add_argument("--tokens", type=int, default=48, help="tokens generated per request")
    parser.add_argument("--runs", type=int, default=5, help="timed requests per mode")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/limner-bench").expanduser())
    parser.add_argument("--only", help="run only the models whose name holds this text")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="limner-schema-") as work:
        for name, load in models(args, Path(work)):
            if args.only and args.only not in name:
                continue
            engine = load()
            compare(name, engine, args)
            del engine


if __name__ == "__main__":
    main()
