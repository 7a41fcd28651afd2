"""Chat prompts from a model's template: Ollama's Go templates and Hugging Face Jinja templates.

A model's template comes from one of three places, most specific first: a template layer
(Ollama's Go text/template, as in `ollama.com/library/bakllava`, or a Jinja template written
by limner), the GGUF's `tokenizer.chat_template`, or LLaVA-1.5's own `USER: … ASSISTANT:`.
Pictures become `marker` strings where the engine's tokenizer expects them.

Go templates are rendered the way Ollama renders templates without `.Messages`: one pass per
user turn with `.System`, `.Prompt` and `.Response` (the answer that followed), and the last
pass cut where `.Response` would go. Only that legacy subset (fields, `if`/`else`/`end`, trim
markers) is understood; anything richer falls back to the next template source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from limner.errors import InvalidRequest

LLAVA_15 = "{{ .System }}\nUSER: {{ .Prompt }}\nASSISTANT:"
GO_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)
RESPONSE = re.compile(r"\{\{-?\s*\.Response\s*-?\}\}")
GO_FIELDS = {".System", ".Prompt", ".Response"}


@dataclass
class Turn:
    """A message as a template sees it: `pictures` is how many it carries."""

    role: str
    content: str
    pictures: int = 0


def is_go_template(text: str) -> bool:
    """Go templates read fields as `{{ .Name }}`; Jinja templates never start an action with a dot."""
    return any(action.startswith((".", "if .", "range .")) for _, action, _ in _actions(text))


def go_supported(text: str) -> bool:
    """Whether `text` uses only the legacy subset this module renders."""
    for _, action, _ in _actions(text):
        words = action.split()
        if action in GO_FIELDS or action in ("else", "end"):
            continue
        if len(words) == 2 and words[0] == "if" and words[1] in GO_FIELDS:
            continue
        return False
    return True


def render_go(template: str, turns: list[Turn], marker: str) -> str:
    """The prompt for `turns` with a legacy Ollama template (pictures prepended to their turn)."""
    if not RESPONSE.search(template):  # as Ollama does: the answer follows the template
        template += "{{ .Response }}"
    system = "\n\n".join(t.content for t in turns if t.role == "system")
    prompt = ""
    pending: str | None = None  # a user prompt waiting for the answer that follows it
    for turn in turns:
        if turn.role == "user":
            if pending is not None:
                prompt += _render_go(template, system, pending, "")
                system = ""
            pending = marker * turn.pictures + turn.content
        elif turn.role == "assistant":
            prompt += _render_go(template, system, pending or "", turn.content)
            system, pending = "", None
    # The last pass stops where the answer would start, as Ollama cuts at .Response.
    cut = template[: RESPONSE.search(template).start()]  # type: ignore[union-attr]
    return prompt + _render_go(cut, system, pending or "", "")


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


def _render_go(template: str, system: str, prompt: str, response: str) -> str:
    values = {".System": system, ".Prompt": prompt, ".Response": response}
    out: list[str] = []
    keep = [True]  # a stack of "is this branch rendered" for if/else/end
    position = 0
    for match in GO_ACTION.finditer(template):
        text = template[position : match.start()]
        if match.group(1):  # {{- trims whitespace before the action
            text = text.rstrip()
        if all(keep):
            out.append(text)
        position = match.end()
        action = match.group(2)
        if action in values and all(keep):
            out.append(values[action])
        elif action.startswith("if "):
            keep.append(bool(values.get(action.split()[1], "")))
        elif action == "else":
            keep[-1] = not keep[-1]
        elif action == "end" and len(keep) > 1:
            keep.pop()
        if match.group(3):  # -}} trims whitespace after the action
            rest = template[position:]
            position += len(rest) - len(rest.lstrip())
    if all(keep):
        out.append(template[position:])
    return "".join(out)


def _actions(text: str) -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2), m.group(3)) for m in GO_ACTION.finditer(text)]


def _raise(message: str) -> None:
    raise InvalidRequest(f"template error: {message}")
