"""Ollama's Go templates rendered as Ollama renders them: every template of Ollama's
`template/` folder, with the conversations and expected prompts of its own tests
(tests/data/ollama_templates, taken from ollama/ollama as data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from limner.engines.go_template import GoTemplateError, Turn, parse, render

DATA = Path(__file__).parent.parent / "data" / "ollama_templates"
CONVERSATIONS = {
    "user": [Turn("user", "Hello, how are you?")],
    "user-assistant-user": [
        Turn("user", "Hello, how are you?"),
        Turn("assistant", "I'm doing great. How can I help you today?"),
        Turn("user", "I'd like to show off how chat templating works!"),
    ],
    "system-user-assistant-user": [
        Turn("system", "You are a helpful assistant."),
        Turn("user", "Hello, how are you?"),
        Turn("assistant", "I'm doing great. How can I help you today?"),
        Turn("user", "I'd like to show off how chat templating works!"),
    ],
}
# Ollama's own test drops one trailing space from these templates' output.
TRAILING_SPACE = {"chatqa", "llama2-chat", "mistral-instruct", "openchat", "vicuna"}
CASES = [
    (template.name, case)
    for template in sorted(DATA.glob("*.gotmpl"))
    for case in CONVERSATIONS
    if (DATA / "expected" / template.name / case).is_file()
]


@pytest.mark.parametrize(("template", "case"), CASES)
def test_every_ollama_template_renders_as_ollama_renders_it(template: str, case: str) -> None:
    prompt = render((DATA / template).read_text(), CONVERSATIONS[case])
    if template.removesuffix(".gotmpl") in TRAILING_SPACE and prompt.endswith(" "):
        prompt = prompt[:-1]
    assert prompt == (DATA / "expected" / template / case).read_text()


def test_the_corpus_is_there() -> None:
    assert len(CASES) >= 60


def test_pictures_come_before_their_message_text() -> None:
    template = "{{ range .Messages }}[{{ .Role }}] {{ .Content }}\n{{ end }}"
    turns = [Turn("user", "what is it?", pictures=2)]
    assert render(template, turns, "<img>") == "[user] <img><img>what is it?\n"


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ('{{ template "x" }}', "not supported"),
        ("{{ if .System }}no end", "has no {{ end }}"),
        ("{{ nosuch .Prompt }}", "nosuch is not a function"),
        ("{{ .Prompt", "not closed"),
    ],
)
def test_what_cannot_be_rendered_is_an_error_naming_it(source: str, says: str) -> None:
    with pytest.raises(GoTemplateError, match=says):
        render(source, [Turn("user", "hi")])


def test_variables_else_if_and_logic_follow_go() -> None:
    source = (
        "{{- $n := len .Messages }}{{ range $i, $m := .Messages }}"
        '{{ if and (eq $m.Role "user") (eq $i 0) }}first{{ else if eq $m.Role "user" }}'
        'later{{ else }}{{ or $m.Thinking "-" }}{{ end }}{{ if not (eq (len (slice $.Messages $i)) 1) }},{{ end }}'
        "{{ end }} of {{ $n }}"
    )
    turns = [Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c")]
    assert render(source, turns) == "first,-,later of 3"
    assert parse("{{/* a comment */}}x") == parse("x")
    # Without .Messages a template runs once per user turn, the answer after each.
    assert render("{{/* c */}}x", turns) == "xbx"
