"""Chat prompts from a model's template: Ollama's Go templates and Hugging Face Jinja templates.

A model's template comes from one of three places, most specific first: a template layer
(Ollama's Go text/template, as in `ollama.com/library/bakllava`, or a Jinja template written
by limner), the GGUF's `tokenizer.chat_template`, or LLaVA-1.5's own `USER: … ASSISTANT:`.
Pictures become `marker` strings where the engine's tokenizer expects them.

Go templates are rendered by `go_template` as Ollama renders them (`.Messages` templates in
one pass, legacy `.System`/`.Prompt`/`.Response` ones per turn); one that uses what it cannot
render falls back to the next source, and is an error if none is left.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from limner.engines.go_template import GoTemplateError, Turn, parse, render
from limner.errors import InvalidRequest

if TYPE_CHECKING:
    from limner.engines import Tool, ToolCall

__all__ = [
    "LLAVA_15", "Turn", "go_problem", "is_go_template", "jinja_message", "render_go",
    "render_jinja",
]  # fmt: skip

LLAVA_15 = "{{ .System }}\nUSER: {{ .Prompt }}\nASSISTANT:"
GO_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
GO_READS = re.compile(r"(?:^|[\s(])\.(?:[A-Za-z]|$|\s)|\$")


def is_go_template(text: str) -> bool:
    """Go templates read fields as `.Name` and variables as `$x`; Jinja templates do neither."""
    return any(GO_READS.search(m.group(2)) for m in GO_ACTION.finditer(text))


def go_problem(text: str) -> str | None:
    """Why `text` cannot be rendered as a Go template, or None when it can."""
    try:
        parse(text)
    except GoTemplateError as error:
        return str(error)
    return None


def render_go(template: str, turns: list[Turn], marker: str, tools: Sequence[Tool] = ()) -> str:
    """The prompt for `turns` with an Ollama template (pictures as markers before the text)."""
    try:
        return render(template, turns, marker, tools)
    except GoTemplateError as error:  # a template is user data: its errors are the user's
        raise InvalidRequest(f"template error: {error}") from error


def render_jinja(
    template: str,
    turns: list[Turn],
    image_token: str,
    marker: str,
    bos: str,
    eos: str,
    tools: Sequence[Tool] = (),
    structured: bool = True,
) -> str:
    """The prompt for `turns` with a Hugging Face chat template, `image_token` replaced by
    the engine's marker. A model that sees gets structured content (pictures first, as
    llava-hf templates expect); a text model's template reads plain strings."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # transformers' `{% generation %}` blocks only mark training targets; rendering ignores them.
    source = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", template)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now  # Mistral's templates date their system turn
    env.filters["tojson"] = _tojson
    messages = [
        jinja_message(turn.role, [{"type": "image"}] * turn.pictures
                      + [{"type": "text", "text": turn.content}] if structured else turn.content,
                      turn.tool_calls, turn.tool_name)
        for turn in turns
    ]  # fmt: skip
    extra = {"tools": [tool.wire() for tool in tools]} if tools else {}
    try:
        text = env.from_string(source).render(
            messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos, **extra
        )
    except Exception as error:  # a template is user data: its errors are the user's to fix
        raise InvalidRequest(f"template error: {error}") from error
    return text.replace(image_token, marker)


def jinja_message(
    role: str, content: Any, tool_calls: Sequence[ToolCall], tool_name: str
) -> dict[str, Any]:
    """A message as Hugging Face chat templates read it: calls in OpenAI's shape (arguments
    as an object, which the templates serialise themselves), a tool's answer named."""
    message: dict[str, Any] = {"role": role, "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in tool_calls
        ]
    if tool_name:
        message["name"] = tool_name
    return message


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, **options: Any
) -> str:
    """transformers' `tojson`: keys in their own order and no HTML escaping, unlike Jinja's."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **options)


def _strftime_now(format: str) -> str:
    """transformers' `strftime_now`: the local time now, formatted."""
    return time.strftime(format)


def _raise(message: str) -> None:
    raise InvalidRequest(f"template error: {message}")
