"""Model creation: files already uploaded as blobs, or another model, become a new manifest.

Weights are recognised by their content, never by their file name: safetensors and GGUF
are accepted, pickle (and the zip archives torch saves pickles in) is refused before
anything is written. A model that is one safetensors file with Stable Diffusion's original
(LDM) keys -- an Automatic1111/Civitai checkpoint -- becomes an "sd-checkpoint"; its family is
read from the tensor shapes in the file's header (`sd_checkpoint_type`), no weight is loaded.
The manifest is the last thing written, atomically, so a failed create leaves no model behind.
"""

from __future__ import annotations

import functools
import json
import posixpath
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from limner.errors import InvalidRequest, UnsafeWeights
from limner.names import ModelName
from limner.store import manifests as m
from limner.store.blobs import normalize
from limner.store.described import gguf_config, human_count
from limner.store.manifests import Layer, Manifest, Store
from limner.types import CreateRequest, ProgressResponse

SAFETENSORS, GGUF, PICKLE, OTHER = "safetensors", "gguf", "pickle", "other"
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


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


def check_relative(name: str) -> str:
    """A file name inside a model folder, proven not to escape it."""
    clean = posixpath.normpath(name.replace("\\", "/"))
    if not name or name.startswith(("/", "\\")) or clean.startswith("..") or ":" in name:
        raise InvalidRequest(f"file path must be relative: {name!r}")
    return clean


def create(store: Store, request: CreateRequest) -> Iterator[ProgressResponse]:
    """Validate everything, then yield progress while writing. Errors come before any write."""
    name = ModelName.parse(request.model or request.name or "")
    layers, config = _base_layers(store, request)
    if request.adapters:
        layers = layers + _adapter_layers(store, request.adapters, config, layers)
    extras = _extra_layers(store, request, layers)
    _check_adapter_weights(layers, extras)
    if request.quantize:
        _check_quantizable(config, request.quantize)
        return _converted(store, name, layers, extras, config, request.quantize)
    return _write(store, name, layers, extras, config)


def trained(
    store: Store,
    request: CreateRequest,
    adapter: Path,
    record: dict[str, Any],
    kohya: Path | None = None,
) -> Iterator[ProgressResponse]:
    """Store a model trained from `request.from_`: the base's layers, the new LoRA as an
    adapter layer, its kohya copy as `exports/lora_kohya.safetensors`, and the training
    `record` (parameters, losses, captions) as a training layer."""
    name = ModelName.parse(request.model or request.name or "")
    base, config = _base_layers(store, request)
    # A model trained from a trained model keeps its adapters; its export is replaced.
    layers = [layer for layer in base if not (layer.name or "").startswith("exports/")]
    taken = {layer.name for layer in layers}
    adapter_name = f"adapters/{name.model}.safetensors"
    for number in range(2, len(taken) + 3):
        if adapter_name not in taken:
            break
        adapter_name = f"adapters/{name.model}-{number}.safetensors"
    layers.append(_file_layer(store, adapter, m.ADAPTER, adapter_name))
    if kohya is not None:
        export = _file_layer(store, kohya, m.FILE, "exports/lora_kohya.safetensors")
        layers.append(export)
        record = {**record, "exports": {"lora_kohya.safetensors": export.digest}}
    extras = _extra_layers(store, request, layers)
    extras[m.TRAINING] = json.dumps(record).encode()
    return _write(store, name, layers, extras, config)


def _file_layer(store: Store, path: Path, media_type: str, name: str) -> Layer:
    with path.open("rb") as f:
        digest, size = store.blobs.write(iter(functools.partial(f.read, 1 << 20), b""))
    return Layer(mediaType=media_type, digest=digest, size=size, name=name)


def _check_quantizable(config: dict[str, Any], quantize: str) -> None:
    from limner.store.gguf import QUANTIZATIONS

    if quantize.lower() not in QUANTIZATIONS:
        raise InvalidRequest(
            f"unsupported quantization type {quantize!r}: use one of {', '.join(QUANTIZATIONS)}"
        )
    if config.get("model_format") != SAFETENSORS:
        raise InvalidRequest(
            f"only Hugging Face LLaVA models (safetensors) can be quantized; this one is "
            f"{config.get('model_format')!r}"
        )


def _converted(
    store: Store,
    name: ModelName,
    layers: list[Layer],
    extras: dict[str, bytes],
    config: dict[str, Any],
    quantize: str,
) -> Iterator[ProgressResponse]:
    """A Hugging Face LLaVA becomes llama.cpp's GGUF pair (text model + projector) at
    `quantize`, streamed: the checks ran before, this runs as the stream is read."""
    from limner.store.gguf import convert_llava

    source_type = config.get("file_type", "F32")
    yield ProgressResponse(status=f"quantizing {source_type} model to {quantize.upper()}")
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=store.root) as tmp:
        folder = Path(tmp) / "hf"
        for layer in layers:  # the model's files under their names, as links to the blobs
            if layer.name:
                (folder / layer.name).parent.mkdir(parents=True, exist_ok=True)
                (folder / layer.name).symlink_to(store.blobs.open_path(layer.digest))
        files = {}
        for path in convert_llava(folder, Path(tmp), quantize):
            with path.open("rb") as f:
                files[path.name], _ = store.blobs.write(
                    iter(functools.partial(f.read, 1 << 20), b"")
                )
    gguf_layers, gguf_config = _layers_from_files(store, files)
    # The Jinja chat template travels inside the GGUF; text layers (a Go template too) stay.
    kept = [layer for layer in layers if not layer.name and layer.mediaType not in extras]
    yield from _write(store, name, gguf_layers + kept, extras, gguf_config)


def _check_adapter_weights(layers: list[Layer], extras: dict[str, bytes]) -> None:
    """`adapter_weights` may only name the model's own LoRA files."""
    weights = json.loads(extras[m.PARAMS]).get("adapter_weights") if m.PARAMS in extras else None
    if not weights:
        return
    names = {
        posixpath.basename(layer.name or "") for layer in layers if layer.mediaType == m.ADAPTER
    }
    unknown = sorted(set(weights) - names)
    if unknown:
        raise InvalidRequest(
            f"adapter_weights names {', '.join(map(repr, unknown))}; this model's adapters are "
            f"{', '.join(sorted(names)) or 'none'}"
        )


def _adapter_layers(
    store: Store, adapters: dict[str, str], config: dict[str, Any], base: list[Layer]
) -> list[Layer]:
    """LoRA files for a drawing model (diffusers or kohya keys, safetensors only) as named
    adapter layers; the drawing engine fuses them into the weights when it loads."""
    if "image" not in config.get("capabilities", []):
        raise InvalidRequest("adapters are LoRA files for drawing models; this model does not draw")
    taken = {layer.name for layer in base if layer.name}
    layers = []
    for raw_name, digest in sorted(adapters.items()):
        name = f"adapters/{posixpath.basename(check_relative(raw_name))}"
        if not name.endswith(".safetensors") or name in taken:
            raise InvalidRequest(
                f"adapter {raw_name!r} must be a .safetensors file with a name the model "
                "does not have yet"
            )
        try:
            path = store.blobs.path(normalize(digest))
        except InvalidRequest:
            raise InvalidRequest(f"invalid digest format for adapter {raw_name!r}") from None
        if not path.is_file():
            raise InvalidRequest(
                f'blob "{digest}" for adapter {raw_name!r} not found; upload it first'
            )
        kind = sniff(path)
        if kind == PICKLE:
            raise UnsafeWeights(
                f"adapter {raw_name!r} holds pickle weights, which can run code when loaded; "
                "use its .safetensors version"
            )
        if kind != SAFETENSORS or not any("lora" in key for key in safetensors_header(path)):
            raise InvalidRequest(f"adapter {raw_name!r} is not a LoRA in safetensors format")
        taken.add(name)
        layers.append(
            Layer(
                mediaType=m.ADAPTER, digest=normalize(digest), size=path.stat().st_size, name=name
            )
        )
    return layers


def _base_layers(store: Store, request: CreateRequest) -> tuple[list[Layer], dict[str, Any]]:
    if request.files:
        return _layers_from_files(store, request.files)
    if request.from_:
        base = store.entry(store.resolve(request.from_, quote='"'))
        parent = base.name.display()
        layers = [
            layer.model_copy(update={"from_": layer.from_ or parent})
            for layer in base.manifest.layers
        ]
        return layers, {**store.config(base.manifest), "parent_model": parent}
    raise InvalidRequest("neither 'from' or 'files' was specified")


def _layers_from_files(store: Store, files: dict[str, str]) -> tuple[list[Layer], dict[str, Any]]:
    layers, kinds, ggufs = [], {}, {}
    for raw_name, digest in sorted(files.items()):
        name = check_relative(raw_name)
        try:
            path = store.blobs.path(normalize(digest))
        except InvalidRequest:
            raise InvalidRequest(f"invalid digest format for {raw_name!r}") from None
        if not path.is_file():
            raise InvalidRequest(f'blob "{digest}" for {raw_name!r} not found; upload it first')
        kind = sniff(path)
        if kind == GGUF:
            ggufs[name] = path
        if kind == PICKLE:
            raise UnsafeWeights(
                f"{raw_name!r} holds pickle weights, which can run code when loaded; "
                "convert it to safetensors first"
            )
        kinds[name] = (kind, path)
        media = m.MODEL if kind in (SAFETENSORS, GGUF) else m.FILE
        layers.append(
            Layer(mediaType=media, digest=normalize(digest), size=path.stat().st_size, name=name)
        )
    if ggufs:
        return _gguf_model(layers, ggufs)
    return layers, _config_for_folder(kinds)


def _gguf_model(layers: list[Layer], ggufs: dict[str, Path]) -> tuple[list[Layer], dict[str, Any]]:
    """GGUF files stored as Ollama stores them: one unnamed model layer, and the vision
    projector (a GGUF of architecture "clip") as an unnamed projector layer."""
    from limner.store.gguf import gguf_info

    infos = {name: gguf_info(path) for name, path in ggufs.items()}
    projectors = [n for n, info in infos.items() if info.get("general.architecture") == "clip"]
    texts = [n for n in infos if n not in projectors]
    if len(texts) != 1 or len(projectors) > 1:
        raise InvalidRequest(
            "a GGUF model is one text model file and at most one projector (mmproj) file; "
            f"got {len(texts)} text model(s) and {len(projectors)} projector(s)"
        )
    roles = {texts[0]: m.MODEL, **{n: m.PROJECTOR for n in projectors}}
    out = [
        layer.model_copy(update={"mediaType": roles[layer.name], "name": None})
        if layer.name in roles
        else layer
        for layer in layers
    ]
    return out, gguf_config(infos[texts[0]], infos[projectors[0]] if projectors else None)


def manifest_for_blobs(store: Store, files: dict[str, str]) -> Manifest:
    """The manifest /api/create would write for these stored blobs (file name -> digest).

    Each file becomes a named layer and the config is built as for /api/create (pickle
    refused, the folder's kind recognised); the config blob is stored, the manifest is not.
    """
    layers, config = _layers_from_files(store, files)
    return _manifest(store, layers, config)


def _manifest(store: Store, layers: list[Layer], config: dict[str, Any]) -> Manifest:
    """Store the config blob (with Ollama's platform fields) and build the manifest around it."""
    config = {**config, "architecture": "amd64", "os": "linux"}
    digest, size = store.blobs.write_bytes(json.dumps(config).encode())
    return Manifest(config=Layer(mediaType=m.CONFIG_TYPE, digest=digest, size=size), layers=layers)


def _config_for_folder(kinds: dict[str, tuple[str, Path]]) -> dict[str, Any]:
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
    model_type = hf.get("model_type")
    if model_type in FAKE_CAPABILITIES:
        return {
            "model_format": "fake",
            "model_family": "fake",
            "capabilities": FAKE_CAPABILITIES[model_type],
            "model_info": {"general.architecture": "fake", "fake.context_length": 4096},
        }
    if model_type != "llava":
        raise InvalidRequest(
            f"model_type {model_type!r} is not supported yet; limner runs LLaVA-family models"
        )
    if not weights:
        raise InvalidRequest("no safetensors weights among the model files")
    return _llava_config(hf, weights)


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

    index, unet, vae = (
        component("model_index.json"),
        component("unet/config.json"),
        component("vae/config.json"),
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
    default_size = unet.get("sample_size", 64) * scale
    info = {
        f"{family}.pipeline": pipeline,
        f"{family}.default_size": default_size,
        f"{family}.vae_scale_factor": scale,
        f"{family}.unet.in_channels": unet.get("in_channels", 4),
        f"{family}.inpainting_unet": unet.get("in_channels", 4) == 9,
        f"{family}.ip_adapter": style,
    }
    return _drawing_config("diffusers", family, weights, default_size, info)


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


def _extra_layers(store: Store, request: CreateRequest, base: list[Layer]) -> dict[str, bytes]:
    """The text layers a request sets; each replaces the base model's layer of that type."""
    extras: dict[str, bytes] = {}
    if request.system is not None:
        extras[m.SYSTEM] = request.system.encode()
    if request.template is not None:
        extras[m.TEMPLATE] = request.template.encode()
    if request.license is not None:
        lines = [request.license] if isinstance(request.license, str) else request.license
        extras[m.LICENSE] = "\n".join(lines).encode()
    if request.messages is not None:
        messages = [msg.model_dump(exclude_none=True) for msg in request.messages]
        extras[m.MESSAGES] = json.dumps(messages).encode()
    if request.parameters is not None:
        params = {}
        old = next((lyr for lyr in base if lyr.mediaType == m.PARAMS), None)
        if old is not None:
            params = json.loads(store.blobs.open_path(old.digest).read_bytes())
        extras[m.PARAMS] = json.dumps({**params, **request.parameters}).encode()
    return extras


def _write(
    store: Store,
    name: ModelName,
    layers: list[Layer],
    extras: dict[str, bytes],
    config: dict[str, Any],
) -> Iterator[ProgressResponse]:
    yield ProgressResponse(status="parsing model files")
    for layer in layers:
        yield ProgressResponse(status=f"using existing layer {layer.digest}")
    layers = [layer for layer in layers if layer.mediaType not in extras]
    for media, data in extras.items():
        digest, size = store.blobs.write_bytes(data)
        yield ProgressResponse(status=f"creating new layer {digest}")
        layers.append(Layer(mediaType=media, digest=digest, size=size))
    manifest = _manifest(store, layers, config)
    yield ProgressResponse(status="writing manifest")
    store.write(name, manifest)
    yield ProgressResponse(status="success")
