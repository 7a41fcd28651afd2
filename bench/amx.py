"""Prefill with and without llama.cpp's AMX buffer: speed and logits side by side (issue 20, item 6).

    .venv/bin/python bench/amx.py                       # tiny LLaVA, then BakLLaVA size (32 layers)
    .venv/bin/python bench/amx.py --layers 8 --runs 3   # a quicker look

llama.cpp's AMX int8 kernels crash in the llama.cpp that llama-cpp-python 0.3.36 bundles
(#20824: GCC's -O3 drops the stores of the tile config), so limner takes the AMX buffer out of
llama.cpp's list before loading (engines/llava_llamacpp.py). A build that avoids the crash
(`CMAKE_ARGS="-DCMAKE_CXX_FLAGS=-fno-dse"`, or PR #26954's patch) is tried here. Each model (the
tiny LLaVA in Q4_0, and bench/vlm.py's random BakLLaVA-size Q4_0 model) is loaded by two
processes:
  without AMX   as limner loads it: repacked buffers, the AMX one taken out
  with AMX      llama.cpp's own list of buffers, AMX in it where the CPU and the build have it
Both prefill the same prompt in turns, --runs times after a warm-up, with logits for every
position. The report gives each one's median prefill time, and how far the AMX logits are from
the others: the largest difference against the logits' spread, and how often the top token
agrees. On a CPU without AMX both processes run the same kernels, and the report says so. If the
AMX process crashes, the report says that too.

This is a benchmark, not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from limner.engines.llava_llamacpp import AMX

WITHOUT, WITH = "without AMX", "with AMX"


def worker(mode: str, model: str, positions: int, logits_file: str) -> None:
    """Load `model` (dropping AMX or not), then prefill the prompt once per line of stdin and
    print its seconds; the first prefill's logits go to `logits_file`."""
    import time

    import llama_cpp

    if mode == WITHOUT:
        from limner.engines.llava_llamacpp import _may_repack

        _may_repack()
    llm = llama_cpp.Llama(
        model_path=model, n_ctx=positions + 16, n_batch=512, logits_all=True, verbose=False,
        n_threads=len(os.sched_getaffinity(0)), n_threads_batch=len(os.sched_getaffinity(0)),
    )  # fmt: skip
    # Plain word ids away from the control tokens at the start of the vocabulary.
    prompt = [16 + i % (llm.n_vocab() - 32) for i in range(positions)]
    print(json.dumps({"amx": AMX in llama_cpp.llama_print_system_info().decode()}), flush=True)
    for number, _ in enumerate(sys.stdin):
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt)
        print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)
        if number == 0:
            np.save(logits_file, np.asarray(llm.scores[:positions], dtype=np.float32))


class Loaded:
    """One worker process with its model loaded."""

    def __init__(self, mode: str, model: Path, positions: int, logits: Path) -> None:
        self.logits = logits
        command = [sys.executable, __file__, "--worker", mode, str(model), str(positions)]
        self.process = subprocess.Popen(
            [*command, str(logits)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.amx = bool(self.answer()["amx"])

    def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the process ended (exit status {self.process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def prefill(self) -> float:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return float(self.answer()["seconds"])

    def close(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        elif self.process.stdin:
            self.process.stdin.close()
        self.process.wait(120)


def compare(label: str, model: Path, positions: int, runs: int, work: Path) -> None:
    print(f"\n{label}: {positions} positions, median of {runs} after a warm-up", flush=True)
    loaded: dict[str, Loaded] = {}
    times: dict[str, list[float]] = {WITHOUT: [], WITH: []}
    try:
        for mode in (WITHOUT, WITH):
            loaded[mode] = Loaded(mode, model, positions, work / f"{mode}.npy")
            loaded[mode].prefill()  # warm-up; saves the logits
        for round_ in range(runs):
            for mode in (WITHOUT, WITH) if round_ % 2 == 0 else (WITH, WITHOUT):
                times[mode].append(loaded[mode].prefill())
    except RuntimeError as error:  # a process that crashed: the bug this measures
        for process in loaded.values():
            process.close(kill=True)
        print(f"  {mode} failed: {error}")
        return
    for process in loaded.values():
        process.close()
    if not loaded[WITH].amx:
        print("  this CPU or build has no AMX: both processes run the same kernels")
    for mode, seconds in times.items():
        median = statistics.median(seconds)
        print(f"  {mode:12} {median:8.3f} s  {positions / median:8.1f} tokens/s")
    ratio = statistics.median(times[WITH]) / statistics.median(times[WITHOUT])
    print(f"  with / without AMX: {ratio:.3f} of the time")
    plain, amx = (np.load(loaded[mode].logits) for mode in (WITHOUT, WITH))
    difference = float(np.abs(amx - plain).max())
    agree = float((amx.argmax(axis=1) == plain.argmax(axis=1)).mean())
    print(f"  logits: largest difference {difference:.4g} (their spread: std {plain.std():.4g}); "
          f"top token the same at {agree:.1%} of positions")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=32, help="layers of the BakLLaVA-size model")
    parser.add_argument("--positions", type=int, default=600, help="prompt tokens to prefill")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/limner-bench").expanduser())
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, model, positions, logits = args.worker
        worker(mode, model, int(positions), logits)
        return
    import llama_cpp

    sys.path.insert(0, str(Path(__file__).parent))
    from vlm import build

    from limner.tiny import write_tiny_llava_gguf

    print(f"llama-cpp-python {llama_cpp.__version__} at {Path(llama_cpp.__file__).parent}")
    with tempfile.TemporaryDirectory(prefix="limner-bench-amx-") as work:
        tiny = write_tiny_llava_gguf(Path(work) / "tiny", quantize="q4_0") / "model.gguf"
        compare("tiny LLaVA, Q4_0", tiny, min(args.positions, 256), args.runs, Path(work))
        big = build(args.cache, args.layers) / "model.gguf"
        label = f"random BakLLaVA size, Q4_0, {args.layers} layers"
        compare(label, big, args.positions, args.runs, Path(work))


if __name__ == "__main__":
    main()
