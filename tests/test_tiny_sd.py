"""The tiny Stable Diffusion is a real diffusers folder: fast, deterministic, and loadable."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from limner.tiny import write_tiny_sd

FILES = {
    "model_index.json",
    "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
}
IP_FILES = {"image_encoder/config.json", "image_encoder/model.safetensors"}
IP_FILES |= {"ip_adapter/ip-adapter.safetensors"}


def files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sd(tmp_path_factory.mktemp("tiny") / "sd", seed=0)


def test_written_fast_and_identical_for_a_seed(tmp_path: Path) -> None:
    started = time.perf_counter()
    first = write_tiny_sd(tmp_path / "a", seed=7)
    elapsed = time.perf_counter() - started
    second = write_tiny_sd(tmp_path / "b", seed=7)
    other = write_tiny_sd(tmp_path / "c", seed=8)
    plain = write_tiny_sd(tmp_path / "d", seed=7, ip_adapter=False)

    assert elapsed < 2.0
    assert files(first) == FILES | IP_FILES
    assert files(plain) == FILES
    for name in FILES | IP_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # A seed changes the weights only; the adapter adds files and changes no other weights.
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (first / weights).read_bytes() != (other / weights).read_bytes()
    assert (first / "tokenizer/vocab.json").read_bytes() == (
        other / "tokenizer/vocab.json"
    ).read_bytes()
    for name in FILES - {"model_index.json"}:
        assert (first / name).read_bytes() == (plain / name).read_bytes(), name


def test_inpaint_variant_has_a_9_channel_unet(tmp_path: Path) -> None:
    folder = write_tiny_sd(tmp_path / "inpaint", inpaint=True, ip_adapter=False)
    index = json.loads((folder / "model_index.json").read_text())
    config = json.loads((folder / "unet/config.json").read_text())
    conv_in = load_file(folder / "unet/diffusion_pytorch_model.safetensors")["conv_in.weight"]

    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    assert index["image_encoder"] == [None, None]
    assert config["in_channels"] == 9
    assert conv_in.shape == (32, 9, 3, 3)


def test_builds_without_torch_diffusers_or_transformers(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from limner.tiny import write_tiny_sd; "
        f"write_tiny_sd(Path({str(tmp_path)!r})); "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_component_loads_with_no_missing_or_unexpected_keys(tiny: Path) -> None:
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPVisionModelWithProjection

    loaders = [
        (UNet2DConditionModel, "unet"),
        (AutoencoderKL, "vae"),
        (CLIPTextModel, "text_encoder"),
        (CLIPVisionModelWithProjection, "image_encoder"),
    ]
    for cls, sub in loaders:
        _, info = cls.from_pretrained(tiny / sub, output_loading_info=True)
        problems = {k: v for k, v in info.items() if k != "error_msgs" and v}
        assert problems == {}, sub
        assert not info["error_msgs"], sub


def test_the_pipeline_and_its_ip_adapter_load(tiny: Path) -> None:
    pytest.importorskip("diffusers")
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny, safety_checker=None, requires_safety_checker=False, local_files_only=True
    )
    pipe.load_ip_adapter(
        str(tiny),
        subfolder="ip_adapter",
        weight_name="ip-adapter.safetensors",
        image_encoder_folder=None,
    )
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 64
    assert len(pipe.unet.config.down_block_types) == 4
    assert pipe.unet.encoder_hid_proj is not None
    assert pipe.feature_extractor.crop_size == {"height": 32, "width": 32}
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"


def test_the_clip_tokenizer_works_offline(tiny: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tiny / "tokenizer")
    vocab = json.loads((tiny / "tokenizer/vocab.json").read_text())

    ids = tokenizer("A photo of a cat, highly detailed").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|startoftext|>", "a</w>", "pho", "to</w>", "of</w>", "a</w>", "cat</w>", ",</w>",
        "highly</w>", "detailed</w>", "<|endoftext|>",
    ]  # fmt: skip
    assert tokenizer.model_max_length == 77
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (len(vocab) - 2, len(vocab) - 1)
    padded = tokenizer("a cat", padding="max_length", truncation=True, return_tensors="np")
    assert padded.input_ids.shape == (1, 77)
    # Text encoder ids match the tokenizer (its pooled output finds the real end token).
    config = json.loads((tiny / "text_encoder/config.json").read_text())
    assert (config["vocab_size"], config["eos_token_id"]) == (len(vocab), tokenizer.eos_token_id)
