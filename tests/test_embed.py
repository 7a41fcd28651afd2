"""Embedding models on both engines, and the embedding endpoints through the official
`ollama` and `openai` clients: /api/embed, /api/embeddings and /v1/embeddings. Also what a
model cannot do: an embedding model does not chat, a chat model does not embed, a model
without a projector does not see."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from helpers import ThreadServer, add_model, picture
from limner.cli.models import folder_files
from limner.scheduler import Scheduler
from limner.store import Store
from limner.tiny_embed import BERT, write_tiny_embed, write_tiny_embed_gguf

pytestmark = pytest.mark.slow
WIDTH = BERT["hidden_size"]
EMBEDDERS = ["embed", "embed-gguf"]  # transformers, llama.cpp


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from limner.tiny import write_tiny_llava_gguf

    root = tmp_path_factory.mktemp("embed")
    store = Store(root / "models")
    folder = write_tiny_embed(root / "embed")
    add_model(store, "embed", {rel: path.read_bytes() for rel, path in folder_files(folder)})
    gguf = write_tiny_embed_gguf(root / "embed-gguf") / "model.gguf"
    add_model(store, "embed-gguf", {"model.gguf": gguf.read_bytes()})
    text = write_tiny_llava_gguf(root / "llava-gguf") / "model.gguf"  # without its projector
    add_model(store, "text", {"model.gguf": text.read_bytes()})
    with ThreadServer(Scheduler(store, keep_alive=300.0)) as server:
        yield server.url


def norm(vector: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_both_engines_give_the_same_vectors_for_the_same_tiny_model(tmp_path: Path) -> None:
    from limner.engines.embed_llamacpp import EmbedLlamaCpp
    from limner.engines.embed_transformers import EmbedTransformers

    texts = ["a red circle on the left", "what is this shape?", "zebra 42"]
    transformers = EmbedTransformers(write_tiny_embed(tmp_path / "hf"), 0)
    llama = EmbedLlamaCpp(write_tiny_embed_gguf(tmp_path / "gguf") / "model.gguf", 0)
    [by_transformers] = transformers.embed(texts, True, 0, lambda: False)
    [by_llama] = llama.embed(texts, True, 0, lambda: False)
    assert by_llama.prompt_eval_count == by_transformers.prompt_eval_count
    for one, other in zip(by_transformers.vectors, by_llama.vectors, strict=True):
        assert max(abs(a - b) for a, b in zip(one, other, strict=True)) < 2e-3


@pytest.mark.parametrize("model", EMBEDDERS)
def test_ollama_embed_answers_one_unit_vector_per_input(url: str, model: str) -> None:
    reply = ollama.Client(host=url).embed(model=model, input=["a red circle", "a blue square"])
    assert len(reply.embeddings) == 2
    assert [len(v) for v in reply.embeddings] == [WIDTH, WIDTH]
    assert all(abs(norm(v) - 1) < 1e-5 for v in reply.embeddings)
    assert reply.embeddings[0] != reply.embeddings[1]
    assert reply.prompt_eval_count and reply.prompt_eval_count >= 2 * 4  # [CLS] a red circle [SEP]


@pytest.mark.parametrize("model", EMBEDDERS)
def test_the_legacy_endpoint_answers_the_vector_as_pooled_and_embed_normalises_it(
    url: str, model: str
) -> None:
    client = ollama.Client(host=url)
    raw = client.embeddings(model=model, prompt="a green triangle").embedding
    unit = client.embed(model=model, input="a green triangle").embeddings[0]
    assert abs(norm(raw) - 1) > 0.1
    assert unit == pytest.approx([x / norm(raw) for x in raw], abs=1e-5)
    first = client.embed(model=model, input="a green triangle", dimensions=8).embeddings[0]
    assert first == pytest.approx([x / norm(raw[:8]) for x in raw[:8]], abs=1e-5)


def test_openai_embeddings_come_back_as_floats_and_as_base64(url: str) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    floats = client.embeddings.create(model="embed", input="a red circle", encoding_format="float")
    packed = client.embeddings.create(model="embed", input=["a red circle", "one two"])
    assert len(floats.data) == 1 and len(packed.data) == 2
    assert floats.data[0].embedding == pytest.approx(packed.data[0].embedding, abs=1e-6)
    assert abs(norm(packed.data[1].embedding) - 1) < 1e-5
    assert floats.usage.prompt_tokens == 5
    with pytest.raises(openai.BadRequestError, match="encoding_format"):
        client.embeddings.create(model="embed", input="x", encoding_format="hex")  # type: ignore[arg-type]


@pytest.mark.parametrize("model", EMBEDDERS)
def test_a_long_input_is_cut_to_the_window_unless_truncate_is_false(url: str, model: str) -> None:
    client = ollama.Client(host=url)
    long = "red " * 500
    reply = client.embed(model=model, input=long)
    assert reply.prompt_eval_count == BERT["max_position_embeddings"]
    with pytest.raises(ollama.ResponseError, match="exceeds the context length") as error:
        client.embed(model=model, input=long, truncate=False)
    assert error.value.status_code == 400


def test_no_input_only_loads_and_a_wrong_input_is_a_400(url: str) -> None:
    loaded = httpx.post(f"{url}/api/embed", json={"model": "embed"})
    assert loaded.json() == {"model": "embed", "embeddings": []}
    wrong = httpx.post(f"{url}/api/embed", json={"model": "embed", "input": [1, 2]})
    assert wrong.status_code == 400 and "invalid input type" in wrong.json()["error"]
    cut = httpx.post(f"{url}/api/embed", json={"model": "embed", "input": "a", "dimensions": 0})
    assert cut.status_code == 400 and "dimensions" in cut.json()["error"]


def test_a_chat_model_asked_to_embed_is_a_400_in_ollamas_words(url: str) -> None:
    with pytest.raises(
        ollama.ResponseError, match='"text:latest" does not support embeddings'
    ) as error:
        ollama.Client(host=url).embed(model="text", input="hello")
    assert error.value.status_code == 400


def test_an_embedding_model_asked_to_chat_or_generate_is_a_400(url: str) -> None:
    client = ollama.Client(host=url)
    with pytest.raises(ollama.ResponseError, match='"embed:latest" does not support chat'):
        client.chat(model="embed", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ollama.ResponseError, match='"embed:latest" does not support generate'):
        client.generate(model="embed", prompt="hi")


def test_a_text_only_model_chats_and_a_picture_sent_to_it_is_a_400(url: str) -> None:
    client = ollama.Client(host=url)
    reply = client.chat(
        model="text", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 3}
    )
    assert reply.done and reply.eval_count == 3
    question = {"role": "user", "content": "what is it?", "images": [picture()]}
    with pytest.raises(
        ollama.ResponseError, match='"text:latest" does not support images'
    ) as error:
        client.chat(model="text", messages=[question])
    assert error.value.status_code == 400
    shown = client.show("text")
    assert shown.capabilities == ["completion"]
    assert client.show("embed-gguf").capabilities == ["embedding"]


def test_the_sdk_embeds_one_text_or_several(url: str) -> None:
    import limner

    client = limner.Client(url)
    several = client.embed("embed-gguf", ["a red circle", "a blue square"], dimensions=16)
    assert [len(v) for v in several.embeddings] == [16, 16]
    one = client.embeddings("embed-gguf", "a red circle").embedding
    assert several.embeddings[0] == pytest.approx([x / norm(one[:16]) for x in one[:16]], abs=1e-5)


def test_limner_run_prints_an_embedding_models_vector_as_json(url: str) -> None:
    env = {**os.environ, "LIMNER_HOST": url.removeprefix("http://")}
    command = [sys.executable, "-m", "limner", "run", "embed", "a red circle"]
    printed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    vector = json.loads(printed.stdout)
    assert len(vector) == WIDTH and abs(norm(vector) - 1) < 1e-5
    empty = subprocess.run(command[:-1], env=env, capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)  # fmt: skip
    assert empty.returncode != 0 and "embedding models require input text" in empty.stderr
