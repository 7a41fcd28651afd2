import pytest

from limner.errors import InvalidRequest
from limner.names import ModelName


@pytest.mark.parametrize(
    ("text", "parts", "display"),
    [
        ("llava", ("registry.ollama.ai", "library", "llava", "latest"), "llava:latest"),
        ("bakllava:7b", ("registry.ollama.ai", "library", "bakllava", "7b"), "bakllava:7b"),
        ("me/pics", ("registry.ollama.ai", "me", "pics", "latest"), "me/pics:latest"),
        ("example.com/ns/m:v1", ("example.com", "ns", "m", "v1"), "example.com/ns/m:v1"),
        (
            "localhost:5000/ns/m",
            ("localhost:5000", "ns", "m", "latest"),
            "localhost:5000/ns/m:latest",
        ),
        ("https://hf.co/org/repo:q4", ("hf.co", "org", "repo", "q4"), "hf.co/org/repo:q4"),
    ],
)
def test_names_take_ollamas_defaults_and_display_form(
    text: str, parts: tuple[str, ...], display: str
) -> None:
    name = ModelName.parse(text)
    assert name.parts() == parts
    assert name.display() == display


@pytest.mark.parametrize(
    "text",
    [
        "",
        "..",
        "../x",
        "a/../b",
        "a/b/c/d",
        "m:..",
        "-lead",
        "sp ace",
        "ns.dot/m",
        "m:t/x",
        "a" * 81,
        "x\\y",
        "m:",
    ],
)
def test_invalid_names_are_refused(text: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid model name"):
        ModelName.parse(text)
