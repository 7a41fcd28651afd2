"""What a model file or folder holds, read from its bytes and its configs, never its names.

`sniff` tells safetensors, GGUF and pickle apart by their first bytes; `config_for_folder`
turns a folder of uploaded files into the manifest's config blob (format, family,
capabilities, sizes) for diffusers pipelines, Hugging Face LLaVA folders and single-file
Stable Diffusion checkpoints, whose family `sd_checkpoint_type` reads from the tensor shapes
in the header alone. A drawing model's tiny autoencoder (TAESD) lives in `vae_tiny/`
(`check_tiny_vae`); one on its own (a pulled TAESD repo) is a model without capabilities,
there to be added to drawing models.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from limner.errors import InvalidRequest
from limner.store.described import human_count

SAFETENSORS, GGUF, PICKLE, OTHER = "safetensors", "gguf", "pickle", "other"
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# A drawing model's tiny autoencoder (TAESD): diffusers' AutoencoderTiny in this folder.
TINY_VAE_FOLDER, TINY_VAE_CLASS, TINY_VAE_FORMAT = "vae_tiny", "AutoencoderTiny", "taesd"


def sniff(path: Path) -> str:
    """What a file holds, from its first bytes."""
    with path.open("rb") as f:
        head = f.read(16)
    if head[:4] == b"GGUF":
        return GGUF
    if head[:4] == b"PK\x03\x04" or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return PICKLE  # torch.save zip archive, or a raw pickle stream
    if len(head) >= 9:
        (length,) = struct.unpack("<Q", head[:8])
        if (
            2 <= length <= min(MAX_SAFETENSORS_HEADER, path.stat().st_size - 8)
            and head[8:9] == b"{"
        ):
            return SAFETENSORS
    return OTHER


def safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header: dict[str, Any] = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def config_for_folder(kinds: dict[str, tuple[str, Path]]) -> dict[str, Any]:
    weights = [path for kind, path in kinds.values() if kind == SAFETENSORS]
    if "model_index.json" in kinds:
        return _diffusers_config(kinds, weights)
    if len(kinds) == 1 and len(weights) == 1:
        # One safetensors file and nothing else: a single-file Stable Diffusion checkpoint.
        return _checkpoint_config(next(iter(kinds)), weights[0])
    if "config.json" not in kinds:
        raise InvalidRequest(
            "the model files need a config.json (a Hugging Face model folder) "
            "or a model_index.json (a diffusers folder), or must be one Stable Diffusion "
            ".safetensors checkpoint"
        )
    hf = json.loads(kinds["config.json"][1].read_text())
    if hf.get("_class_name") == TINY_VAE_CLASS:
        return _tiny_vae_config(hf, weights)
    model_type = hf.get("model_type")
    if model_type in FAKE_CAPABILITIES:
        return {
            "model_format": "fake",
            "model_family": "fake",
            "capabilities": FAKE_CAPABILITIES[model_type],
            "model_info": {"general.architecture": "fake", "fake.context_length": 4096},
        }
    if not weights:
        raise InvalidRequest("no safetensors weights among the model files")
    if model_type in ENCODERS:
        return _encoder_config(hf, weights)
    if model_type == "llava":
        return _with_chat_template(_llava_config(hf, weights), kinds)
    if isinstance(hf.get("vision_config"), dict) or _causal(hf):
        sees = isinstance(hf.get("vision_config"), dict)
        return _with_chat_template(_chat_config(hf, weights, sees), kinds)
    raise InvalidRequest(
        f"model_type {model_type!r} is not supported: limner runs vision-language models "
        "(a config with a vision_config), causal language models (architectures "
        f"...ForCausalLM) and embedding encoders ({', '.join(sorted(ENCODERS))})"
    )


# Encoders that embed text (sentence-transformers' models are these with a pooling module).
ENCODERS = {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "modernbert"}


# The scripted fake engine (engines/fake.py) chats or draws, for tests above the engine seam.
FAKE_CAPABILITIES = {"limner-fake": ["completion", "vision"], "limner-fake-draw": ["image"]}


def _count_parameters(weights: list[Path]) -> tuple[int, set[str]]:
    """How many parameters the safetensors files hold, and in which dtypes."""
    params, dtypes = 0, set()
    for path in weights:
        for tensor in safetensors_header(path).values():
            count = 1
            for dim in tensor["shape"]:
                count *= dim
            params += count
            dtypes.add(tensor["dtype"])
    return params, dtypes


def _diffusers_config(kinds: dict[str, tuple[str, Path]], weights: list[Path]) -> dict[str, Any]:
    """A Stable Diffusion pipeline in diffusers' folder layout."""

    def component(name: str) -> dict[str, Any]:
        entry = kinds.get(name)
        data: dict[str, Any] = json.loads(entry[1].read_text()) if entry else {}
        return data

    index, unet, vae, scheduler = (
        component("model_index.json"),
        component("unet/config.json"),
        component("vae/config.json"),
        component("scheduler/scheduler_config.json"),
    )
    pipeline = index.get("_class_name", "")
    if not pipeline.startswith("StableDiffusion") or not unet:
        raise InvalidRequest(
            f"pipeline {pipeline!r} is not supported; limner draws with Stable Diffusion 1.x, 2.x and XL"
        )
    if not weights:
        raise InvalidRequest("no safetensors weights among the model files")
    scale = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    xl = "XL" in pipeline
    family = "stable-diffusion-xl" if xl else "stable-diffusion"
    style = any(name.startswith("image_encoder/") for name in kinds)
    tiny = component(f"{TINY_VAE_FOLDER}/config.json")
    if tiny:
        check_tiny_vae(tiny, vae.get("latent_channels", 4), f"{TINY_VAE_FOLDER}/")
    default_size = unet.get("sample_size", 64) * scale
    info = {
        f"{family}.pipeline": pipeline,
        f"{family}.default_size": default_size,
        f"{family}.vae_scale_factor": scale,
        f"{family}.unet.in_channels": unet.get("in_channels", 4),
        f"{family}.inpainting_unet": unet.get("in_channels", 4) == 9,
        f"{family}.ip_adapter": style,
        f"{family}.tiny_vae": bool(tiny),
        # What the engine reads its default steps and guidance from (drawing.sampling).
        f"{family}.scheduler": (index.get("scheduler") or [None, scheduler.get("_class_name")])[-1],
        f"{family}.timestep_spacing": scheduler.get("timestep_spacing"),
    }
    return _drawing_config("diffusers", family, weights, default_size, info)


def check_tiny_vae(config: dict[str, Any], latent_channels: int, name: str) -> None:
    """`config` (a config.json) must be diffusers' AutoencoderTiny and decode the model's
    `latent_channels`; else InvalidRequest saying which."""
    if config.get("_class_name") != TINY_VAE_CLASS:
        raise InvalidRequest(
            f"{name} is not a tiny autoencoder: its config.json names "
            f"{config.get('_class_name')!r}, not {TINY_VAE_CLASS!r} (TAESD or TAESDXL in "
            "diffusers' layout, as in madebyollin/taesd)"
        )
    channels = config.get("latent_channels", 4)
    if channels != latent_channels:
        raise InvalidRequest(
            f"{name} decodes {channels} latent channels, but the model's VAE makes "
            f"{latent_channels}; use the tiny autoencoder of the model's family (TAESD for "
            "SD 1.x/2.x, TAESDXL for SDXL)"
        )


def _tiny_vae_config(hf: dict[str, Any], weights: list[Path]) -> dict[str, Any]:
    """A tiny autoencoder on its own (a pulled madebyollin/taesd): it runs as part of a
    drawing model (`limner create NAME --from MODEL --tiny-vae THIS`), so it has no
    capability of its own."""
    if not weights:
        raise InvalidRequest("no safetensors weights among the model files")
    params, dtypes = _count_parameters(weights)
    return {
        "model_format": TINY_VAE_FORMAT,
        "model_family": "taesd",
        "model_families": ["taesd"],
        "model_type": human_count(params),
        "file_type": "/".join(sorted(d.upper() for d in dtypes)),
        "capabilities": [],
        "model_info": {
            "general.architecture": "taesd",
            "general.parameter_count": params,
            "taesd.latent_channels": hf.get("latent_channels", 4),
        },
    }


# --- single-file Stable Diffusion checkpoints (LDM layout) ----------------------------------

LDM_UNET = "model.diffusion_model."
LDM_VAE = "first_stage_model."
LDM_CLIP = "cond_stage_model.transformer.text_model."  # SD 1.x: CLIP-L (transformers' names)
LDM_OPENCLIP = "cond_stage_model.model."  # SD 2.x: OpenCLIP-H (open_clip's names)
XL_CLIP, XL_OPENCLIP = "conditioner.embedders.0.", "conditioner.embedders.1."
CONV_IN = LDM_UNET + "input_blocks.0.0.weight"
# The first cross-attention's key projection: its input width is the text context width.
SD_CONTEXT = LDM_UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
XL_CONTEXT = LDM_UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"

# checkpoint type (= limner's bundled config of that name) -> what the manifest reports.
SD_CHECKPOINTS: dict[str, dict[str, Any]] = {
    "sd15": {"pipeline": "StableDiffusionPipeline", "size": 512},
    "sd15-inpaint": {"pipeline": "StableDiffusionInpaintPipeline", "size": 512},
    "sd2": {"pipeline": "StableDiffusionPipeline", "size": 768},
    "sd2-inpaint": {"pipeline": "StableDiffusionInpaintPipeline", "size": 512},
    "sdxl": {"pipeline": "StableDiffusionXLPipeline", "size": 1024},
    "sdxl-inpaint": {"pipeline": "StableDiffusionXLInpaintPipeline", "size": 1024},
    "limner-tiny": {"pipeline": "StableDiffusionPipeline", "size": 64},
    "limner-tiny-inpaint": {"pipeline": "StableDiffusionInpaintPipeline", "size": 64},
}
# Per base type: UNet width (conv_in's output channels), text context width, and one tensor
# of each text encoder with the width it must have (the text encoders' hidden sizes).
_SD_SHAPES: dict[str, tuple[int, int, dict[str, tuple[int, int]]]] = {
    "sd15": (320, 768, {LDM_CLIP + "embeddings.token_embedding.weight": (1, 768)}),
    "sd2": (320, 1024, {LDM_OPENCLIP + "token_embedding.weight": (1, 1024)}),
    "sdxl": (
        320,
        2048,
        {
            XL_CLIP + "transformer.text_model.embeddings.token_embedding.weight": (1, 768),
            XL_OPENCLIP + "model.token_embedding.weight": (1, 1280),
        },
    ),
    "limner-tiny": (32, 32, {LDM_CLIP + "embeddings.token_embedding.weight": (1, 32)}),
}


def sd_checkpoint_type(header: dict[str, Any], name: str = "the file") -> str:
    """Which Stable Diffusion a single-file LDM checkpoint is, from its safetensors header.

    SDXL if it has a second text encoder (`conditioner.embedders.1.`); SD 2.x if its
    cross-attention reads 1024-wide text (OpenCLIP-H); SD 1.x if 768 (CLIP-L); limner's tiny
    test model at its tiny widths; `-inpaint` if the UNet takes 9 input channels. Every width
    is checked against the bundled config, and the VAE and text encoders must be present.
    Anything else raises InvalidRequest saying why.
    """
    shapes = {key: list(value.get("shape", [])) for key, value in header.items()}
    conv_in = shapes.get(CONV_IN, [])
    if not any(key.startswith(LDM_UNET) for key in shapes) or len(conv_in) != 4:
        raise InvalidRequest(
            f"{name} is not a Stable Diffusion checkpoint: it has no UNet under "
            f"'{LDM_UNET}' (limner reads single files in the original LDM layout of "
            "Automatic1111/Civitai checkpoints)"
        )
    width, channels = conv_in[0], conv_in[1]
    if channels not in (4, 9):
        raise InvalidRequest(
            f"{name}: its UNet takes {channels} input channels; limner runs Stable Diffusion "
            "checkpoints with 4 (text-to-image) or 9 (inpainting) channels"
        )
    if any(key.startswith(XL_OPENCLIP) for key in shapes):
        base, context = "sdxl", shapes.get(XL_CONTEXT, [0, 0])[1:2]
    elif any(key.startswith(XL_CLIP) for key in shapes):
        raise InvalidRequest(
            f"{name} looks like an SDXL refiner (one OpenCLIP text encoder under "
            f"'{XL_CLIP}'); refiners only finish another model's pictures, limner does not "
            "run them"
        )
    else:
        context = shapes.get(SD_CONTEXT, [0, 0])[1:2]
        known = {768: "sd15", 1024: "sd2", 32: "limner-tiny"}
        base = known.get(context[0], "") if context else ""
        if not base:
            raise InvalidRequest(
                f"{name}: unknown Stable Diffusion variant (text context width "
                f"{context[0] if context else 'missing'}); limner recognises SD 1.x (768), "
                "SD 2.x (1024) and SDXL checkpoints"
            )
    unet_width, context_width, text = _SD_SHAPES[base]
    if width != unet_width or context != [context_width]:
        raise InvalidRequest(
            f"{name}: a {base} checkpoint should have a UNet of width {unet_width} reading "
            f"{context_width}-wide text, but this one is {width} wide and reads "
            f"{context[0] if context else 'no'} text context"
        )
    for key, (dim, size) in text.items():
        shape = shapes.get(key, [])
        if len(shape) <= dim or shape[dim] != size:
            raise InvalidRequest(
                f"{name}: a {base} checkpoint needs its text encoder ('{key}' of width {size}); "
                f"found {shape or 'none'}"
            )
    if not any(key.startswith(LDM_VAE) for key in shapes):
        raise InvalidRequest(
            f"{name} has no VAE (no '{LDM_VAE}' weights); limner needs a checkpoint with "
            "its VAE baked in"
        )
    return f"{base}-inpaint" if channels == 9 else base


def _checkpoint_config(name: str, path: Path) -> dict[str, Any]:
    """A single-file Stable Diffusion checkpoint (LDM layout): format "sd-checkpoint"."""
    kind = sd_checkpoint_type(safetensors_header(path), repr(name))
    xl = kind.startswith("sdxl")
    family = "stable-diffusion-xl" if xl else "stable-diffusion"
    size = SD_CHECKPOINTS[kind]["size"]
    inpainting = kind.endswith("-inpaint")
    info = {
        f"{family}.pipeline": SD_CHECKPOINTS[kind]["pipeline"],
        f"{family}.checkpoint_type": kind,
        f"{family}.default_size": size,
        f"{family}.vae_scale_factor": 8,
        f"{family}.unet.in_channels": 9 if inpainting else 4,
        f"{family}.inpainting_unet": inpainting,
        f"{family}.ip_adapter": False,
        f"{family}.tiny_vae": False,
    }
    return {**_drawing_config("sd-checkpoint", family, [path], size, info), "checkpoint_type": kind}


def _drawing_config(
    model_format: str, family: str, weights: list[Path], default_size: int, info: dict[str, Any]
) -> dict[str, Any]:
    """The config blob of a Stable Diffusion model: `info` joins the general model_info keys."""
    params, dtypes = _count_parameters(weights)
    return {
        "model_format": model_format,
        "model_family": family,
        "model_families": [family],
        "model_type": human_count(params),
        "file_type": "/".join(sorted(d.upper() for d in dtypes)),
        "capabilities": ["image"],
        "default_size": default_size,
        "model_info": {"general.architecture": family, "general.parameter_count": params, **info},
    }


def _llava_config(hf: dict[str, Any], weights: list[Path]) -> dict[str, Any]:
    text, vision = hf.get("text_config", {}), hf.get("vision_config", {})
    params, dtypes = _count_parameters(weights)
    side, patch = vision.get("image_size", 336), vision.get("patch_size", 14)
    context = text.get("max_position_embeddings", 32768)
    info = {
        "general.architecture": "llava",
        "general.parameter_count": params,
        "llava.context_length": context,
        "llava.embedding_length": text.get("hidden_size", 4096),
        "llava.block_count": text.get("num_hidden_layers", 32),
        "llava.attention.head_count": text.get("num_attention_heads", 32),
        "llava.attention.head_count_kv": text.get("num_key_value_heads", 8),
        "llava.attention.sliding_window": text.get("sliding_window"),
        "llava.text_model": text.get("model_type", "mistral"),
        "llava.vision.image_size": side,
        "llava.vision.patch_size": patch,
        "llava.vision.image_tokens": (side // patch) ** 2,
        "llava.vision.block_count": vision.get("num_hidden_layers"),
        "llava.vision.embedding_length": vision.get("hidden_size"),
    }
    return {
        "model_format": SAFETENSORS,
        "model_family": "llava",
        "model_families": ["llava", text.get("model_type", "mistral"), "clip"],
        "model_type": human_count(params),
        "file_type": "/".join(sorted(d.upper() for d in dtypes)),
        "capabilities": ["completion", "vision"],
        "context_length": context,
        "embedding_length": text.get("hidden_size", 4096),
        "model_info": {k: v for k, v in info.items() if v is not None},
    }


def _encoder_config(hf: dict[str, Any], weights: list[Path]) -> dict[str, Any]:
    """A text encoder that embeds, described with the GGUF keys llama.cpp gives BERT."""
    family = str(hf["model_type"])
    return _hf_config(family, [family], hf, weights, ["embedding"], default_context=512)


def _with_chat_template(
    config: dict[str, Any], kinds: dict[str, tuple[str, Path]]
) -> dict[str, Any]:
    """The chat template kept where a GGUF keeps it (model_info's tokenizer.chat_template),
    so that what it can render (tools) is known without loading the model."""
    template = _chat_template(kinds)
    if template:
        config["model_info"]["tokenizer.chat_template"] = template
    return config


def _chat_template(kinds: dict[str, tuple[str, Path]]) -> str | None:
    """The template transformers would use: a processor's own file first, then the
    tokenizer's (a string, or a list of named ones where `default` is used)."""
    if "chat_template.jinja" in kinds:
        return kinds["chat_template.jinja"][1].read_text()
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        if name not in kinds:
            continue
        found = json.loads(kinds[name][1].read_text()).get("chat_template")
        if isinstance(found, list):
            found = next((t.get("template") for t in found if t.get("name") == "default"), None)
        if isinstance(found, str):
            return found
    return None


def _causal(hf: dict[str, Any]) -> bool:
    return any(str(a).endswith("ForCausalLM") for a in hf.get("architectures") or [])


def _chat_config(hf: dict[str, Any], weights: list[Path], sees: bool) -> dict[str, Any]:
    """A Hugging Face chat model of any family transformers runs: a vision-language model
    (its processor decides what a picture costs) or a text-only one."""
    family = str(hf.get("model_type", "unknown"))
    text = hf.get("text_config") or hf
    if not sees:
        return _hf_config(family, [family], text, weights, ["completion"])
    vision_family = (hf.get("vision_config") or {}).get("model_type", "vision")
    return _hf_config(family, [family, vision_family], text, weights, ["completion", "vision"],
                      extra={f"{family}.text_model": text.get("model_type")})  # fmt: skip


def _hf_config(
    family: str,
    families: list[str],
    text: dict[str, Any],
    weights: list[Path],
    capabilities: list[str],
    default_context: int = 4096,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The config blob of a Hugging Face model, with the model_info keys a GGUF of it has."""
    params, dtypes = _count_parameters(weights)
    context = int(text.get("max_position_embeddings") or default_context)
    width = text.get("hidden_size")
    info = {
        "general.architecture": family,
        "general.parameter_count": params,
        f"{family}.context_length": context,
        f"{family}.embedding_length": width,
        f"{family}.block_count": text.get("num_hidden_layers"),
        f"{family}.attention.head_count": text.get("num_attention_heads"),
        f"{family}.attention.head_count_kv": text.get("num_key_value_heads"),
        **(extra or {}),
    }
    return {
        "model_format": SAFETENSORS,
        "model_family": family,
        "model_families": families,
        "model_type": human_count(params),
        "file_type": "/".join(sorted(d.upper() for d in dtypes)),
        "capabilities": capabilities,
        "context_length": context,
        "embedding_length": width,
        "model_info": {k: v for k, v in info.items() if v is not None},
    }
