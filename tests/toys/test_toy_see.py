"""The shipped toy vision model knows its shapes: through the real server and the official
`ollama` client, on both engines, it names the colour and the shape of pictures drawn fresh."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import ollama
import pytest
from safetensors import safe_open

import helpers
from helpers import add_model
from limner.store import Store
from limner.toys import weights
from limner.toys.shapes import QUESTIONS, SIZE, Spec, answers, caption, draw, random_spec

COUNT = 100  # pictures per engine
GREEDY = {"temperature": 0}
ENGINES = {"see": "transformers", "see-gguf": "llama.cpp"}


@pytest.fixture
def client(server: Any, store: Store, tmp_path: Path) -> ollama.Client:
    """A server holding the toy as shipped ("see") and converted to GGUF ("see-gguf")."""
    pytest.importorskip("transformers")
    pytest.importorskip("llama_cpp")
    from limner.toys.see import write_gguf

    folder = weights("see")
    add_model(store, "see", {p.name: p.read_bytes() for p in sorted(folder.iterdir())})
    converted = write_gguf(folder, tmp_path / "see-gguf")
    add_model(store, "see-gguf", {p.name: p.read_bytes() for p in sorted(converted.glob("*.gguf"))})
    return ollama.Client(host=server.url)


def pictures(seed: int, count: int) -> list[tuple[Spec, bytes]]:
    rng = random.Random(seed)
    specs = [random_spec(rng) for _ in range(count)]
    return [(spec, png(draw(spec))) for spec in specs]


png = helpers.encoded  # a picture's PNG bytes


def ask(client: ollama.Client, model: str, picture: bytes, question: str) -> ollama.ChatResponse:
    message = {"role": "user", "content": question, "images": [picture]}
    return client.chat(model=model, messages=[message], options=GREEDY)


@pytest.mark.slow
@pytest.mark.parametrize("model", ENGINES)
def test_the_toy_names_the_colour_and_the_shape_of_fresh_pictures_in_one_word(
    client: ollama.Client, model: str
) -> None:
    right = {"colour": 0, "shape": 0}
    for spec, picture in pictures(seed=2024, count=COUNT):
        for key in right:
            reply = ask(client, model, picture, QUESTIONS[key])
            right[key] += reply.message.content == answers(spec)[key]
            # One token ("▁red"), then end-of-sequence stops the answer.
            assert (reply.done_reason, reply.eval_count) == ("stop", 1)
    print(f"{ENGINES[model]}: colour {right['colour']}/{COUNT}, shape {right['shape']}/{COUNT}")
    assert right["colour"] >= 0.9 * COUNT
    assert right["shape"] >= 0.9 * COUNT


@pytest.mark.slow
def test_the_toy_describes_a_picture_as_a_colour_and_a_shape(client: ollama.Client) -> None:
    for model, engine in ENGINES.items():
        said = [(spec, ask(client, model, picture, QUESTIONS["caption"]).message.content)
                for spec, picture in pictures(seed=7, count=20)]  # fmt: skip
        right = sum(answer == caption(spec) for spec, answer in said)
        print(f"{engine}: {right}/20 captions right, e.g. {said[0][1]!r}")
        assert right >= 16


def test_the_shipped_toy_is_a_small_llava_hf_folder_without_pickles() -> None:
    folder = weights("see")
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "added_tokens.json",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "processor_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert sum(p.stat().st_size for p in folder.iterdir()) < 2_000_000
    with safe_open(folder / "model.safetensors", framework="np") as weights_file:
        dtypes = {weights_file.get_slice(k).get_dtype() for k in weights_file.keys()}  # noqa: SIM118
    assert dtypes == {"F16"}
    config = json.loads((folder / "config.json").read_text())
    assert config["vision_config"]["image_size"] == SIZE and config["image_seq_length"] == 64
