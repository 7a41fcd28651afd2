"""OpenVINO through optimum-intel, as FastSD CPU and optimum's own examples draw: one path of
bench/diffusion.py, run by a Python that has optimum-intel (it pins a transformers and a torch
with torchvision that limner's environment does not take, so it lives in a venv of its own):

    python3 -m venv ~/ovd && ~/ovd/bin/pip install "optimum-intel[openvino,diffusers]"
    .venv/bin/python bench/diffusion.py --ov-python ~/ovd/bin/python

bench/diffusion.py starts `~/ovd/bin/python bench/ov_direct.py FOLDER --size 512 --steps 4`
and keeps it running, so this path takes its turns with the others. The diffusers FOLDER is
exported to OpenVINO once (kept beside it in FOLDER-openvino), then compiled with OpenVINO's
own defaults (precision hint included) before the first line, which names the OpenVINO version
and its precision. Each line read from stdin then draws one picture with the same prompt, size,
steps and seed as the other paths and answers one JSON line of perf_counter times: when the
call started, when each step ended, when the picture was done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

PROMPT = "a lighthouse on a cliff at dusk, oil painting"  # bench/diffusion.py's


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
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
    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    answer({"openvino": ov.get_version(), "precision": str(hint)})

    step_ends: list[float] = []

    def on_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
        step_ends.append(time.perf_counter())
        return tensors

    for _ in sys.stdin:
        step_ends.clear()
        started = time.perf_counter()
        pipe(PROMPT, width=args.size, height=args.size, num_inference_steps=args.steps,
             generator=torch.Generator("cpu").manual_seed(1), callback_on_step_end=on_step)  # fmt: skip
        answer({"started": started, "step_ends": step_ends, "ended": time.perf_counter()})


def answer(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
