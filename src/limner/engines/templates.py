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

import re
from typing import Any

from limner.engines.go_template import GoTemplateError, Turn, parse, render
from limner.errors import InvalidRequest

__all__ = ["LLAVA_15", "Turn", "go_problem", "is_go_template", "render_go", "render_jinja"]

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


def render_go(template: str, turns: list[Turn], marker: str) -> str:
    """The prompt for `turns` with an Ollama template (pictures as markers before the text)."""
    try:
        return render(template, turns, marker)
    except GoTemplateError as error:  # a template is user data: its errors are the user's
        raise InvalidRequest(f"template error: {error}") from error


def render_jinja(
    template: str, turns: list[Turn], image_token: str, marker: str, bos: str, eos: str
) -> str:
    """The prompt for `turns` with a Hugging Face chat template (structured content, pictures
    first as llava-hf templates expect), `image_token` replaced by the engine's marker."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # transformers' `{% generation %}` blocks only mark training targets; rendering ignores them.
    source = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", template)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    messages: list[dict[str, Any]] = [
        {
            "role": turn.role,
            "content": [{"type": "image"}] * turn.pictures
            + [{"type": "text", "text": turn.content}],
        }
        for turn in turns
    ]
    try:
        text = env.from_string(source).render(
            messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos
        )
    except Exception as error:  # a template is user data: its errors are the user's to fix
        raise InvalidRequest(f"template error: {error}") from error
    return text.replace(image_token, marker)


def _raise(message: str) -> None:
    raise InvalidRequest(f"template error: {message}")
