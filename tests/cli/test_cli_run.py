"""`limner run` without a terminal: one answer from arguments or piped stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import add_fake, picture
from limner.store import Store

# Exactly what the installed `limner` command runs (its entry point is limner.cli:main).
LIMNER = [sys.executable, "-c", "import sys; from limner.cli import main; sys.exit(main())"]


@pytest.fixture
def env(server: Any, store: Store) -> dict[str, str]:
    add_fake(store, "fake")
    return {**os.environ, "LIMNER_HOST": server.url.removeprefix("http://")}


def limner(
    env: dict[str, str], *args: str, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LIMNER, *args], env=env, input=stdin, capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_a_prompt_with_a_picture_is_answered_once(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "img.png").write_bytes(picture())
    result = limner(env, "run", "fake", "what is in ./img.png ?", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "I see 1 picture(s). You said: what is in ?\n\n"
    assert result.stderr == f"Added image '{tmp_path / 'img.png'}'\n"


def test_a_plain_picture_name_and_a_missing_one(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "cat.jpg").write_bytes(picture("JPEG"))
    result = limner(env, "run", "fake", "compare", "cat.jpg", "with", "dog.png", cwd=tmp_path)
    assert result.stdout.startswith("I see 1 picture(s). You said: compare with dog.png")
    assert "Picture 'dog.png' not found; sending the text without it" in result.stderr


def test_piped_stdin_comes_before_the_arguments(env: dict[str, str]) -> None:
    result = limner(env, "run", "fake", "and", "this", stdin="some piped text\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "I see 0 picture(s). You said: some piped text and this\n\n"


def test_verbose_prints_ollamas_timing_lines(env: dict[str, str]) -> None:
    result = limner(env, "run", "fake", "hello", "--verbose", "there")
    assert result.stdout == "I see 0 picture(s). You said: hello there\n\n"
    labels = [line.split(":")[0] for line in result.stderr.splitlines()]
    assert labels == ["total duration", "load duration", "prompt eval count", "prompt eval duration",
                      "prompt eval rate", "eval count", "eval duration", "eval rate"]  # fmt: skip
    assert "prompt eval count:    2 token(s)" in result.stderr
    assert "eval count:           5 token(s)" in result.stderr
    assert "eval rate:            1000000.00 tokens/s" in result.stderr


def test_an_empty_prompt_only_loads_the_model(env: dict[str, str]) -> None:
    result = limner(env, "run", "fake", "")
    assert (result.returncode, result.stdout) == (0, "")
    assert "fake:latest" in limner(env, "ps").stdout


def test_a_missing_model_is_an_error(env: dict[str, str]) -> None:
    result = limner(env, "run", "ghost", "hi")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: model 'ghost")
    assert "limner create" in result.stderr


def test_help_imports_no_engine_server_or_tiny_model(env: dict[str, str]) -> None:
    check = (
        "import sys; from limner.cli.main import parser; parser().format_help(); "
        "print(sorted(m for m in ('torch', 'transformers', 'limner.tiny', 'limner.server', 'PIL') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env)
    assert result.stdout == "[]\n"


def test_timings_format_like_go() -> None:
    from limner.cli.session import go_duration

    assert [go_duration(n) for n in (412, 3_200, 342_546_125, 1_500_000_000, 62_500_000_000, 3_723_000_000_000)] == [
        "412ns", "3.2µs", "342.546125ms", "1.5s", "1m2.5s", "1h2m3s"
    ]  # fmt: skip


def test_word_wrap_breaks_between_words() -> None:
    from limner.cli.session import Wrapper

    out: list[str] = []
    wrapper = Wrapper(25, out.append)
    for piece in ["The quick", " brown fox", " jumps over", " the lazy", " dog"]:
        wrapper.feed(piece)
    wrapper.flush()
    assert "".join(out) == "The quick brown fox\njumps over the lazy\ndog"


def test_keepalive_takes_durations_and_plain_seconds(env: dict[str, str]) -> None:
    assert limner(env, "run", "fake", "--keepalive", "-1", "").returncode == 0
    assert "Forever" in limner(env, "ps").stdout
    assert limner(env, "run", "fake", "--keepalive", "0s", "").returncode == 0
    assert "fake" not in limner(env, "ps").stdout


def test_format_takes_json_a_schema_or_a_schema_file(tmp_path: Path) -> None:
    from limner.cli.run import response_format

    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "blue"]}}}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    assert response_format("json") == "json"
    assert response_format(json.dumps(schema)) == schema
    assert response_format(str(tmp_path / "schema.json")) == schema


def test_a_format_that_is_no_schema_is_refused_before_asking(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    result = limner(env, "run", "fake", "hi", "--format", str(tmp_path / "broken.json"))
    assert result.returncode == 2
    assert "broken.json does not hold a JSON schema object" in result.stderr
    result = limner(env, "run", "fake", "hi", "--format", "yaml")
    assert result.returncode == 2 and "'yaml' is not a JSON schema object" in result.stderr
