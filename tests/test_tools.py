"""Tool calls: a model whose template renders tools says so in /api/show, sees the tools in
its prompt, and its calls come back as Ollama's `message.tool_calls` and OpenAI's
`tool_calls`, however the text that spells them is split into pieces.

The reader and the templates are tested directly; the wire through the official `ollama` and
`openai` clients against the scripted engine (it answers `ECHO ...` verbatim) and against
the tiny models on both engines, whose answers a JSON schema holds to the shape of a call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest

from helpers import ThreadServer, add_fake, add_model
from limner.engines import Called, ChatStep, Message, Piece, Tool, ToolCall
from limner.engines.templates import Turn, render_go, render_jinja
from limner.engines.tool_calls import BARE, CallReader, tag_of
from limner.scheduler import Scheduler
from limner.store import Store
from limner.store.create import create
from limner.store.described import renders_tools
from limner.tiny_families import TEXT_TEMPLATE
from limner.types import CreateRequest

WEATHER = Tool(
    "weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TOOLS = [WEATHER.wire()]
CALL = '{"name": "weather", "arguments": {"city": "Paris"}}'

# Llama 3.1's way (Ollama's template, shortened): a call is bare JSON at the answer's start.
LLAMA31 = (
    "{{- if .Tools }}<|start_header_id|>system<|end_header_id|>\n\n"
    "Call a function with JSON.\n{{ range .Tools }}{{ . }}\n{{ end }}<|eot_id|>{{ end }}"
    "{{- range $i, $_ := .Messages }}{{- $last := eq (len (slice $.Messages $i)) 1 }}"
    '{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Content }}'
    "<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}"
    '{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>\n\n'
    '{{- if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", '
    '"parameters": {{ .Function.Arguments }}}{{ end }}{{ else }}{{ .Content }}{{ end }}'
    "{{ if not $last }}<|eot_id|>{{ end }}"
    '{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>\n\n'
    "{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{{ end }}{{- end }}{{- end }}"
)
# Mistral's way: [TOOL_CALLS] and a list of calls.
MISTRAL = (
    '{{- range .Messages }}{{- if eq .Role "user" }}[INST] {{ .Content }}[/INST]'
    '{{- else if eq .Role "assistant" }}{{- if .ToolCalls }}[TOOL_CALLS] ['
    '{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", '
    '"arguments": {{ json .Function.Arguments }}}{{ end }}]</s>'
    "{{- else }} {{ .Content }}</s>{{ end }}{{- end }}{{- end }}"
)


def go(template: str) -> Any:
    def render(messages: list[Message]) -> str:
        turns = [Turn(m.role, m.content, 0, m.tool_calls, m.tool_name) for m in messages]
        return render_go(template, turns, "")

    return render


def jinja(template: str) -> Any:
    def render(messages: list[Message]) -> str:
        turns = [Turn(m.role, m.content, 0, m.tool_calls, m.tool_name) for m in messages]
        return render_jinja(template, turns, "<image>", "", "", "", (), structured=False)

    return render


def read(tag: str, text: str, size: int) -> tuple[str, list[ToolCall]]:
    """The text and the calls `text` comes to when it arrives `size` characters at a time."""
    reader = CallReader(tag)
    steps: list[ChatStep] = []
    for start in range(0, len(text), size):
        steps += reader.feed(text[start : start + size])
    steps += reader.close()
    said = "".join(s.text for s in steps if isinstance(s, Piece))
    return said, [c for s in steps if isinstance(s, Called) for c in s.calls]


# --- templates and the reader ----------------------------------------------------------------


def test_the_tag_before_a_call_is_read_from_the_models_own_template() -> None:
    assert tag_of(jinja(TEXT_TEMPLATE)) == "<tool_call>"
    assert tag_of(go(LLAMA31)) == BARE
    assert tag_of(go(MISTRAL)) == "[TOOL_CALLS]"
    assert tag_of(go("{{ .System }} USER: {{ .Prompt }} ASSISTANT:")) == BARE  # no calls at all


def test_go_templates_write_the_tools_and_earlier_calls_as_ollama_does() -> None:
    turns = [
        Turn("user", "Weather in Paris?"),
        Turn("assistant", "", tool_calls=[ToolCall("weather", {"city": "Paris"})]),
        Turn("tool", "sunny", tool_name="weather"),
    ]
    prompt = render_go(LLAMA31, turns, "", [WEATHER])
    function = json.dumps(WEATHER.wire(), separators=(",", ":"))
    assert f"Call a function with JSON.\n{function}\n<|eot_id|>" in prompt
    assert '{"name": "weather", "parameters": {"city":"Paris"}}<|eot_id|>' in prompt
    assert prompt.endswith("ipython<|end_header_id|>\n\nsunny<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n")  # fmt: skip


@pytest.mark.parametrize("size", [1, 2, 7, 1000])
def test_calls_are_read_however_the_text_is_split(size: int) -> None:
    tagged = f"Let me look. <tool_call>\n{CALL}\n</tool_call>\n<tool_call>{CALL}</tool_call>"
    assert read("<tool_call>", tagged, size) == (
        "Let me look. ",
        [ToolCall("weather", {"city": "Paris"})] * 2,
    )
    bare = (
        ' {"name": "weather", "parameters": {"city": "Paris"}} {"name": "now", "arguments": "{}"}'
    )
    assert read(BARE, bare, size) == ("", [ToolCall("weather", {"city": "Paris"}), ToolCall("now")])
    listed = f"[TOOL_CALLS] [{CALL}, {CALL}]"
    assert read("[TOOL_CALLS]", listed, size) == ("", [ToolCall("weather", {"city": "Paris"})] * 2)


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_text_that_is_not_a_call_is_given_back_whole(size: int) -> None:
    for tag, text in [
        ("<tool_call>", "No call here, only <tool a tag's start"),
        ("<tool_call>", 'An answer <tool_call>{"city": "Paris"} with JSON that calls nothing'),
        ("<tool_call>", "<tool_call>{never closed"),
        (BARE, '{"answer": 42}'),
        (BARE, 'Some text, then {"name": "weather", "arguments": {}}'),  # bare only at the start
    ]:
        assert read(tag, text, size) == (text, []), text


def test_a_template_renders_tools_when_it_reads_them() -> None:
    assert renders_tools(LLAMA31) and renders_tools(MISTRAL) is False
    assert renders_tools(TEXT_TEMPLATE)
    assert not renders_tools("{{ .System }} USER: {{ .Prompt }} ASSISTANT:")


# --- the wire, with the scripted engine -------------------------------------------------------


def add_fake_with_tools(store: Store) -> None:
    add_fake(store, "plain")
    for _ in create(store, CreateRequest(model="caller", **{"from": "plain"}, template=LLAMA31)):
        pass


def test_ollama_clients_get_calls_streamed_and_whole(server: Any, store: Store) -> None:
    add_fake_with_tools(store)
    client = ollama.Client(host=server.url)
    assert set(client.show("caller").capabilities or []) == {"completion", "vision", "tools"}
    asked = [{"role": "user", "content": f"ECHO {CALL}"}]

    reply = client.chat(model="caller", messages=asked, tools=TOOLS)
    (call,) = reply.message.tool_calls or []
    assert (call.function.name, call.function.arguments) == ("weather", {"city": "Paris"})
    assert reply.message.content == "" and reply.done_reason == "stop"

    chunks = list(client.chat(model="caller", messages=asked, tools=TOOLS, stream=True))
    with_calls = [c for c in chunks if c.message.tool_calls]
    assert len(with_calls) == 1 and with_calls[0].message.content == ""
    assert with_calls[0].message.tool_calls[0].function.name == "weather"  # type: ignore[index]
    assert chunks[-1].done

    # The answer goes back with the tool's result, and plain text still streams as text.
    follow = [*asked, reply.message, {"role": "tool", "content": "sunny", "tool_name": "weather"},
              {"role": "user", "content": "ECHO It is sunny."}]  # fmt: skip
    again = client.chat(model="caller", messages=follow, tools=TOOLS)
    assert again.message.content == "It is sunny." and not again.message.tool_calls


def test_openai_clients_get_calls_with_arguments_as_text(server: Any, store: Store) -> None:
    add_fake_with_tools(store)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    asked: Any = [{"role": "user", "content": f"ECHO {CALL}"}]

    reply = client.chat.completions.create(model="caller", messages=asked, tools=TOOLS)  # type: ignore[arg-type]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]

    stream = client.chat.completions.create(
        model="caller", messages=asked, tools=TOOLS, stream=True
    )  # type: ignore[arg-type]
    events = list(stream)
    deltas = [d for e in events for d in (e.choices[0].delta.tool_calls or []) if e.choices]
    assert [d.function.name for d in deltas] == ["weather"]  # type: ignore[union-attr]
    assert events[-1].choices[0].finish_reason == "tool_calls"

    # A later turn sends the call back with its id, and the tool's answer names that id.
    follow: Any = [*asked, choice.message.model_dump(exclude_none=True),
                   {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
                   {"role": "user", "content": "ECHO ok"}]  # fmt: skip
    again = client.chat.completions.create(model="caller", messages=follow, tools=TOOLS)  # type: ignore[arg-type]
    assert again.choices[0].message.content == "ok" and again.choices[0].finish_reason == "stop"
    # tool_choice "none" takes the tools away: the same JSON is only text.
    plain = client.chat.completions.create(
        model="caller", messages=asked, tools=TOOLS, tool_choice="none"
    )  # type: ignore[arg-type]
    assert plain.choices[0].message.content == CALL and not plain.choices[0].message.tool_calls


def test_a_call_whose_arguments_are_not_json_is_a_400(server: Any, store: Store) -> None:
    add_fake_with_tools(store)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    bad: Any = [{"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{oops"}}
    ]}, {"role": "user", "content": "hi"}]  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="arguments must be a JSON object"):
        client.chat.completions.create(model="caller", messages=bad, tools=TOOLS)  # type: ignore[arg-type]


# --- real engines at tiny size ----------------------------------------------------------------

# A call to `weather`, as a schema: random weights write it when decoding is held to it.
CALL_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"enum": ["weather"]},
        "arguments": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                      "required": ["city"]},
    },
    "required": ["name", "arguments"],
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from limner.cli.models import folder_files, write_tiny

    root = tmp_path_factory.mktemp("tools")
    store = Store(root / "store")
    for kind in ("text", "text-gguf"):
        folder = write_tiny(kind, root / kind)
        add_model(store, kind, {rel: path.read_bytes() for rel, path in folder_files(folder)})
    # The GGUF's own template (LLaVA's) takes no tools: Llama 3.1's does.
    request = CreateRequest(model="text-gguf-tools", **{"from": "text-gguf"}, template=LLAMA31)
    for _ in create(store, request):
        pass
    with ThreadServer(Scheduler(store, keep_alive=300.0)) as server:
        yield server.url


@pytest.mark.slow
def test_a_tiny_llamacpp_model_calls_the_tools_its_template_offers(tiny_url: str) -> None:
    client = ollama.Client(host=tiny_url)
    assert "tools" in (client.show("text-gguf-tools").capabilities or [])
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    for seed in range(3):
        reply = client.chat(model="text-gguf-tools", messages=asked, tools=TOOLS,
                            format=CALL_SCHEMA, options={"num_predict": 60, "seed": seed})  # fmt: skip
        (call,) = reply.message.tool_calls or []
        assert call.function.name == "weather"
        assert call.function.arguments["city"] in ("Paris", "Oslo")
    openai_client = openai.OpenAI(base_url=f"{tiny_url}/v1", api_key="unused")
    completion = openai_client.chat.completions.create(
        model="text-gguf-tools",
        messages=asked,
        tools=TOOLS,
        seed=0,
        max_tokens=60,  # type: ignore[arg-type]
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "call", "schema": CALL_SCHEMA},
        },
    )
    assert completion.choices[0].finish_reason == "tool_calls"


@pytest.mark.slow
def test_a_tiny_transformers_model_with_qwens_template_takes_tools(tiny_url: str) -> None:
    client = ollama.Client(host=tiny_url)
    assert set(client.show("text").capabilities or []) == {"completion", "tools"}
    reply = client.chat(model="text", messages=[{"role": "user", "content": "Weather?"}],
                        tools=TOOLS, options={"num_predict": 5})  # fmt: skip
    assert reply.done and reply.eval_count


def test_text_model_without_tools_keeps_its_gguf_template(tiny_url: str) -> None:
    client = ollama.Client(host=tiny_url)
    assert "tools" not in (client.show("text-gguf").capabilities or [])
    with pytest.raises(ollama.ResponseError, match="does not support tools"):
        client.chat(model="text-gguf", messages=[{"role": "user", "content": "hi"}], tools=TOOLS)


def test_the_transformers_prompt_offers_the_tools(tmp_path: Path) -> None:
    from limner.cli.models import write_tiny
    from limner.engines import LoadOptions
    from limner.engines.transformers_chat import load

    engine = load(write_tiny("text", tmp_path / "text"), LoadOptions())
    prompt = engine._render([Message("user", "Weather in Paris?")], [WEATHER])
    assert json.dumps(WEATHER.wire()) in prompt and "<tool_call>" in prompt
    assert engine.tool_tag == "<tool_call>"
