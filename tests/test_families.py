"""Vision families beyond LLaVA-1.5 on transformers, and a text-only model, through the
official `ollama` client against a real server: a tiny model of each family answers a
question about a picture, its prompt costs exactly what the family's processor makes of that
picture, and a follow-up reuses the cache."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from helpers import ThreadServer, add_model, picture
from limner.cli.models import folder_files
from limner.scheduler import Scheduler
from limner.store import Store
from limner.tiny_families import write_tiny_family

pytestmark = pytest.mark.slow
# Qwen's and Mistral 3's own processors need torchvision: the engine builds theirs
# (engines/processors.py), and their expected counts come from their image processors here.
VISION_FAMILIES = ["gemma3", "llava-next", "smolvlm", "qwen2-vl", "qwen2.5-vl", "mistral3"]
QUESTION = "What is in this picture?"
MINICPM = "minicpm-v4.6"  # its processor, too, is built without its video part


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {f: write_tiny_family(f, root / f) for f in [*VISION_FAMILIES, MINICPM, "text"]}


@pytest.fixture(scope="module")
def url(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = Store(tmp_path_factory.mktemp("store"))
    for family, folder in folders.items():
        add_model(store, family, {rel: path.read_bytes() for rel, path in folder_files(folder)})
    with ThreadServer(Scheduler(store, keep_alive=300.0)) as server:
        yield server.url


def processor_count(folder: Path, picture_bytes: bytes) -> int:
    """What the family's own processor makes of the question and the picture."""
    import io

    from PIL import Image
    from transformers import AutoProcessor

    parts = [{"type": "image"}, {"type": "text", "text": QUESTION}]
    conversation = [{"role": "user", "content": parts}]
    image = Image.open(io.BytesIO(picture_bytes)).convert("RGB")
    try:
        processor = AutoProcessor.from_pretrained(folder)
    except ImportError:  # torchvision
        return counted_without_processor(folder, conversation, image)
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return len(processor(text=text, images=[image], return_tensors="pt")["input_ids"][0])


def counted_without_processor(folder: Path, conversation: list[Any], image: Any) -> int:
    """The prompt's tokens with the picture's one placeholder, plus what the family's image
    processor makes of the picture: Qwen one token per 2x2 merged patches of its grid;
    Pixtral rows x (columns + 1) of 16-px cells ([IMG]s, a break after each row)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = (folder / "chat_template.jinja").read_text()
    text = tokenizer.apply_chat_template(
        conversation, chat_template=template, add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(text)["input_ids"]
    pixels = AutoImageProcessor.from_pretrained(folder)
    if "qwen" in folder.name:
        picture_tokens = int(pixels([image])["image_grid_thw"][0].prod()) // 4
    else:
        sides = pixels([image], patch_size=16)["image_sizes"][0]
        height, width = (int(side) // 16 for side in sides)
        picture_tokens = height * (width + 1)
    return len(ids) - 1 + picture_tokens


@pytest.mark.parametrize("family", VISION_FAMILIES)
def test_a_tiny_model_of_each_family_answers_about_a_picture_with_exact_counts(
    url: str, folders: dict[str, Path], family: str
) -> None:
    client = ollama.Client(host=url)
    assert client.show(family).capabilities == ["completion", "vision"]
    for size in [(100, 80), (30, 90)]:  # dynamic families cost more for some shapes
        shot = picture(size=size)
        message = {"role": "user", "content": QUESTION, "images": [shot]}
        chunks = list(
            client.chat(
                model=family,
                messages=[message],
                stream=True,
                options={"num_predict": 4, "temperature": 0},
            )
        )
        assert len(chunks) >= 2 and chunks[-1].done and chunks[-1].eval_count == 4
        expected = processor_count(folders[family], shot)
        assert chunks[-1].prompt_eval_count == expected, size


@pytest.mark.parametrize("family", VISION_FAMILIES)
def test_a_follow_up_about_the_same_picture_reuses_the_cache(url: str, family: str) -> None:
    shot = base64.b64encode(picture(size=(64, 64), color="blue")).decode()
    first = [{"role": "user", "content": QUESTION, "images": [shot]}]
    options = {"num_predict": 3, "temperature": 0, "seed": 1}
    answer = httpx.post(
        f"{url}/api/chat",
        json={"model": family, "messages": first, "options": options, "stream": False},
        timeout=60,
    ).json()
    follow = [*first, answer["message"], {"role": "user", "content": "And its colour?"}]
    again = httpx.post(
        f"{url}/api/chat",
        json={"model": family, "messages": follow, "options": options, "stream": False},
        timeout=60,
    ).json()
    assert again["prompt_cached_count"] >= answer["prompt_eval_count"]
    assert again["prompt_eval_count"] < answer["prompt_eval_count"]


def test_minicpm_v46_answers_on_transformers_with_its_processors_picture_tokens(
    url: str, folders: dict[str, Path]
) -> None:
    """The tiny model cuts pictures into 32-px slices of 4 tokens: a 64x48 picture is written
    `<image_id>0</image_id>`, the overview in `<image>`..`</image>`, then 2x2 slices each in
    `<slice>`..`</slice>`, a newline after the first row: 3 + 6 + 4 x 6 + 1 tokens where the
    template wrote one placeholder (libmtmd makes the same 20 picture tokens of it)."""
    from transformers import AutoTokenizer

    client = ollama.Client(host=url)
    assert client.show(MINICPM).capabilities == ["completion", "vision"]
    message = {"role": "user", "content": QUESTION, "images": [picture(size=(64, 48))]}
    options = {"num_predict": 4, "temperature": 0}
    chunks = list(client.chat(model=MINICPM, messages=[message], stream=True, options=options))
    assert len(chunks) >= 2 and chunks[-1].done and chunks[-1].eval_count == 4
    tokenizer = AutoTokenizer.from_pretrained(folders[MINICPM])
    parts = [{"type": "image"}, {"type": "text", "text": QUESTION}]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": parts}], add_generation_prompt=True, tokenize=False
    )
    assert chunks[-1].prompt_eval_count == len(tokenizer(text)["input_ids"]) - 1 + 34


def test_a_text_only_safetensors_model_chats_and_refuses_pictures(url: str) -> None:
    client = ollama.Client(host=url)
    assert set(client.show("text").capabilities or []) == {"completion", "tools"}
    reply = client.generate(model="text", prompt="hello", options={"num_predict": 2})
    assert reply.done and reply.eval_count == 2
    with pytest.raises(ollama.ResponseError, match="does not support images") as error:
        client.generate(model="text", prompt="what is it?", images=[picture()])
    assert error.value.status_code == 400
