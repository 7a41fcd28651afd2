"""Ollama's Modelfile, read as `ollama create -f` reads it, for `limner create NAME -f FILE`.

    FROM bakllava                  # a stored model, or a folder/file relative to the Modelfile
    PARAMETER temperature 0.2      # typed as the option is; `stop` may repeat
    PARAMETER stop "USER:"
    SYSTEM \"\"\"You describe pictures
    in one sentence.\"\"\"
    TEMPLATE "{{ .Prompt }}"
    ADAPTER ./style.safetensors    # a LoRA for a drawing model
    LICENSE \"\"\"MIT\"\"\"
    MESSAGE user What is this?
    MESSAGE assistant A red square.

Instructions are case-insensitive; a value is the rest of the line, a "quoted" string, or a
triple-quoted one over several lines; `#` starts a comment line. A line that is none of
these is a `ModelfileError` naming its number and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from limner.engines import LoadOptions, Options
from limner.errors import InvalidRequest

INSTRUCTIONS = ("FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE")
ROLES = ("system", "user", "assistant")


class ModelfileError(InvalidRequest):
    pass


@dataclass
class Modelfile:
    """What a Modelfile asks `/api/create` for."""

    base: str = ""  # FROM: a model name or a path
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    adapters: list[str] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)


def parse(text: str) -> Modelfile:
    """The Modelfile's instructions, or ModelfileError at the first line that is wrong."""
    found = Modelfile()
    for number, instruction, value in _commands(text):
        _apply(found, number, instruction, value)
    if not found.base:
        raise ModelfileError("the Modelfile has no FROM line; it must say which model to build on")
    return found


def _commands(text: str) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, value) for each instruction, multi-line values joined."""
    lines = text.splitlines()
    out = []
    at = 0
    while at < len(lines):
        number, line = at + 1, lines[at].strip()
        at += 1
        if not line or line.startswith("#"):
            continue
        word, rest = [*line.split(None, 1), ""][:2]
        instruction = word.upper()
        if instruction not in INSTRUCTIONS:
            raise ModelfileError(
                f"line {number}: unknown instruction {word!r}; expected one of "
                f"{', '.join(INSTRUCTIONS)}"
            )
        rest = rest.strip()
        if instruction in ("PARAMETER", "MESSAGE"):
            key, rest = [*rest.split(None, 1), ""][:2]
            value, at = _value(rest.strip(), lines, at, number)
            out.append((number, instruction, f"{key}\0{value}"))
        else:
            value, at = _value(rest, lines, at, number)
            out.append((number, instruction, value))
    return out


def _value(rest: str, lines: list[str], at: int, number: int) -> tuple[str, int]:
    """The value starting with `rest`: triple-quoted (maybe over later lines), quoted, or bare."""
    if rest.startswith('"""'):
        body = rest[3:]
        while '"""' not in body:
            if at >= len(lines):
                raise ModelfileError(f'line {number}: a """ value is never closed')
            body += "\n" + lines[at]
            at += 1
        value, _, after = body.partition('"""')
        if after.strip():
            raise ModelfileError(f'line {number}: text after the closing """: {after.strip()!r}')
        return value, at
    if rest.startswith('"'):
        try:
            value, end = json.JSONDecoder().raw_decode(rest)
        except ValueError:
            raise ModelfileError(f"line {number}: a quoted value is not closed") from None
        if rest[end:].strip() or not isinstance(value, str):
            raise ModelfileError(f"line {number}: text after the quoted value")
        return value, at
    return rest, at


def _apply(found: Modelfile, number: int, instruction: str, value: str) -> None:
    if instruction == "FROM":
        if not value:
            raise ModelfileError(f"line {number}: FROM needs a model name or a path")
        found.base = value
    elif instruction == "PARAMETER":
        name, _, raw = value.partition("\0")
        _parameter(found.parameters, number, name, raw)
    elif instruction == "MESSAGE":
        role, _, content = value.partition("\0")
        if role.lower() not in ROLES:
            raise ModelfileError(
                f"line {number}: MESSAGE role must be one of {', '.join(ROLES)}, not {role!r}"
            )
        found.messages.append({"role": role.lower(), "content": content})
    elif instruction == "TEMPLATE":
        found.template = value
    elif instruction == "SYSTEM":
        found.system = value
    elif instruction == "ADAPTER":
        found.adapters.append(value)
    else:
        found.license.append(value)


def _parameter(parameters: dict[str, Any], number: int, name: str, raw: str) -> None:
    """One PARAMETER, typed as the option is (`stop` collects every line's value)."""
    kinds: dict[str, type] = {
        f.name: f.type if isinstance(f.type, type) else _kind(f)
        for f in [*dataclasses.fields(Options), *dataclasses.fields(LoadOptions)]
    }
    if name not in kinds:
        raise ModelfileError(f"line {number}: unknown parameter {name!r}")
    kind = kinds[name]
    try:
        if kind is list:
            parameters.setdefault(name, []).append(raw)
        elif kind is dict:
            parameters[name] = json.loads(raw)
        elif kind is bool:
            parameters[name] = raw.lower() in ("true", "1")
        elif kind is int:
            parameters[name] = int(raw)
        elif kind is float:
            parameters[name] = float(raw)
        else:
            parameters[name] = raw
    except ValueError:
        raise ModelfileError(
            f"line {number}: parameter {name!r} must be {kind.__name__}, not {raw!r}"
        ) from None


def _kind(option: dataclasses.Field[Any]) -> type:
    """An option's type, from its default (the dataclasses' annotations are strings)."""
    if option.default is not dataclasses.MISSING:
        return type(option.default)
    factory = option.default_factory
    return type(factory()) if factory is not dataclasses.MISSING else str
