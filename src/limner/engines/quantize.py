"""llama.cpp's own quantizer (`llama_model_quantize`), run in a process of its own.

`python -m limner.engines.quantize SRC DEST FTYPE` writes DEST, a GGUF of the model in SRC
(f32, f16 or bf16) quantized to llama.cpp's file type number FTYPE (store.gguf.QUANTIZATIONS
names them): K-quants, legacy and i-quants alike, with llama.cpp's choices of which tensors
stay wider (Q4_K_M keeps half of attn_v and ffn_down at Q6_K, for instance) and its fallbacks
for rows that are not whole blocks. The store runs it as a child process, so the server never
loads llama.cpp and a crash here cannot take the server down.
"""

from __future__ import annotations

import os
import sys

import llama_cpp


def quantize(source: str, dest: str, ftype: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = len(os.sched_getaffinity(0))
    result = llama_cpp.llama_model_quantize(source.encode(), dest.encode(), params)
    if result != 0:
        raise RuntimeError(f"llama.cpp's quantizer failed (code {result})")


def main() -> None:
    source, dest, ftype = sys.argv[1:4]
    try:
        quantize(source, dest, int(ftype))
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
