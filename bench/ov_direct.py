"""OpenVINO through optimum-intel, as FastSD CPU and optimum's own examples draw: one path of
bench/diffusion.py, run by a Python that has optimum-intel (it pins a transformers and a torch
with torchvision that limner's environment does not take, so it lives in a venv of its own):

    python3 -m venv ~/ovd && ~/ovd/bin/pip install "optimum-intel[openvino,diffusers]"
    .venv/bin/python bench/diffusion.py --ov-python ~/ovd/bin/python

    ~/ovd/bin/python bench/ov_direct.py FOLDER --size 512 --steps 4 --runs 1

The diffusers FOLDER is exported to OpenVINO once (kept beside it in FOLDER-openvino, before
any timing), then drawn with the same prompt, size, steps and seed as the other paths, with
OpenVINO's own defaults (precision hint included): a warm-up, then the median of --runs.
Prints one JSON line: seconds per picture, the OpenVINO version and its precision hint.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

PROMPT = "a lighthouse on a cliff at dusk, oil painting"  # bench/diffusion.py's


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()

    import openvino as ov
    import torch
    from optimum.intel import OVStableDiffusionPipeline

    exported = args.folder.with_name(args.folder.name + "-openvino")
    if not (exported / "model_index.json").is_file():
        pipe = OVStableDiffusionPipeline.from_pretrained(args.folder, export=True, compile=False)
        pipe.save_pretrained(exported)
    pipe = OVStableDiffusionPipeline.from_pretrained(exported, compile=False)
    pipe.reshape(batch_size=1, height=args.size, width=args.size, num_images_per_prompt=1)
    pipe.compile()
    pipe.set_progress_bar_config(disable=True)

    def once() -> float:
        started = time.perf_counter()
        generator = torch.Generator("cpu").manual_seed(1)
        pipe(PROMPT, width=args.size, height=args.size, num_inference_steps=args.steps,
             generator=generator)  # fmt: skip
        return time.perf_counter() - started

    once()  # warm-up
    seconds = statistics.median(once() for _ in range(args.runs))
    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    print(json.dumps({"seconds": seconds, "openvino": ov.get_version(), "precision": str(hint)}))


if __name__ == "__main__":
    main()
