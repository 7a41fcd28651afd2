"""The see -> draw loop on the toys, through the real server: a LoRA trained by limner teaches
the toy Stable Diffusion a new word for a colour it never saw, and the toy vision model writes
captions that feed a training."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from helpers import add_model
from limner.cli.models import folder_files
from limner.client import Client
from limner.store import Store
from limner.toys import shapes, weights

pytest.importorskip("peft")


def store_toy(store: Store, name: str, toy: str) -> None:
    add_model(store, name, {rel: path.read_bytes() for rel, path in folder_files(weights(toy))})


@pytest.fixture
def sdk(store: Store, server: Any) -> Iterator[Client]:
    store_toy(store, "draw", "draw")
    store_toy(store, "see", "see")
    with Client(server.url) as client:
        yield client


def upload_pictures(
    sdk: Client, folder: Path, specs: list[shapes.Spec], caption: str
) -> dict[str, str]:
    """Each spec drawn as a PNG (with `caption` as its .txt unless empty), uploaded as blobs."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for number, spec in enumerate(specs):
        picture = folder / f"{number}.png"
        shapes.draw(spec).save(picture)
        files[picture.name] = sdk.create_blob(picture)
        if caption:
            text = picture.with_suffix(".txt")
            text.write_text(caption.format(shape=spec.shape))
            files[text.name] = sdk.create_blob(text)
    return files


# The LoRA also pulls the empty prompt towards orange, and classifier-free guidance pushes a
# picture away from the empty prompt's: at 7.5 that lands back on red, at 2 on orange (6 of 6
# seeds measured; 3 gave 4 of 6 on a CPU without AMX).
GUIDANCE = 2.0


def colours_drawn(sdk: Client, model: str, prompt: str, seeds: range) -> list[str]:
    drawn = []
    for seed in seeds:
        png = sdk.generate_image(model, prompt, seed=seed, guidance_scale=GUIDANCE).png
        drawn.append(shapes.judge_colour(Image.open(io.BytesIO(png))))
    return drawn


@pytest.mark.slow
def test_a_lora_trained_on_eight_pictures_teaches_a_new_word_for_an_unseen_colour(
    sdk: Client, tmp_path: Path
) -> None:
    rng = random.Random(5)
    specs = [shapes.random_spec(rng, colours=("orange",)) for _ in range(8)]
    files = upload_pictures(sdk, tmp_path / "zq", specs, "a zq {shape}")
    before = colours_drawn(sdk, "draw", "a zq square", range(6))
    lines = list(sdk.create("draw-zq", from_="draw", stream=True, train={  # type: ignore[arg-type]
        "files": files, "steps": 400, "batch_size": 4, "learning_rate": 5e-3, "rank": 16, "seed": 0,
        # bf16 rounding of a 32-wide toy swamps what the LoRA learns (0 of 6 orange on a CPU
        # without AMX): the learning loop is what this pins down, so it trains in fp32.
        "precision": "fp32",
    }))  # fmt: skip
    assert lines[-1].status == "success"
    after = colours_drawn(sdk, "draw-zq", "a zq square", range(6))
    print(f"'a zq square' before: {before}; after: {after}")
    assert before.count("orange") <= 1
    assert after.count("orange") >= 5


@pytest.mark.slow
def test_captions_written_by_the_toy_vision_model_feed_a_training(
    sdk: Client, tmp_path: Path
) -> None:
    rng = random.Random(9)
    specs = [shapes.random_spec(rng) for _ in range(6)]
    files = upload_pictures(sdk, tmp_path / "plain", specs, caption="")
    lines = list(sdk.create("draw-captioned", from_="draw", stream=True, train={  # type: ignore[arg-type]
        "files": files, "steps": 4, "caption_with": "see", "seed": 0,
    }))  # fmt: skip
    written = {line.file: line.caption for line in lines if line.status == "captioning"}
    expected = {f"{number}.png": shapes.caption(spec) for number, spec in enumerate(specs)}
    right = sum(written[name] == caption for name, caption in expected.items())
    print(f"captions: {written}")
    assert right >= 5, written
    record = sdk.show("draw-captioned").training or {}
    assert record["captions"] == written and record["completed"] is True
