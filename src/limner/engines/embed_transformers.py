"""Text embeddings on transformers: a Hugging Face encoder in sentence-transformers' layout.

The folder holds the encoder (`config.json`, safetensors weights, the tokenizer) and, as
sentence-transformers writes it, `1_Pooling/config.json` saying how token states become one
vector (the mean over the input's tokens, or the [CLS] state); without it the mean is taken,
as sentence-transformers does. Vectors are returned as pooled, not normalised.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as transformers_logging

from limner.engines import Embedded, LoadOptions, embed_each
from limner.errors import InvalidRequest


def load(folder: Path, options: LoadOptions) -> EmbedTransformers:
    return EmbedTransformers(Path(folder), options.num_ctx)


class EmbedTransformers:
    """A loaded embedding encoder."""

    def __init__(self, folder: Path, num_ctx: int) -> None:
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self.on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.on_gpu else "cpu")
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        trained = int(self.model.config.max_position_embeddings)
        self.window = min(num_ctx, trained) if num_ctx else trained
        self.pooling = _pooling(folder)

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def embed(
        self, inputs: list[str], truncate: bool, num_ctx: int, cancelled: Callable[[], bool]
    ) -> Iterator[Embedded]:
        window = min(num_ctx, self.window) if num_ctx else self.window

        def one(text: str) -> tuple[list[float], int]:
            encoded = self.tokenizer(
                text, truncation=truncate, max_length=window, return_tensors="pt"
            )
            size = int(encoded["input_ids"].shape[1])
            if size > window:
                raise InvalidRequest("the input length exceeds the context length")
            with torch.inference_mode():
                states = self.model(**encoded.to(self.device)).last_hidden_state[0]
            pooled = states[0] if self.pooling == "cls" else states.mean(dim=0)
            return pooled.float().cpu().tolist(), size

        yield embed_each(inputs, cancelled, one)


def _pooling(folder: Path) -> str:
    """ "cls" or "mean", from sentence-transformers' pooling module when there is one."""
    path = folder / "1_Pooling" / "config.json"
    if not path.is_file():
        return "mean"
    settings = json.loads(path.read_text())
    if settings.get("pooling_mode_cls_token"):
        return "cls"
    if settings.get("pooling_mode_mean_tokens", True):
        return "mean"
    raise InvalidRequest("the model pools in a way limner does not run (only mean and CLS)")
