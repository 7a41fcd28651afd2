"""Tool calls read out of a model's answer, as Ollama reads them.

A model that can call tools writes a call as JSON in its answer, after a tag its template
shows it (`<tool_call>` for Qwen and Hermes, `[TOOL_CALLS]` for Mistral) or, for templates
without one (Llama 3.1), as a bare JSON object at the start of the answer. `tag_of` finds
the tag by rendering a probe call with the model's own template; `with_tool_calls` turns a
chat's pieces into text and `Called` steps: text that might still become a call is held back
until it is clear, and JSON that is not a call is given back as text, never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from limner.engines import Called, ChatStep, Done, Message, Piece, ToolCall

BARE = "{"  # no tag: a call is JSON at the start of the answer
PROBE = "limner_probe_function"


def tag_of(render: Callable[[list[Message]], str]) -> str:
    """The text a template writes before a call's JSON (BARE when it writes none), found by
    rendering one question with and without an answer that calls PROBE."""
    question = [Message("user", "hello")]
    try:
        prompt = render(question)
        called = render([*question, Message("assistant", tool_calls=[ToolCall(PROBE, {})])])
    except Exception:  # a template that cannot render calls has no tag to find
        return BARE
    shared = _shared_prefix(prompt, called)
    at = called.find(PROBE, shared)
    opening = called.rfind("{", shared, at)
    if at < 0 or opening < 0:
        return BARE
    tag = called[shared:opening].strip().rstrip("[").strip()
    return tag or BARE


def with_tool_calls(steps: Iterator[ChatStep], tag: str) -> Iterator[ChatStep]:
    """The chat's steps with its calls read out of the text."""
    reader = CallReader(tag)
    for step in steps:
        if isinstance(step, Piece):
            yield from reader.feed(step.text)
        elif isinstance(step, Done):
            yield from reader.close()
            yield step
        else:
            yield step


class CallReader:
    """Reads calls out of text that arrives piece by piece."""

    def __init__(self, tag: str) -> None:
        self.tag = tag or BARE
        self.bare = self.tag == BARE
        self.closing = f"</{self.tag[1:]}" if self.tag[:1] == "<" and self.tag[-1:] == ">" else ""
        self.held = ""  # text not yet given out: a possible tag, or a call being read
        self.in_call = False
        self.after_call = False  # a call was just read: its closing tag may follow
        self.between = False  # since the last call only whitespace came, which is dropped
        self.texted = False  # some text given out: a bare call can no longer start

    def feed(self, text: str) -> list[ChatStep]:
        self.held += text
        return self._drain(final=False)

    def close(self) -> list[ChatStep]:
        return self._drain(final=True)

    def _drain(self, final: bool) -> list[ChatStep]:
        out: list[ChatStep] = []
        while self.held:
            if self.in_call:
                if not self._read_call(out, final):
                    break
            elif not self._find_call(out, final):
                break
        return out

    def _find_call(self, out: list[ChatStep], final: bool) -> bool:
        """Give out the text before a call; True when a call starts in what is held."""
        if self.after_call and not self._skip_closing(final):
            return False
        if self.between:
            self.held = self.held.lstrip()
            if not self.held:
                return False
        if self.bare:
            stripped = self.held.lstrip()
            if not stripped and not final:
                return False
            if stripped[:1] in ("{", "[") and not self.texted:
                self.held, self.in_call = stripped, True
                return True
            self._text(out, self.held)
            self.held = ""
            return False
        at = self.held.find(self.tag)
        if at >= 0:
            self._text(out, self.held[:at])
            self.held, self.in_call = self.held[at + len(self.tag) :], True
            return True
        keep = 0 if final else _partial_tag(self.held, self.tag)
        self._text(out, self.held[: len(self.held) - keep])
        self.held = self.held[len(self.held) - keep :]
        return False

    def _read_call(self, out: list[ChatStep], final: bool) -> bool:
        """Read one call's JSON; True when it was read (or given back as text)."""
        body = self.held.lstrip()
        try:
            value, end = json.JSONDecoder().raw_decode(body)
        except ValueError:
            if not final:
                return False  # not whole yet
            value, end = None, len(body)
        calls = _calls(value)
        self.in_call = False
        if not calls:  # not a call after all: the text goes out as the model wrote it
            self._text(out, ("" if self.bare else self.tag) + self.held)
            self.held = ""
            return False
        out.append(Called(calls))
        self.held, self.after_call, self.between = body[end:], True, True
        return True

    def _skip_closing(self, final: bool) -> bool:
        """Drop the whitespace and closing tag after a call; False while they may be incomplete."""
        rest = self.held.lstrip()
        if not final and (not rest or (self.closing.startswith(rest) and rest != self.closing)):
            return False
        if self.closing and rest.startswith(self.closing):
            rest = rest[len(self.closing) :]
        self.held, self.after_call = rest, False
        return True

    def _text(self, out: list[ChatStep], text: str) -> None:
        if text:
            out.append(Piece(text))
            self.texted = self.texted or bool(text.strip())
            self.between = False


def _partial_tag(text: str, tag: str) -> int:
    """How many of `text`'s last characters could begin `tag`."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def _calls(value: Any) -> list[ToolCall]:
    """The calls in a decoded answer: one `{"name", "arguments"|"parameters"}` object or a
    list of them (OpenAI's `{"function": {...}}` wrapping too); [] when it is not calls."""
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("function"), dict):
            item = item["function"]
        if not isinstance(item, dict):
            return []
        name = item.get("name")
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return []
        if not isinstance(name, str) or not name or not isinstance(arguments, dict):
            return []
        calls.append(ToolCall(name, arguments))
    return calls


def _shared_prefix(first: str, second: str) -> int:
    size = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        size += 1
    return size
