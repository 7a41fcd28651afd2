"""LoRA training: datasets from folders and zips, and real training of the tiny random SD 1.5."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io
import json
import math
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from limner.errors import InvalidImage, InvalidRequest, TooLarge
from limner.tiny import write_tiny_sd

pytest.importorskip("peft")

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from limner.engines import lora, training
from limner.engines.lora import train
from limner.engines.training import (
    Example,
    TrainCheckpoint,
    TrainDone,
    TrainProgress,
    TrainRequest,
    TrainStep,
    TrainValidation,
    load_dataset,
)


def _png(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _folder(root: Path, files: dict[str, bytes | str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def _zip(path: Path, files: dict[str, bytes | str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return path


def _captions(examples: list[Example]) -> dict[str, str]:
    return {example.name: example.caption for example in examples}


# --- Datasets ----------------------------------------------------------------------------


def test_captions_come_from_same_stem_txt_files(tmp_path: Path) -> None:
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(_png(1))).save(jpeg, format="JPEG")
    files = {
        "a.png": _png(0),
        "a.txt": " a red cat \n",
        "b.jpg": jpeg.getvalue(),
        "b.txt": "a blue dog",
    }
    folder = _folder(tmp_path, files)
    examples = load_dataset(folder)
    assert _captions(examples) == {"a.png": "a red cat", "b.jpg": "a blue dog"}
    assert examples[0].picture == _png(0)


def test_metadata_jsonl_captions_win_over_txt_and_work_in_subfolders(tmp_path: Path) -> None:
    lines = [{"file_name": "a.png", "text": "from metadata"}, {"file_name": "b.webp", "text": "b"}]
    webp = io.BytesIO()
    Image.open(io.BytesIO(_png(2))).save(webp, format="WEBP")
    folder = _folder(
        tmp_path,
        {
            "set/metadata.jsonl": "\n".join(json.dumps(line) for line in lines) + "\n\n",
            "set/a.png": _png(0),
            "set/a.txt": "from txt",
            "set/b.webp": webp.getvalue(),
        },
    )
    assert _captions(load_dataset(folder)) == {"set/a.png": "from metadata", "set/b.webp": "b"}


def test_instance_prompt_captions_pictures_without_their_own(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"a.png": _png(0), "b.png": _png(1), "b.txt": "own caption"})
    examples = load_dataset(folder, instance_prompt="a photo of sks dog")
    assert _captions(examples) == {"a.png": "a photo of sks dog", "b.png": "own caption"}


def test_pictures_without_any_caption_are_refused_by_name(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"a.png": _png(0), "b.png": _png(1), "b.txt": "  "})
    with pytest.raises(InvalidRequest, match=r"no caption for a\.png, b\.png"):
        load_dataset(folder)


@pytest.mark.parametrize("name", ["../a.png", "/etc/a.png", "..\\a.png", "C:/a.png"])
def test_metadata_file_names_outside_the_dataset_are_refused(tmp_path: Path, name: str) -> None:
    line = json.dumps({"file_name": name, "text": "x"})
    folder = _folder(tmp_path / "d", {"metadata.jsonl": line, "a.png": _png(0)})
    with pytest.raises(InvalidRequest, match="outside the dataset"):
        load_dataset(folder)


def test_metadata_naming_a_missing_picture_is_refused(tmp_path: Path) -> None:
    line = json.dumps({"file_name": "gone.png", "text": "x"})
    folder = _folder(tmp_path, {"metadata.jsonl": line, "a.png": _png(0), "a.txt": "a"})
    with pytest.raises(InvalidRequest, match=r"metadata\.jsonl line 1 names 'gone\.png'"):
        load_dataset(folder)


def test_other_files_are_ignored_and_broken_pictures_refused(tmp_path: Path) -> None:
    files: dict[str, bytes | str] = {
        "a.png": _png(0),
        "a.txt": "a",
        "notes.md": "not a picture",
        "model.bin": b"\x00" * 10,
        ".hidden.png": b"junk",
    }
    assert _captions(load_dataset(_folder(tmp_path / "ok", files))) == {"a.png": "a"}
    broken = _folder(tmp_path / "broken", {**files, "b.png": b"not a png"})
    with pytest.raises(InvalidImage, match=r"'b\.png' is not a PNG, JPEG or WebP"):
        load_dataset(broken)


def test_an_empty_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="no PNG, JPEG or WebP"):
        load_dataset(_folder(tmp_path, {"a.txt": "a caption alone"}))


def test_symlinks_in_a_folder_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png(0))
    folder = _folder(tmp_path / "d", {"a.png": _png(1), "a.txt": "a"})
    (folder / "b.png").symlink_to(outside)
    with pytest.raises(InvalidRequest, match=r"symbolic link, 'b\.png'"):
        load_dataset(folder)


def test_a_zip_loads_like_a_folder_skipping_macos_junk(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "set.zip",
        {
            "mine/a.png": _png(0),
            "mine/a.txt": "zipped",
            "__MACOSX/mine/._a.png": b"resource fork",
        },
    )
    examples = load_dataset(archive)
    assert _captions(examples) == {"mine/a.png": "zipped"}
    assert examples[0].picture == _png(0)


@pytest.mark.parametrize("member", ["../evil.txt", "/abs.txt", "a/../../evil.png"])
def test_a_zip_with_a_member_outside_is_refused(tmp_path: Path, member: str) -> None:
    archive = _zip(tmp_path / "set.zip", {"a.png": _png(0), "a.txt": "a", member: "x"})
    with pytest.raises(InvalidRequest, match="points outside the dataset"):
        load_dataset(archive)


def test_a_zip_with_a_symlink_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "set.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.png", _png(0))
        link = zipfile.ZipInfo("a.txt")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(InvalidRequest, match=r"symbolic link, 'a\.txt'"):
        load_dataset(path)


def test_a_zip_over_the_size_bound_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(training, "MAX_DATASET_BYTES", 100)
    archive = _zip(tmp_path / "set.zip", {"a.png": _png(0), "a.txt": "a"})
    with pytest.raises(TooLarge, match="at most 100"):
        load_dataset(archive)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr_scheduler", "polynomial", "lr_scheduler must be one of"),
        ("resolution", 30, "multiple of 8"),
        ("steps", 0, "steps must be at least 1"),
        ("learning_rate", math.nan, "learning_rate must be a positive number"),
        ("alpha", -1.0, "alpha must be a positive number"),
    ],
)
def test_impossible_requests_are_refused_before_loading(
    tmp_path: Path, field: str, value: Any, message: str
) -> None:
    request = TrainRequest(**{field: value})
    examples = [Example("a.png", _png(0), "a")]
    with pytest.raises(InvalidRequest, match=message):
        next(train(tmp_path / "no-model", examples, request, tmp_path / "out", lambda: False))


# --- Training ----------------------------------------------------------------------------

FAST = {"resolution": 32, "precision": "fp32", "learning_rate": 5e-2}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: bit-identical losses, and ~10x faster when the CPU is busy (measured:
    OpenMP workers spin against other processes on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sd(tmp_path_factory.mktemp("lora") / "sd", ip_adapter=False)


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return [Example(f"{i}.png", _png(i), f"a photo of thing {i}") for i in range(3)]


def _run(
    model: Path, examples: list[Example], output: Path, stop_after: int = 0, **fields: Any
) -> list[TrainStep]:
    done: list[TrainStep] = []

    def cancelled() -> bool:
        progress = sum(isinstance(step, TrainProgress) for step in done)
        return bool(stop_after) and progress >= stop_after

    done.extend(train(model, examples, TrainRequest(**{**FAST, **fields}), output, cancelled))
    return done


def _losses(steps: list[TrainStep]) -> list[float]:
    return [step.loss for step in steps if isinstance(step, TrainProgress)]


@pytest.fixture(scope="module")
def trained(
    model: Path, examples: list[Example], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, list[TrainStep], Any]]:
    """Four steps with checkpoints and a validation picture; also the trained model itself."""
    output = tmp_path_factory.mktemp("trained")
    loaded: list[Any] = []
    real_train = lora._train

    def spy(model: Any, *rest: Any) -> Any:
        loaded.append(model)
        return real_train(model, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lora, "_train", spy)
        patch.setattr(lora, "VALIDATION_STEPS", 2)
        # alpha != rank: the saved files must carry the scale alpha / rank = 2.
        fields = {"steps": 4, "checkpoint_every": 2, "validation_every": 4, "alpha": 8.0}
        steps = _run(model, examples, output, **fields)
    yield output, steps, loaded[0]


def _pipeline(model: Path) -> Any:
    pipe = StableDiffusionPipeline.from_pretrained(
        model, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _draw(pipe: Any) -> np.ndarray:
    generator = torch.Generator().manual_seed(7)
    result = pipe(
        "a photo of thing 1",
        height=32,
        width=32,
        num_inference_steps=2,
        generator=generator,
        output_type="np",
    )
    return np.asarray(result.images[0])


@pytest.mark.slow
def test_training_yields_progress_checkpoints_a_validation_picture_and_done(
    trained: tuple[Path, list[TrainStep], Any],
) -> None:
    output, steps, _ = trained
    kinds = [type(step).__name__ for step in steps]
    assert kinds == [
        "TrainProgress",
        "TrainProgress",
        "TrainCheckpoint",
        "TrainProgress",
        "TrainProgress",
        "TrainCheckpoint",
        "TrainValidation",
        "TrainDone",
    ]
    losses = _losses(steps)
    assert all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert [s.step for s in steps if isinstance(s, TrainProgress)] == [1, 2, 3, 4]
    checkpoints = [s for s in steps if isinstance(s, TrainCheckpoint)]
    assert [c.path for c in checkpoints] == [
        output / f"checkpoint-{n}" / "pytorch_lora_weights.safetensors" for n in (2, 4)
    ]
    assert all(c.path.is_file() for c in checkpoints)
    validation = next(s for s in steps if isinstance(s, TrainValidation))
    assert Image.open(io.BytesIO(validation.png)).format == "PNG"
    done = steps[-1]
    assert isinstance(done, TrainDone)
    assert done.path == output / "pytorch_lora_weights.safetensors"
    assert done.final_loss == losses[-1]
    assert done.parameters["resolution"] == 32
    assert done.parameters["alpha"] == 8.0
    assert done.parameters["trainable_parameters"] > 0
    assert sorted(p.name for p in output.iterdir() if p.is_file()) == [
        "lora_kohya.safetensors",
        "pytorch_lora_weights.safetensors",
    ]


@pytest.mark.slow
def test_only_lora_weights_change(model: Path, trained: tuple[Path, list[TrainStep], Any]) -> None:
    unet = trained[2].unet
    original = load_file(model / "unet" / "diffusion_pytorch_model.safetensors")
    state = unet.state_dict()
    base = {k.replace(".base_layer", ""): v for k, v in state.items() if "lora_" not in k}
    assert base.keys() == original.keys()
    assert all(torch.equal(base[key], original[key]) for key in original)
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)  # B starts at zero


@pytest.mark.slow
def test_the_same_seed_gives_the_same_losses_and_another_seed_others(
    model: Path,
    examples: list[Example],
    trained: tuple[Path, list[TrainStep], Any],
    tmp_path: Path,
) -> None:
    again = _losses(_run(model, examples, tmp_path / "again", steps=2, alpha=8.0))
    other = _losses(_run(model, examples, tmp_path / "other", steps=2, alpha=8.0, seed=1))
    # Bit-identical on one torch thread; on more, CPU kernels sum in a varying order (~1e-7).
    assert again == _losses(trained[1])[:2]
    assert all(abs(a - b) > 1e-3 for a, b in zip(other, again, strict=True))


@pytest.mark.slow
def test_the_saved_files_load_and_change_the_pictures(
    model: Path, trained: tuple[Path, list[TrainStep], Any]
) -> None:
    output = trained[0]
    pipe = _pipeline(model)
    base = _draw(pipe)
    pipe.load_lora_weights(output)
    with_lora = _draw(pipe)
    assert np.abs(with_lora - base).max() > 1e-2
    np.testing.assert_allclose(with_lora, _draw(trained[2].pipe), atol=1e-5)  # alpha kept
    pipe.unload_lora_weights()
    np.testing.assert_allclose(_draw(pipe), base, atol=1e-5)

    kohya = load_file(output / "lora_kohya.safetensors")
    assert kohya and all(key.startswith("lora_unet_") for key in kohya)
    assert {key.split(".", 1)[1] for key in kohya} == {
        "alpha",
        "lora_down.weight",
        "lora_up.weight",
    }
    assert all(float(kohya[key]) == 8.0 for key in kohya if key.endswith(".alpha"))
    pipe.load_lora_weights(output, weight_name="lora_kohya.safetensors")
    np.testing.assert_allclose(_draw(pipe), with_lora, atol=1e-4)


@pytest.mark.slow
def test_the_saved_adapter_reloads_bit_for_bit(
    model: Path, trained: tuple[Path, list[TrainStep], Any]
) -> None:
    from peft.utils import get_peft_model_state_dict

    trained_weights = get_peft_model_state_dict(trained[2].unet)
    pipe = _pipeline(model)
    pipe.load_lora_weights(trained[0], adapter_name="reloaded")
    reloaded = get_peft_model_state_dict(pipe.unet, adapter_name="reloaded")
    assert trained_weights.keys() == reloaded.keys() and len(reloaded) > 0
    for key, tensor in trained_weights.items():
        assert torch.equal(tensor.float(), reloaded[key]), key


@pytest.mark.slow
def test_cancelling_stops_cleanly_leaving_a_usable_checkpoint(
    model: Path, examples: list[Example], tmp_path: Path
) -> None:
    steps = _run(model, examples, tmp_path, stop_after=2, steps=10, checkpoint_every=2)
    assert [type(step).__name__ for step in steps] == [
        "TrainProgress",
        "TrainProgress",
        "TrainCheckpoint",
    ]
    assert not (tmp_path / "pytorch_lora_weights.safetensors").exists()
    pipe = _pipeline(model)
    pipe.load_lora_weights(tmp_path / "checkpoint-2")
    assert np.isfinite(_draw(pipe)).all()
    assert [p.name for p in (tmp_path / "checkpoint-2").iterdir()] == [
        "pytorch_lora_weights.safetensors"
    ]
