"""Single-file Stable Diffusion checkpoints (Automatic1111/Civitai LDM layout), loaded offline
with limner's bundled configs; exercised on the tiny model, whose configs are bundled too."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import filecmp
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

import helpers
from limner.engines import (
    ENGINES,
    ImageRequest,
    ImageResult,
    LoadOptions,
    engine_for,
    sd_configs,
)
from limner.errors import InvalidRequest, UnsafeWeights
from limner.store import Store
from limner.store.create import create
from limner.store.described import stored_config
from limner.store.formats import safetensors_header, sd_checkpoint_type
from limner.tiny import write_tiny_sd, write_tiny_sd_checkpoint, write_tiny_sd_configs
from limner.types import CreateRequest

pytest.importorskip("diffusers")

import torch

from limner.engines.diffusion import DiffusionEngine, load, load_checkpoint

# diffusers' Euler scheduler calls np.array(tensor, copy=False); harmless, and not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("single")
    return {
        "folder": write_tiny_sd(root / "folder", seed=3, ip_adapter=False),
        "checkpoint": write_tiny_sd_checkpoint(root / "plain" / "tiny v1.safetensors", seed=3),
        "inpaint": write_tiny_sd_checkpoint(root / "inpaint" / "in.safetensors", inpaint=True),
    }


def draw(engine: DiffusionEngine, **fields: Any) -> ImageResult:
    fields = {"prompt": "a red cat", "steps": 2, "seed": 5, "scheduler": "euler", **fields}
    *_, result = engine.generate_image(ImageRequest(**fields), lambda: False)
    assert isinstance(result, ImageResult)
    return result


def png(size: tuple[int, int] = (64, 64), color: str = "blue") -> bytes:
    return helpers.picture(size=size, color=color)


# --- the tiny checkpoint ---------------------------------------------------------------------


def test_the_tiny_checkpoint_is_one_ldm_file_and_deterministic(
    files: dict[str, Path], tmp_path: Path
) -> None:
    header = safetensors_header(files["checkpoint"])
    prefixes = {key.split(".")[0] for key in header}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    assert header["model.diffusion_model.input_blocks.0.0.weight"]["shape"] == [32, 4, 3, 3]
    assert header["first_stage_model.decoder.mid.attn_1.q.weight"]["shape"] == [32, 32, 1, 1]
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in header
    again = write_tiny_sd_checkpoint(tmp_path / "again.safetensors", seed=3)
    assert again.read_bytes() == files["checkpoint"].read_bytes()


def test_types_are_read_from_the_header(files: dict[str, Path]) -> None:
    assert sd_checkpoint_type(safetensors_header(files["checkpoint"])) == "limner-tiny"
    assert sd_checkpoint_type(safetensors_header(files["inpaint"])) == "limner-tiny-inpaint"


def test_the_bundled_tiny_configs_are_what_limner_tiny_writes(tmp_path: Path) -> None:
    for family, inpaint in (("limner-tiny", False), ("limner-tiny-inpaint", True)):
        written = write_tiny_sd_configs(tmp_path / family, inpaint=inpaint)
        bundled = sd_configs.folder(family)
        names = sorted(p.relative_to(written).as_posix() for p in written.rglob("*.*"))
        assert names == sorted(p.relative_to(bundled).as_posix() for p in bundled.rglob("*.*"))
        for name in names:
            assert filecmp.cmp(written / name, bundled / name, shallow=False), name


# fp32 on both sides: the same weights, configs and seed give identical PNG bytes.
def test_the_checkpoint_draws_exactly_what_the_diffusers_folder_draws(
    files: dict[str, Path],
) -> None:
    assert ENGINES["sd-checkpoint"] == "limner.engines.diffusion:load_checkpoint"
    single = engine_for("sd-checkpoint")(files["checkpoint"].parent, LoadOptions(precision="fp32"))
    folder = load(files["folder"], LoadOptions(precision="fp32"))
    assert isinstance(single, DiffusionEngine)
    assert not single.ip_adapter and not single.inpainting_unet and single.default_size == 64
    a, b = draw(single), draw(folder)
    assert Image.open(io.BytesIO(a.png)).size == (64, 64)
    assert a.png == b.png
    assert (
        draw(single, image=png(), strength=0.5).png == draw(folder, image=png(), strength=0.5).png
    )


def test_extra_keys_of_real_checkpoints_are_ignored(files: dict[str, Path], tmp_path: Path) -> None:
    # A1111 files also hold the noise schedule, EMA counters and CLIP's position ids.
    from safetensors.numpy import load_file

    tensors = load_file(str(files["checkpoint"]))
    tensors["alphas_cumprod"] = np.linspace(1, 0, 1000, dtype=np.float32)
    tensors["model_ema.decay"] = np.array(0.9999, dtype=np.float32)
    key = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    tensors[key] = np.arange(77, dtype=np.int64)[None]
    (tmp_path / "full").mkdir()
    save_file(tensors, str(tmp_path / "full" / "full.safetensors"))
    full = load_checkpoint(tmp_path / "full", LoadOptions(precision="fp32"))
    plain = load_checkpoint(files["checkpoint"].parent, LoadOptions(precision="fp32"))
    assert draw(full).png == draw(plain).png


def test_the_inpainting_checkpoint_inpaints(files: dict[str, Path]) -> None:
    engine = load_checkpoint(files["inpaint"].parent, LoadOptions(precision="fp32"))
    assert engine.inpainting_unet
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    result = draw(engine, image=png(), mask=buffer.getvalue(), strength=1.0)
    assert result.parameters["mode"] == "inpaint"
    drawn = np.asarray(Image.open(io.BytesIO(result.png)).convert("RGB")).astype(int)
    assert (drawn[:, 32:] == [0, 0, 255]).all()  # kept exactly
    assert draw(engine).parameters["mode"] == "txt2img"


# --- what is refused -------------------------------------------------------------------------


def test_a_safetensors_file_that_is_no_sd_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "lora").mkdir()
    save_file({"lora_unet_x.lora_up.weight": np.zeros((4, 4), np.float32)},
              str(tmp_path / "lora" / "lora.safetensors"))  # fmt: skip
    with pytest.raises(InvalidRequest, match="not a Stable Diffusion checkpoint"):
        load_checkpoint(tmp_path / "lora", LoadOptions(precision="fp32"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidRequest, match=r"exactly one \.safetensors"):
        load_checkpoint(tmp_path / "empty", LoadOptions(precision="fp32"))


def header(**shapes: list[int]) -> dict[str, Any]:
    keys = {
        "unet": "model.diffusion_model.input_blocks.0.0.weight",
        "ctx": "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "xl_ctx": "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight",
        "clip": "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        "openclip": "cond_stage_model.model.token_embedding.weight",
        "xl_clip": "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        "xl_openclip": "conditioner.embedders.1.model.token_embedding.weight",
        "refiner": "conditioner.embedders.0.model.token_embedding.weight",
        "vae": "first_stage_model.encoder.conv_in.weight",
    }
    return {keys[name]: {"dtype": "F16", "shape": shape} for name, shape in shapes.items()}


SD15 = {"unet": [320, 4, 3, 3], "ctx": [320, 768], "clip": [49408, 768], "vae": [128, 3, 3, 3]}
SD2 = {**SD15, "ctx": [320, 1024], "clip": [], "openclip": [49408, 1024]}
SDXL = {"unet": [320, 4, 3, 3], "xl_ctx": [640, 2048], "xl_clip": [49408, 768],
        "xl_openclip": [49408, 1280], "vae": [128, 3, 3, 3]}  # fmt: skip


@pytest.mark.parametrize(
    ("shapes", "kind"),
    [(SD15, "sd15"), ({**SD15, "unet": [320, 9, 3, 3]}, "sd15-inpaint"), (SD2, "sd2"),
     ({**SD2, "unet": [320, 9, 3, 3]}, "sd2-inpaint"), (SDXL, "sdxl"),
     ({**SDXL, "unet": [320, 9, 3, 3]}, "sdxl-inpaint")],
)  # fmt: skip
def test_every_family_is_recognised_by_its_shapes(shapes: dict[str, list[int]], kind: str) -> None:
    shapes = {name: shape for name, shape in shapes.items() if shape}
    assert sd_checkpoint_type(header(**shapes)) == kind
    assert kind in sd_configs.FAMILIES


@pytest.mark.parametrize(
    ("shapes", "message"),
    [({**SD15, "unet": [320, 8, 3, 3]}, "8 input channels"),
     ({**SD15, "ctx": [320, 512]}, "unknown Stable Diffusion variant"),
     ({**SD15, "unet": [640, 4, 3, 3]}, "should have a UNet of width 320"),
     ({**SD15, "clip": [49408, 1024]}, "needs its text encoder"),
     ({k: v for k, v in SD15.items() if k != "vae"}, "has no VAE"),
     ({"unet": [384, 4, 3, 3], "refiner": [49408, 1280], "vae": [128, 3, 3, 3]}, "SDXL refiner")],
)  # fmt: skip
def test_other_layouts_are_refused_with_the_reason(
    shapes: dict[str, list[int]], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        sd_checkpoint_type(header(**shapes))


# --- the store -------------------------------------------------------------------------------


def test_create_makes_an_sd_checkpoint_model_that_loads_from_its_blob(
    files: dict[str, Path], tmp_path: Path
) -> None:
    store = Store(tmp_path / "models")
    digest = store.blobs.write_bytes(files["inpaint"].read_bytes())[0]
    for _ in create(store, CreateRequest(model="tiny-ckpt", files={"tiny.safetensors": digest})):
        pass
    manifest = store.entry(store.resolve("tiny-ckpt")).manifest
    config = stored_config(store, manifest)
    assert config["model_format"] == "sd-checkpoint"
    assert config["capabilities"] == ["image"]
    assert config["checkpoint_type"] == "limner-tiny-inpaint"
    assert config["default_size"] == 64 and config["model_family"] == "stable-diffusion"
    info = config["model_info"]
    assert info["stable-diffusion.pipeline"] == "StableDiffusionInpaintPipeline"
    assert info["stable-diffusion.inpainting_unet"] is True
    assert info["general.parameter_count"] == 2448228 + 248079 + 48864  # UNet, VAE, CLIP

    # The runner hands engines a folder of links to the blobs, under the layers' names.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tiny.safetensors").symlink_to(store.blobs.path(digest))
    engine = load_checkpoint(tmp_path / "run", LoadOptions(precision="fp32"))
    assert engine.inpainting_unet


def test_create_refuses_pickle_and_non_sd_single_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    pickled = store.blobs.write_bytes(b"PK\x03\x04" + b"\x00" * 64)[0]  # torch.save's zip
    with pytest.raises(UnsafeWeights, match="pickle"):
        create(store, CreateRequest(model="m", files={"model.ckpt": pickled}))
    plain = tmp_path / "plain.safetensors"
    save_file({"weight": np.zeros((2, 2), np.float32)}, str(plain))
    other = store.blobs.write_bytes(plain.read_bytes())[0]
    with pytest.raises(InvalidRequest, match="not a Stable Diffusion checkpoint"):
        create(store, CreateRequest(model="m", files={"model.safetensors": other}))
    assert store.entries() == []


# --- the bundled real configs ----------------------------------------------------------------


def test_the_clip_tokenizer_built_from_the_bundled_bpe_gives_clips_ids(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    vocab, merges = sd_configs.clip_vocab()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    config = sd_configs.materialise("sdxl", tmp_path / "sdxl")
    clip_l = CLIPTokenizer.from_pretrained(config / "tokenizer")
    open_clip = CLIPTokenizer.from_pretrained(config / "tokenizer_2")
    ids = [49406, 320, 1125, 539, 320, 2368, 49407]
    assert clip_l("a photo of a cat").input_ids == ids
    assert open_clip("A photo of a CAT").input_ids == ids
    assert clip_l.model_max_length == open_clip.model_max_length == 77
    padded = {"padding": "max_length", "max_length": 77}
    assert clip_l("a cat", **padded).input_ids[3:5] == [49407, 49407]  # pad <|endoftext|>
    assert open_clip("a cat", **padded).input_ids[3:5] == [49407, 0]  # pad "!"
    assert json.loads((config / "tokenizer" / "vocab.json").read_text()) == vocab


# (family, component) -> parameters, as published for the real models.
PARAMETERS = {
    ("sd15", "unet"): 859_520_964,
    ("sd15", "vae"): 83_653_863,
    ("sd15", "text_encoder"): 123_060_480,
    ("sd15-inpaint", "unet"): 859_535_364,
    ("sd2", "unet"): 865_910_724,
    ("sd2", "text_encoder"): 340_387_840,
    ("sd2-inpaint", "unet"): 865_925_124,
    ("sdxl", "unet"): 2_567_463_684,
    ("sdxl", "vae"): 83_653_863,
    ("sdxl", "text_encoder"): 123_060_480,
    ("sdxl", "text_encoder_2"): 694_659_840,
    ("sdxl-inpaint", "unet"): 2_567_478_084,
    ("sdxl-inpaint", "text_encoder_2"): 694_659_840,
}


@pytest.mark.parametrize(
    "family", ["sd15", "sd15-inpaint", "sd2", "sd2-inpaint", "sdxl", "sdxl-inpaint"]
)
def test_each_real_familys_components_build_with_the_known_sizes(family: str) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = sd_configs.folder(family)
    index = json.loads((root / "model_index.json").read_text())
    built: dict[str, torch.nn.Module] = {}
    with torch.device("meta"):  # shapes only: no memory, no time
        built["unet"] = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(root / "unet")
        )
        built["vae"] = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))
        for name in ("text_encoder", "text_encoder_2"):
            if name in index:
                text = CLIPTextConfig.from_pretrained(root / name)
                cls = {"CLIPTextModel": CLIPTextModel,
                       "CLIPTextModelWithProjection": CLIPTextModelWithProjection}[index[name][1]]  # fmt: skip
                built[name] = cls(text)
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in built.items()}
    for (known_family, component), expected in PARAMETERS.items():
        if known_family == family:
            assert counts[component] == expected, component
    assert built["unet"].config.in_channels == (9 if family.endswith("inpaint") else 4)
    scheduler = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type" if family == "sd2" else "beta_schedule"] == (
        "v_prediction" if family == "sd2" else "scaled_linear"
    )
    tokenizers = {name for name in index if name.startswith("tokenizer")}
    assert tokenizers == {n.replace("text_encoder", "tokenizer") for n in built if "text" in n}
