"""Answers held to a JSON schema, on every engine, with llguidance.

llguidance (the structured-generation library llama.cpp also ships) compiles a schema once
into a grammar and then computes, per token, the mask of tokens that may come next. Both
engines use it: measured with bench/schema.py on a 32000-token vocabulary it costs well under
a millisecond a token, where llama.cpp's own grammar sampler cost 6 ms. A schema it cannot
enforce is a 400 naming the problem, before any token is generated.
"""

from __future__ import annotations

from typing import Any

import llguidance
import llguidance.numpy
import numpy as np

from limner.errors import InvalidRequest


def compile_schema(tokenizer: llguidance.LLTokenizer, schema: str) -> str:
    """llguidance's grammar for `schema`, or a 400 saying what it cannot enforce."""
    # Compact JSON: a random or weak model would otherwise pad it with whitespace.
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        schema, defaults={"whitespace_flexible": False, "key_separator": ": ",
                          "item_separator": ", "},
    )  # fmt: skip
    failed, problems = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if failed:
        raise InvalidRequest(f"format: this JSON schema cannot be enforced: {problems[0]}")
    return grammar


class SchemaMatcher:
    """Which tokens may come next in one answer that must follow a compiled schema."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, grammar: str) -> None:
        self.matcher = llguidance.LLMatcher(tokenizer, grammar)
        self.vocab_size = tokenizer.vocab_size
        self._mask: Any = None

    def restrict(self, scores: Any) -> None:
        """Scores (a torch tensor) of tokens the schema does not allow next become -inf."""
        import llguidance.torch

        if self._mask is None:
            self._mask = llguidance.torch.allocate_token_bitmask(1, self.vocab_size)
        llguidance.torch.fill_next_token_bitmask(self.matcher, self._mask, 0)
        llguidance.torch.apply_token_bitmask_inplace(scores.unsqueeze(0), self._mask)

    def restrict_numpy(self, _ids: Any, scores: np.ndarray) -> np.ndarray:
        """The same for a numpy row, as llama-cpp-python's logits processors take it."""
        if self._mask is None:
            self._mask = np.full((1, (self.vocab_size + 31) // 32), -1, dtype=np.int32)
        llguidance.numpy.fill_next_token_bitmask(self.matcher, self._mask, 0)
        bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[: scores.shape[0]]
        scores[: bits.shape[0]][bits == 0] = -np.inf
        scores[bits.shape[0] :] = -np.inf
        return scores

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(
                f"the schema matcher refused a token it allowed: {self.matcher.get_error()}"
            )

    @property
    def done(self) -> bool:
        """The answer is a whole document of the schema and nothing may follow."""
        return bool(self.matcher.is_stopped())
