"""LoRA training through the real server: `/api/create` with `from` and `train`, on the tiny
random Stable Diffusion, with the SDK and plain HTTP."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import helpers
from helpers import add_fake, add_model, add_tiny_sd
from limner.client import Client
from limner.errors import Conflict
from limner.store import Store
from limner.store import manifests as m
from limner.types import ProgressResponse

pytest.importorskip("peft")

FAST = {"resolution": 32, "precision": "fp32", "learning_rate": 5e-2, "seed": 3}


def png(colour: str, size: tuple[int, int] = (40, 36)) -> bytes:
    return helpers.picture(size=size, color=colour)


def upload(sdk: Client, folder: Path, files: dict[str, bytes | str]) -> dict[str, str]:
    """Write `files` into `folder` and upload each, as `limner create --train` does."""
    digests = {}
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        digests[name] = sdk.create_blob(path)
    return digests


PICTURES: dict[str, bytes | str] = {
    "a.png": png("orange"),
    "a.txt": "a zq square",
    "b.png": png("darkorange", (48, 48)),
    "b.txt": "a zq square",
}


def train(sdk: Client, name: str, files: dict[str, str], **settings: Any) -> list[ProgressResponse]:
    steps = sdk.create(name, from_="sd", train={"files": files, **FAST, **settings}, stream=True)
    return list(steps)  # type: ignore[arg-type]


def draw(sdk: Client, model: str) -> bytes:
    png = sdk.generate_image(model, "a zq square", width=32, height=32, steps=2, seed=7).png
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


@pytest.fixture
def sdk(store: Store, server: Any, tmp_path: Path) -> Iterator[Client]:
    add_tiny_sd(store, tmp_path)
    with Client(server.url) as client:
        yield client


@pytest.mark.slow
def test_training_streams_steps_and_stores_a_model_that_draws_with_its_lora(
    sdk: Client, store: Store, tmp_path: Path
) -> None:
    files = upload(sdk, tmp_path / "photos", PICTURES)
    lines = train(sdk, "zq-style", files, steps=6, checkpoint_every=3, validation_every=6)
    training = [line for line in lines if line.status == "training"]
    assert [line.step for line in training] == [1, 2, 3, 4, 5, 6]
    assert all(line.total == 6 and line.completed == line.step for line in training)
    assert all(line.loss is not None and line.loss > 0 for line in training)
    assert training[-1].eta == 0 and training[0].learning_rate == pytest.approx(5e-2)
    assert [line.step for line in lines if line.status == "checkpoint"] == [3, 6]
    validation = next(line for line in lines if line.status == "validation")
    assert Image.open(io.BytesIO(base64.b64decode(validation.image or ""))).size == (32, 32)
    assert lines[-1].status == "success"

    shown = sdk.show("zq-style")
    record = shown.training or {}
    assert record["base"] == "sd:latest" and record["completed"] is True
    assert record["steps"] == 6 and len(record["losses"]) == 6
    assert record["final_loss"] == training[-1].loss
    assert record["parameters"]["rank"] == 4 and record["parameters"]["pictures"] == 2
    assert set(record["exports"]) == {"lora_kohya.safetensors"}
    layers = store.entry(store.resolve("zq-style")).manifest.layers
    assert {layer.name for layer in layers} >= {
        "adapters/zq-style.safetensors",
        "exports/lora_kohya.safetensors",
    }

    assert draw(sdk, "zq-style") != draw(sdk, "sd")
    sdk.create("zq-off", from_="zq-style", parameters={"adapter_scale": 0.0})
    assert draw(sdk, "zq-off") == draw(sdk, "sd")


@pytest.mark.slow
def test_training_lowers_the_loss_on_the_same_draws_of_noise(sdk: Client, tmp_path: Path) -> None:
    """Same seed, same batches, noise and timesteps: only the learning differs."""
    files = upload(sdk, tmp_path / "photos", PICTURES)
    learned = train(sdk, "learned", files, steps=12)
    still = train(sdk, "still", files, steps=12, learning_rate=1e-12)

    def late(lines: list[ProgressResponse]) -> float:
        return sum([line.loss or 0 for line in lines if line.status == "training"][6:])

    assert late(learned) < 0.9 * late(still)


@pytest.mark.slow
def test_a_client_that_goes_away_stops_training_and_keeps_the_last_checkpoint(
    sdk: Client, server: Any, store: Store, tmp_path: Path
) -> None:
    files = upload(sdk, tmp_path / "photos", PICTURES)
    body = {"model": "stopped", "from": "sd",
            "train": {"files": files, **FAST, "steps": 100000, "checkpoint_every": 2}}  # fmt: skip
    seen = 0
    with httpx.stream("POST", f"{server.url}/api/create", json=body, timeout=60) as reply:
        for line in reply.iter_lines():
            seen = json.loads(line).get("step") or seen
            if seen >= 5:
                break
    record = wait_for_model(sdk, "stopped")
    assert record["completed"] is False and record["total"] == 100000
    assert record["steps"] >= 4 and record["steps"] % 2 == 0
    assert len(record["losses"]) == record["steps"]
    assert "exports" not in record
    assert draw(sdk, "stopped") != draw(sdk, "sd")  # the checkpoint is a usable LoRA
    assert not list(store.root.glob(".training-*"))  # the job's work folder is gone


def wait_for_model(sdk: Client, name: str, seconds: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(model.model.startswith(name) for model in sdk.list().models):
            return sdk.show(name).training or {}
        time.sleep(0.2)
    raise AssertionError(f"{name} was not stored within {seconds} s")


def test_one_training_at_a_time_and_it_takes_the_machine(
    sdk: Client, server: Any, store: Store, tmp_path: Path
) -> None:
    add_fake(store, "chat")
    sdk.generate("chat", "hello", options={"num_predict": 1})
    assert [model.name for model in sdk.ps().models] == ["chat:latest"]
    files = upload(sdk, tmp_path / "photos", PICTURES)
    body = {"model": "first", "from": "sd", "train": {"files": files, **FAST, "steps": 100000}}
    with httpx.stream("POST", f"{server.url}/api/create", json=body, timeout=60) as reply:
        lines = reply.iter_lines()
        while json.loads(next(lines)).get("status") != "training":
            pass
        with pytest.raises(Conflict, match="already training 'first:latest'"):
            train(sdk, "second", files, steps=1)
        assert sdk.ps().models == []  # unloaded for the training
        busy = httpx.post(f"{server.url}/api/generate", json={"model": "chat", "prompt": "hi"})
        assert busy.status_code == 503 and "training first" in busy.json()["error"]
    deadline = time.monotonic() + 30
    while server.scheduler.held_by and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sdk.generate("chat", "back", options={"num_predict": 1}).done


def test_a_vision_model_captions_the_pictures_that_have_none(
    sdk: Client, store: Store, tmp_path: Path
) -> None:
    from limner.cli.models import folder_files
    from limner.tiny import write_tiny_llava

    llava = write_tiny_llava(tmp_path / "llava", seed=0)
    add_model(store, "see", {rel: path.read_bytes() for rel, path in folder_files(llava)})
    files = upload(sdk, tmp_path / "photos", {"a.png": png("red"), "b.png": png("blue"),
                                              "b.txt": "a blue thing"})  # fmt: skip
    lines = train(sdk, "captioned", files, steps=1, caption_with="see", instance_prompt="zq")
    captioning = [line for line in lines if line.status == "captioning"]
    assert [(line.file, line.completed, line.total) for line in captioning] == [("a.png", 1, 1)]
    caption = captioning[0].caption or ""
    assert caption.strip()
    record = sdk.show("captioned").training or {}
    assert record["captions"] == {"a.png": caption}
    assert lines[-1].status == "success"


BOMB = io.BytesIO()
Image.new("1", (12000, 12000)).save(BOMB, format="PNG")  # a few KB, 144 M pixels


@pytest.mark.parametrize(
    ("files", "settings", "status", "message"),
    [
        ({}, {}, 400, "train.files is empty"),
        ({"a.txt": "words"}, {}, 400, "no PNG, JPEG or WebP pictures"),
        ({"a.png": "not a picture"}, {}, 400, "picture 'a.png' is not a PNG"),
        ({"a.png": BOMB.getvalue(), "a.txt": "x"}, {}, 413, "pixels, over the limit"),
        (
            {"a.png": png("red"), "metadata.jsonl": '{"file_name": "../a.png", "text": "x"}'},
            {},
            400,
            "points outside the dataset",
        ),
        ({"../a.png": png("red")}, {"instance_prompt": "x"}, 400, "points outside the dataset"),
        ({"a.png": png("red"), "a.txt": "x"}, {"steps": 0}, 400, "steps must be at least 1"),
        ({"a.png": png("red"), "a.txt": "x"}, {"rank": -2}, 400, "rank must be at least 1"),
        ({"a.png": png("red")}, {}, 400, "no caption for a.png"),
        ({"a.png": png("red")}, {"caption_with": "chat"}, 400, "does not see pictures"),
        ({"a.png": png("red")}, {"caption_with": "nobody"}, 400, "'nobody' not found"),
    ],
)
def test_bad_datasets_and_settings_are_refused_before_anything_starts(
    sdk: Client, server: Any, store: Store, tmp_path: Path,
    files: dict[str, Any], settings: dict[str, Any], status: int, message: str,
) -> None:  # fmt: skip
    add_model(store, "chat", {"config.json": b'{"model_type": "limner-fake-draw"}'})
    digests = {}
    for name, data in files.items():
        raw = data.encode() if isinstance(data, str) else data
        digests[name] = "sha256:" + hashlib.sha256(raw).hexdigest()
        httpx.post(f"{server.url}/api/blobs/{digests[name]}", content=raw)
    body = {"model": "bad", "from": "sd", "train": {"files": digests, **FAST, **settings}}
    reply = httpx.post(f"{server.url}/api/create", json=body, timeout=30)
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]
    assert server.scheduler.loads == 0 and not server.scheduler.held_by
    assert not any(model.model.startswith("bad") for model in sdk.list().models)


@pytest.mark.parametrize(
    ("base", "status", "message"),
    [("chat", 400, "cannot be trained"), ("missing", 404, 'model "missing" not found')],
)
def test_only_stable_diffusion_models_can_be_trained(
    sdk: Client, server: Any, store: Store, tmp_path: Path, base: str, status: int, message: str
) -> None:
    add_fake(store, "chat")
    files = upload(sdk, tmp_path / "photos", PICTURES)
    body = {"model": "bad", "from": base, "train": {"files": files}}
    reply = httpx.post(f"{server.url}/api/create", json=body)
    assert (reply.status_code, message in reply.json()["error"]) == (status, True), reply.text


def test_the_cli_trains_from_a_folder_and_saves_the_loss_curve_and_summary(
    sdk: Client, server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from limner.cli.main import main

    photos = tmp_path / "photos"
    for name, data in {**PICTURES, ".hidden.png": b"junk", "notes.md": "ignored"}.items():
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(data.encode() if isinstance(data, str) else data)
    monkeypatch.setenv("LIMNER_HOST", server.url)
    monkeypatch.chdir(tmp_path)
    flags = ["--steps", "4", "--resolution", "32", "--precision", "fp32", "--lr", "0.05",
             "--validation-every", "4", "--rank", "2"]  # fmt: skip
    assert main(["create", "zq-cli", "--from", "sd", "--train", str(photos), *flags]) == 0
    out = capsys.readouterr().out
    assert "copying file a.png" in out and "notes.md" not in out and "hidden" not in out
    assert "step 4/4" in out and "success" in out
    results = tmp_path / "zq-cli-training"
    with Image.open(results / "loss.png") as curve:
        assert curve.format == "PNG" and curve.width > 100
    assert json.loads((results / "summary.json").read_text())["parameters"]["rank"] == 2
    assert (results / "validation-step-00004.png").is_file()

    assert main(["show", "zq-cli"]) == 0
    shown = capsys.readouterr().out
    assert "completed" in shown and re.search(r"rank\s+2", shown)


@pytest.mark.slow
def test_a_server_that_shuts_down_keeps_the_last_checkpoint(
    sdk: Client, store: Store, make_server: Any, tmp_path: Path
) -> None:
    server = make_server()
    files = upload(Client(server.url), tmp_path / "photos", PICTURES)
    body = {"model": "shutdown", "from": "sd",
            "train": {"files": files, **FAST, "steps": 100000, "checkpoint_every": 2}}  # fmt: skip
    with httpx.stream("POST", f"{server.url}/api/create", json=body, timeout=60) as reply:
        for line in reply.iter_lines():
            if (json.loads(line).get("step") or 0) >= 3:
                break
        server.__exit__()  # uvicorn's shutdown: the training stops and stores its checkpoint
    record = store.json_layer(store.entry(store.resolve("shutdown")).manifest, m.TRAINING)
    assert record["completed"] is False and record["steps"] >= 2
