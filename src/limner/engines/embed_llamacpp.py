"""Text embeddings on llama.cpp: a GGUF embedding model (BERT, nomic-bert and the like).

The folder holds `model.gguf`, whose metadata names how the model pools its token states
(`<arch>.pooling_type`: mean, CLS, last). llama.cpp runs it in embedding mode, one input at
a time in one batch (an encoder sees the whole input at once), and returns the pooled
vector as the model computes it; normalising is the server's, where the API asks for it:

    engine = load(Path("minilm"), LoadOptions())
    [embedded] = engine.embed(["a red square"], truncate=True, num_ctx=0, cancelled=lambda: False)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import llama_cpp

from limner.engines import Embedded, LoadOptions, embed_each
from limner.engines.llava_llamacpp import threads
from limner.errors import InvalidRequest

DEFAULT_CTX = 512  # BERT's window, when the model does not say


def load(folder: Path, options: LoadOptions) -> EmbedLlamaCpp:
    return EmbedLlamaCpp(Path(folder) / "model.gguf", options.num_ctx)


class EmbedLlamaCpp:
    """A loaded GGUF embedding model."""

    def __init__(self, model_path: Path, num_ctx: int) -> None:
        if not model_path.is_file():
            raise InvalidRequest("the model has no GGUF weights layer")
        trained = _trained_window(model_path)
        window = min(num_ctx, trained) if num_ctx else trained
        self.on_gpu = bool(llama_cpp.llama_supports_gpu_offload())
        # The batch holds one whole input: encoders do not decode in pieces.
        self.llama = llama_cpp.Llama(
            model_path=str(model_path),
            embedding=True,
            n_ctx=window,
            n_batch=window,
            n_ubatch=window,
            n_threads=threads(),
            n_threads_batch=threads(),
            n_gpu_layers=-1 if self.on_gpu else 0,
            verbose=False,
        )
        self.window = window
        self.width = self.llama.n_embd()
        self.weight_bytes = model_path.stat().st_size
        vocab = self.llama._model.vocab
        self.closing = {
            t
            for t in (llama_cpp.llama_vocab_eos(vocab), llama_cpp.llama_vocab_sep(vocab))
            if t >= 0
        }

    def memory_bytes(self) -> int:
        return self.weight_bytes + self.window * self.width * 4 * 8  # activations, roughly

    def embed(
        self, inputs: list[str], truncate: bool, num_ctx: int, cancelled: Callable[[], bool]
    ) -> Iterator[Embedded]:
        window = min(num_ctx, self.window) if num_ctx else self.window

        def one(text: str) -> tuple[list[float], int]:
            ids = self._tokens(text, window, truncate)
            return self._pooled(ids), len(ids)

        yield embed_each(inputs, cancelled, one)

    def _tokens(self, text: str, window: int, truncate: bool) -> list[int]:
        """The input's tokens with the model's own markers ([CLS] ... [SEP]), cut to fit."""
        ids = self.llama.tokenize(text.encode(), add_bos=True, special=False)
        if len(ids) <= window:
            return ids
        if not truncate:
            raise InvalidRequest("the input length exceeds the context length")
        if ids[-1] in self.closing:  # keep the closing marker the model was trained with
            return ids[: window - 1] + ids[-1:]
        return ids[:window]

    def _pooled(self, ids: list[int]) -> list[float]:
        llama = self.llama
        llama._batch.reset()  # type: ignore[no-untyped-call]
        llama._batch.add_sequence(ids, 0, True)
        llama._ctx.kv_cache_clear()  # type: ignore[no-untyped-call]
        llama._ctx.decode(llama._batch)
        pooled = llama_cpp.llama_get_embeddings_seq(llama._ctx.ctx, 0)
        if not pooled:
            raise InvalidRequest("this model does not pool its states into one vector")
        return [float(x) for x in pooled[: self.width]]


def _trained_window(model_path: Path) -> int:
    """The window the model was trained with, from its GGUF header."""
    from limner.store.gguf import gguf_info

    info = gguf_info(model_path)
    arch = info.get("general.architecture", "bert")
    return int(info.get(f"{arch}.context_length", DEFAULT_CTX))
