"""Go's text/template, as much of it as Ollama's model templates use, rendered as Ollama does.

Ollama keeps a model's prompt format as a Go template (the TEMPLATE of a Modelfile, the
template layer of a registry model). This module parses such a template into a tree (text,
actions, `if`/`else if`/`else`, `range` with its variables, `with`, `define`-less pipelines
with `|`, variables `$x := ...`, `{{-`/`-}}` trimming, comments) and executes it with Go's
rules: truth, `eq`/`ne`/`lt`/`le`/`gt`/`ge`, `and`/`or` returning an operand, `not`, `len`,
`slice`, `index`, `print`/`printf`, and Ollama's own `json` and `currentDate`. A template
that uses anything else is a `GoTemplateError` naming it, never a guess.

`render` follows Ollama's template.Execute: a template that reads `.Messages` runs once over
the collated messages (consecutive turns of one role merged, system messages also joined
into `.System`); any other runs once per user turn with `.System`, `.Prompt` and
`.Response`, the last run cut after `.Response`, so the prompt ends where the answer goes.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from limner.engines import Tool, ToolCall


class GoTemplateError(ValueError):
    """The template is not valid, or uses what this renderer does not do."""


# --- the tree ---------------------------------------------------------------------------------


@dataclass
class Pipe:
    commands: list[list[Any]]  # each command: its operands (tokens or nested Pipes)
    declare: list[str] = field(default_factory=list)  # `$x :=` / `$i, $m :=` (range)
    assign: bool = False  # `$x = ...` rather than `:=`


@dataclass
class Text:
    text: str


@dataclass
class Action:
    pipe: Pipe


@dataclass
class Branch:
    kind: str  # "if" | "range" | "with"
    pipe: Pipe
    body: list[Any]
    otherwise: list[Any] = field(default_factory=list)


@dataclass
class Control:
    kind: str  # "break" | "continue"


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(
    r'\s*(?:(?P<string>"(?:\\.|[^"\\])*"|`[^`]*`)|(?P<number>-?\d+(?:\.\d+)?)'
    r"|(?P<declare>:=)|(?P<assign>=)|(?P<punct>[|(),])"
    r"|(?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)|(?P<field>(?:\.[A-Za-z0-9_]+)+|\.)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*))"
)


def parse(source: str) -> list[Any]:
    """The template's tree, or GoTemplateError saying what is wrong or unsupported."""
    pieces = _pieces(source)
    nodes, stop = _parse_list(pieces, 0)
    if stop < len(pieces):
        raise GoTemplateError(f"unexpected {{{{ {pieces[stop][1]} }}}}")
    return nodes


def _pieces(source: str) -> list[tuple[str, str]]:
    """("text", text) and ("action", body) in order, with Go's whitespace trimming."""
    out: list[tuple[str, str]] = []
    position = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[position : match.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            out.append(("text", text))
        body = match.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):  # a comment prints nothing
            out.append(("action", body))
        trim_next = bool(match.group(3))
        position = match.end()
    rest = source[position:]
    if trim_next:
        rest = rest.lstrip(" \t\r\n")
    if "{{" in rest:
        raise GoTemplateError("an action is not closed with }}")
    if rest:
        out.append(("text", rest))
    return out


def _parse_list(pieces: list[tuple[str, str]], at: int) -> tuple[list[Any], int]:
    """Nodes up to an `else`/`end` (whose index is returned) or the end."""
    nodes: list[Any] = []
    while at < len(pieces):
        kind, body = pieces[at]
        if kind == "text":
            nodes.append(Text(body))
            at += 1
            continue
        word = body.split(None, 1)[0] if body else ""
        if word in ("else", "end"):
            return nodes, at
        if word in ("if", "range", "with"):
            node, at = _parse_branch(pieces, at, word, body[len(word) :])
            nodes.append(node)
            continue
        if word in ("break", "continue") and body == word:
            nodes.append(Control(word))
        elif word in ("define", "template", "block"):
            raise GoTemplateError(f"{{{{ {word} }}}} is not supported")
        else:
            nodes.append(Action(_parse_pipe(body)))
        at += 1
    return nodes, at


def _parse_branch(
    pieces: list[tuple[str, str]], at: int, kind: str, head: str
) -> tuple[Branch, int]:
    branch = Branch(kind, _parse_pipe(head, in_range=kind == "range"), [])
    branch.body, at = _parse_list(pieces, at + 1)
    if at >= len(pieces):
        raise GoTemplateError(f"{{{{ {kind} }}}} has no {{{{ end }}}}")
    body = pieces[at][1]
    if body == "end":
        return branch, at + 1
    rest = body[len("else") :].strip()
    if not rest:
        branch.otherwise, at = _parse_list(pieces, at + 1)
        if at >= len(pieces) or pieces[at][1] != "end":
            raise GoTemplateError(f"{{{{ {kind} }}}} ... {{{{ else }}}} has no {{{{ end }}}}")
        return branch, at + 1
    word = rest.split(None, 1)[0]
    if word not in ("if", "with"):
        raise GoTemplateError(f"unexpected {{{{ else {rest} }}}}")
    # `else if X` is an `if` inside the else, sharing this branch's `end`.
    inner, at = _parse_branch(pieces, at, word, rest[len(word) :])
    branch.otherwise = [inner]
    return branch, at


def _parse_pipe(text: str, in_range: bool = False) -> Pipe:
    tokens = _tokens(text)
    pipe = Pipe([])
    declared = _declaration(tokens, in_range)
    if declared is not None:
        pipe.declare, pipe.assign, tokens = declared
    commands: list[list[Any]] = [[]]
    stack: list[list[list[Any]]] = []
    for kind, value in tokens:
        if kind == "punct" and value == "(":
            stack.append(commands)
            commands = [[]]
        elif kind == "punct" and value == ")":
            if not stack:
                raise GoTemplateError(f"unbalanced ) in {text!r}")
            inner = Pipe(commands)
            commands = stack.pop()
            commands[-1].append(("pipe", inner))
        elif kind == "punct" and value == "|":
            commands.append([])
        elif kind == "punct":
            raise GoTemplateError(f"unexpected {value!r} in {text!r}")
        else:
            commands[-1].append((kind, value))
    if stack or not all(commands):
        raise GoTemplateError(f"cannot read the pipeline {text!r}")
    pipe.commands = commands
    return pipe


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise GoTemplateError(f"cannot read {text[position:]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


def _declaration(
    tokens: list[tuple[str, str]], in_range: bool
) -> tuple[list[str], bool, list[tuple[str, str]]] | None:
    """`$x :=`, `$x =` or (in range) `$i, $m :=` at the start of a pipeline."""
    names = []
    at = 0
    while at < len(tokens) and tokens[at][0] == "var":
        names.append(tokens[at][1])
        at += 1
        if in_range and at < len(tokens) and tokens[at] == ("punct", ","):
            at += 1
            continue
        break
    if names and at < len(tokens) and tokens[at][0] in ("declare", "assign"):
        return names, tokens[at][0] == "assign", tokens[at + 1 :]
    return None


# --- execution --------------------------------------------------------------------------------


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


NO_VALUE = "<no value>"


def execute(nodes: list[Any], data: Any) -> str:
    """The text `nodes` write for `data` (the template's dot)."""
    out: list[str] = []
    _run(nodes, data, [{"$": data}], out)
    return "".join(out)


def _run(nodes: list[Any], dot: Any, scopes: list[dict[str, Any]], out: list[str]) -> None:
    scopes.append({})
    try:
        for node in nodes:
            if isinstance(node, Text):
                out.append(node.text)
            elif isinstance(node, Action):
                value = _pipe(node.pipe, dot, scopes)
                if not node.pipe.declare:
                    out.append(_printed(value))
            elif isinstance(node, Control):
                raise _Break() if node.kind == "break" else _Continue()
            else:
                _branch(node, dot, scopes, out)
    finally:
        scopes.pop()


def _branch(node: Branch, dot: Any, scopes: list[dict[str, Any]], out: list[str]) -> None:
    if node.kind == "range":
        return _range(node, dot, scopes, out)
    value = _pipe(node.pipe, dot, scopes, declare_into=scopes[-1])
    if truth(value):
        _run(node.body, value if node.kind == "with" else dot, scopes, out)
    else:
        _run(node.otherwise, dot, scopes, out)
    return None


def _range(node: Branch, dot: Any, scopes: list[dict[str, Any]], out: list[str]) -> None:
    items = _pipe(Pipe(node.pipe.commands), dot, scopes)
    if isinstance(items, dict):
        pairs: list[tuple[Any, Any]] = sorted(items.items())
    elif isinstance(items, list | tuple | str):
        pairs = list(enumerate(items))
    elif isinstance(items, int) and not isinstance(items, bool):
        pairs = [(i, i) for i in range(items)]
    elif items is None:
        pairs = []
    else:
        raise GoTemplateError(f"range can't iterate over {type(items).__name__}")
    if not pairs:
        return _run(node.otherwise, dot, scopes, out)
    names = node.pipe.declare
    for key, item in pairs:
        scope = {names[-1]: item} if len(names) == 1 else {}
        if len(names) == 2:
            scope = {names[0]: key, names[1]: item}
        scopes.append(scope)
        try:
            _run(node.body, item, scopes, out)
        except _Continue:
            pass
        except _Break:
            break
        finally:
            scopes.pop()
    return None


def _pipe(
    pipe: Pipe, dot: Any, scopes: list[dict[str, Any]], declare_into: dict[str, Any] | None = None
) -> Any:
    value: Any = None
    for number, command in enumerate(pipe.commands):
        value = _command(command, dot, scopes, [value] if number else [])
    for name in pipe.declare:
        if pipe.assign:
            _set(scopes, name, value)
        else:
            (declare_into if declare_into is not None else scopes[-1])[name] = value
    return value


def _set(scopes: list[dict[str, Any]], name: str, value: Any) -> None:
    for scope in reversed(scopes):
        if name in scope:
            scope[name] = value
            return
    raise GoTemplateError(f"undefined variable {name}")


def _command(command: list[Any], dot: Any, scopes: list[dict[str, Any]], piped: list[Any]) -> Any:
    kind, value = command[0]
    if kind == "word" and value in FUNCTIONS:
        if value in ("and", "or"):  # they stop at the first operand that decides
            return _logic(value, command[1:], dot, scopes, piped)
        arguments = [_operand(t, dot, scopes) for t in command[1:]] + piped
        return FUNCTIONS[value](*arguments)
    if len(command) > 1 or piped:
        raise GoTemplateError(f"{value} is not a function")
    return _operand(command[0], dot, scopes)


def _logic(
    name: str, operands: list[Any], dot: Any, scopes: list[dict[str, Any]], piped: list[Any]
) -> Any:
    value: Any = None
    for operand in [*operands, *[("value", p) for p in piped]]:
        value = operand[1] if operand[0] == "value" else _operand(operand, dot, scopes)
        if truth(value) == (name == "or"):
            return value
    return value


def _operand(token: tuple[str, Any], dot: Any, scopes: list[dict[str, Any]]) -> Any:
    kind, value = token
    if kind == "pipe":
        return _pipe(value, dot, scopes)
    if kind == "string":
        return json.loads(value) if value.startswith('"') else value[1:-1]
    if kind == "number":
        return float(value) if "." in value else int(value)
    if kind == "field":
        return dot if value == "." else _fields(dot, value[1:].split("."))
    if kind == "var":
        name, *path = value.split(".")
        return _fields(_variable(scopes, name), path)
    if kind == "word" and value in ("true", "false"):
        return value == "true"
    if kind == "word" and value == "nil":
        return None
    raise GoTemplateError(f"{value} is not a function")


def _variable(scopes: list[dict[str, Any]], name: str) -> Any:
    for scope in reversed(scopes):
        if name in scope:
            return scope[name]
    raise GoTemplateError(f"undefined variable {name}")


def _fields(value: Any, path: list[str]) -> Any:
    for name in path:
        if isinstance(value, dict):
            value = value.get(name)  # Ollama parses with missingkey=zero
        elif value is None:
            return None
        else:
            raise GoTemplateError(f"can't read field {name} of {type(value).__name__}")
    return value


def truth(value: Any) -> bool:
    """Go's idea of true: not false, 0, nil, or an empty string, list or map."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return True


class GoValue(dict[str, Any]):
    """A Go struct or map that Ollama's API types print as JSON (api.Tool, ToolFunction,
    ToolCallFunctionArguments): fields read by their Go names, printed as `wire`."""

    def __init__(self, fields: dict[str, Any], wire: Any) -> None:
        super().__init__(fields)
        self.wire = wire


def _printed(value: Any) -> str:
    if isinstance(value, GoValue):
        return _json(value)
    if value is None:
        return NO_VALUE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + " ".join(_printed(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_printed(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _eq(first: Any, *others: Any) -> bool:
    if not others:
        raise GoTemplateError("eq needs at least two arguments")
    return any(first == other for other in others)


def _slice(value: Any, *bounds: int) -> Any:
    if len(bounds) > 2:
        raise GoTemplateError("slice takes at most two indexes here")
    start = bounds[0] if bounds else 0
    end = bounds[1] if len(bounds) > 1 else len(value)
    if not 0 <= start <= end <= len(value):
        raise GoTemplateError(f"slice index out of range: {start}:{end} of {len(value)}")
    return value[start:end]


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list | tuple | str) and isinstance(key, int):
            if not 0 <= key < len(value):
                raise GoTemplateError(f"index out of range: {key}")
            value = value[key]
        else:
            raise GoTemplateError(f"can't index {type(value).__name__}")
    return value


def _printf(form: str, *values: Any) -> str:
    converted = re.sub(r"%[vsdq]", lambda m: "%r" if m.group() == "%q" else "%s", form)
    return converted % tuple(_printed(v) if not isinstance(v, str) else v for v in values)


def _json(value: Any) -> str:
    """Go's json.Marshal: compact, map keys sorted, structs in their own field order."""
    return json.dumps(_unwrapped(value), separators=(",", ":"), ensure_ascii=False)


def _unwrapped(value: Any) -> Any:
    if isinstance(value, GoValue):
        return value.wire
    if isinstance(value, dict):
        return {k: _unwrapped(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_unwrapped(v) for v in value]
    return value


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "and": lambda *a: a[-1], "or": lambda *a: a[-1],  # evaluated lazily in _logic
    "not": lambda v: not truth(v),
    "eq": _eq, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
    "len": len, "slice": _slice, "index": _index,
    "print": lambda *a: "".join(_printed(v) if not isinstance(v, str) else v for v in a),
    "println": lambda *a: " ".join(_printed(v) if not isinstance(v, str) else v for v in a) + "\n",
    "printf": _printf,
    "json": lambda v: _json(v),
    "currentDate": lambda *_: datetime.date.today().isoformat(),
    "yesterdayDate": lambda *_: (datetime.date.today() - datetime.timedelta(days=1)).isoformat(),
}  # fmt: skip


# --- Ollama's use of it -----------------------------------------------------------------------


def identifiers(nodes: list[Any]) -> set[str]:
    """Every field and function name the template reads, lower-cased (Ollama's Vars)."""
    found: set[str] = set()

    def pipe(p: Pipe) -> None:
        for command in p.commands:
            for kind, value in command:
                if kind == "pipe":
                    pipe(value)
                elif kind in ("field", "var", "word"):
                    found.update(part.lower() for part in value.lstrip("$.").split(".") if part)

    for node in _walk(nodes):
        if isinstance(node, Action | Branch):
            pipe(node.pipe)
    return found


def _walk(nodes: list[Any]) -> Iterator[Any]:
    for node in nodes:
        yield node
        if isinstance(node, Branch):
            yield from _walk(node.body)
            yield from _walk(node.otherwise)


def cut_after_response(nodes: list[Any]) -> list[Any]:
    """The tree with everything after the first `.Response` field removed (Ollama's
    deleteNode): the last turn's prompt ends where the answer goes."""
    state = {"cut": False}

    def keep_list(items: list[Any]) -> list[Any]:
        kept: list[Any] = []
        for node in items:
            if state["cut"]:
                continue
            if isinstance(node, Action):
                trimmed = keep_pipe(node.pipe)
                if trimmed is not None:
                    kept.append(Action(trimmed))
            elif isinstance(node, Branch):
                body = keep_list(node.body)
                otherwise = keep_list(node.otherwise)
                kept.append(Branch(node.kind, node.pipe, body, otherwise))
            else:
                kept.append(node)
        return kept

    def keep_pipe(p: Pipe) -> Pipe | None:
        commands = []
        for command in p.commands:
            arguments = []
            for token in command:
                if state["cut"]:
                    continue
                if token[0] == "field" and "Response" in token[1].split("."):
                    state["cut"] = True
                arguments.append(token)
            if not arguments:
                return None
            commands.append(arguments)
        return Pipe(commands, p.declare, p.assign) if commands else None

    return keep_list(nodes)


@dataclass
class Turn:
    """A message as Ollama's templates see it."""

    role: str
    content: str
    pictures: int = 0  # how many the message carries
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_name: str = ""


def render(
    source: str, turns: list[Turn], image_marker: str = "", tools: Sequence[Tool] = ()
) -> str:
    """The prompt `source` makes of `turns`, as Ollama's template.Execute makes it. Each
    message's pictures are `image_marker`s before its text."""
    nodes = parse(source)
    names = identifiers(nodes)
    messages = _collate(turns, image_marker)
    system = "\n\n".join(m["Content"] for m in messages if m["Role"] == "system")
    values = {"Response": "", "Think": False, "ThinkLevel": "", "IsThinkSet": False}
    if "messages" in names:
        listed = [_go_tool(tool) for tool in tools] or None
        return execute(nodes, {**values, "System": system, "Messages": messages, "Tools": listed})
    if "response" not in names:
        nodes = [*nodes, Action(Pipe([[("field", ".Response")]]))]
    return _legacy(nodes, messages, values)


def _collate(turns: list[Turn], marker: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for turn in turns:
        content = marker * turn.pictures + turn.content
        if messages and messages[-1]["Role"] == turn.role and turn.role != "tool":
            messages[-1]["Content"] += "\n\n" + content
            continue
        calls = [_go_call(call, index) for index, call in enumerate(turn.tool_calls)]
        messages.append({"Role": turn.role, "Content": content, "Thinking": "", "Images": [],
                         "ToolCalls": calls, "ToolName": turn.tool_name,
                         "ToolCallID": ""})  # fmt: skip
    return messages


def _go_tool(tool: Tool) -> GoValue:
    """api.Tool as a template reads it: `.Function.Name`, `.Function.Parameters.Properties`."""
    schema = tool.parameters
    properties = {
        name: GoValue({"Type": spec.get("type"), "Description": spec.get("description", ""),
                       "Enum": spec.get("enum"), "Items": spec.get("items")}, spec)
        for name, spec in (schema.get("properties") or {}).items()
        if isinstance(spec, dict)
    }  # fmt: skip
    parameters = GoValue({"Type": schema.get("type", "object"), "Defs": schema.get("$defs"),
                          "Items": schema.get("items"), "Required": schema.get("required", []),
                          "Properties": properties}, schema)  # fmt: skip
    wire = tool.wire()
    function = GoValue({"Name": tool.name, "Description": tool.description,
                        "Parameters": parameters}, wire["function"])  # fmt: skip
    return GoValue({"Type": "function", "Function": function}, wire)


def _go_call(call: ToolCall, index: int) -> GoValue:
    arguments = GoValue(dict(call.arguments), call.arguments)
    wire = {"index": index, "name": call.name, "arguments": call.arguments}
    function = GoValue({"Index": index, "Name": call.name, "Arguments": arguments}, wire)
    return GoValue({"ID": "", "Function": function}, {"function": wire})


def _legacy(nodes: list[Any], messages: list[dict[str, Any]], values: dict[str, Any]) -> str:
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def run() -> None:
        out.append(execute(nodes, {**values, **turn}))
        turn.update(System="", Prompt="", Response="")

    for message in messages:
        role, content = message["Role"], message["Content"]
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                run()
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                run()
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    out.append(execute(cut_after_response(nodes), {**values, **turn}))
    return "".join(out)
