"""Model creation: files already uploaded as blobs, or another model, become a new manifest.

Weights are recognised by their content, never by their file name: safetensors and GGUF
are accepted, pickle (and the zip archives torch saves pickles in) is refused before
anything is written. A model that is one safetensors file with Stable Diffusion's original
(LDM) keys -- an Automatic1111/Civitai checkpoint -- becomes an "sd-checkpoint"; its family is
read from the tensor shapes in the file's header (`sd_checkpoint_type`), no weight is loaded.
A drawing model made `from` another gains LoRA files (`adapters`) as adapter layers, and a
tiny autoencoder (`tiny_vae`: TAESD, uploaded files or a stored model holding one) as the
layers of its `vae_tiny/` folder, each checked against the model before anything is written.
The manifest is the last thing written, atomically, so a failed create leaves no model behind.
What the files are is read in `store.formats`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from limner.errors import InvalidRequest, ModelNotFound, UnsafeWeights
from limner.names import ModelName
from limner.store import manifests as m
from limner.store.blobs import disk_space, normalize
from limner.store.described import FILE_TYPE_NUMBERS, gguf_config, stored_config
from limner.store.formats import (
    GGUF,
    PICKLE,
    SAFETENSORS,
    TINY_VAE_FOLDER,
    TINY_VAE_FORMAT,
    check_tiny_vae,
    config_for_folder,
    safetensors_header,
    sniff,
)
from limner.store.manifests import Layer, Manifest
from limner.store.store import Store
from limner.types import CreateRequest, ProgressResponse


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
    if request.tiny_vae is not None:
        layers, config = _with_tiny_vae(store, request.tiny_vae, layers, config)
    extras = _extra_layers(store, request, layers)
    _check_adapter_weights(layers, extras)
    if request.quantize:
        _check_quantizable(config, request.quantize)
        return _on_disk(store, _converted(store, name, layers, extras, config, request.quantize))
    return _write(store, name, layers, extras, config)


def _on_disk(store: Store, steps: Iterator[ProgressResponse]) -> Iterator[ProgressResponse]:
    """`steps`, with a disk that fills on the way a 507; the temporary files go first."""
    with disk_space(store.root):
        yield from steps


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
    from limner.store.gguf import UNQUANTIZED, quantization
    from limner.store.gguf_families import FAMILIES

    quantization(quantize)
    model_format = config.get("model_format")
    if model_format == GGUF:
        if FILE_TYPE_NUMBERS.get(str(config.get("file_type"))) not in UNQUANTIZED:
            raise InvalidRequest(
                f"the model is already quantized ({config.get('file_type')}); quantize its "
                "F16, BF16 or F32 version"
            )
        return
    if model_format != SAFETENSORS or config.get("model_family") not in FAMILIES:
        raise InvalidRequest(
            f"only GGUF models in F16, BF16 or F32 and Hugging Face vision models of the "
            f"families {', '.join(FAMILIES)} can be quantized; this one is {model_format!r} "
            f"{config.get('model_family', '')!r}"
        )


def _converted(
    store: Store,
    name: ModelName,
    layers: list[Layer],
    extras: dict[str, bytes],
    config: dict[str, Any],
    quantize: str,
) -> Iterator[ProgressResponse]:
    """The model quantized by llama.cpp; a Hugging Face vision model becomes llama.cpp's GGUF pair
    (text model + projector) on the way. Streamed: the checks ran before, this runs as the
    stream is read."""
    source_type = config.get("file_type", "F32")
    yield ProgressResponse(status=f"quantizing {source_type} model to {quantize.upper()}")
    if config.get("model_format") == GGUF:
        yield from _requantized(store, name, layers, extras, quantize)
        return
    from limner.store.gguf_families import convert

    with tempfile.TemporaryDirectory(prefix=".convert-", dir=store.root) as tmp:
        folder = Path(tmp) / "hf"
        for layer in layers:  # the model's files under their names, as links to the blobs
            if layer.name:
                (folder / layer.name).parent.mkdir(parents=True, exist_ok=True)
                (folder / layer.name).symlink_to(store.blobs.open_path(layer.digest))
        files = {}
        for path in convert(folder, Path(tmp), quantize):
            files[path.name] = _stored(store, path)
    gguf_layers, gguf_config = _layers_from_files(store, files)
    # The Jinja chat template travels inside the GGUF; text layers (a Go template too) stay.
    kept = [layer for layer in layers if not layer.name and layer.mediaType not in extras]
    yield from _write(store, name, gguf_layers + kept, extras, gguf_config)


def _requantized(
    store: Store, name: ModelName, layers: list[Layer], extras: dict[str, bytes], quantize: str
) -> Iterator[ProgressResponse]:
    """A stored GGUF's text model quantized by llama.cpp; its projector and text layers stay."""
    from limner.store.gguf import gguf_info, llama_quantize, quantization

    [text] = [layer for layer in layers if layer.mediaType == m.MODEL]
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=store.root) as tmp:
        out = Path(tmp) / "model.gguf"
        llama_quantize(store.blobs.open_path(text.digest), out, quantization(quantize))
        quantized = text.model_copy(
            update={"digest": _stored(store, out), "size": out.stat().st_size, "from_": None}
        )
        info = gguf_info(out)
    projector = next((layer for layer in layers if layer.mediaType == m.PROJECTOR), None)
    vision = gguf_info(store.blobs.open_path(projector.digest)) if projector else None
    new_layers = [quantized if layer is text else layer for layer in layers]
    yield from _write(store, name, new_layers, extras, gguf_config(info, vision))


def _stored(store: Store, path: Path) -> str:
    """The file's contents as a blob; its digest."""
    with path.open("rb") as f:
        digest, _ = store.blobs.write(iter(functools.partial(f.read, 1 << 20), b""))
    return digest


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
        path = _uploaded_blob(store, digest, f"adapter {raw_name!r}")
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


def _uploaded_blob(store: Store, digest: str, what: str) -> Path:
    """The stored blob a create names for `what`; a 400 that says to upload it if it is not
    there."""
    try:
        path = store.blobs.path(normalize(digest))
    except InvalidRequest:
        raise InvalidRequest(f"invalid digest format for {what}") from None
    if not path.is_file():
        raise InvalidRequest(f'blob "{digest}" for {what} not found; upload it first')
    return path


def _with_tiny_vae(
    store: Store, given: dict[str, str] | str, layers: list[Layer], config: dict[str, Any]
) -> tuple[list[Layer], dict[str, Any]]:
    """The drawing model's layers with a tiny autoencoder in `vae_tiny/` (replacing any it
    had), and its config saying so (`{family}.tiny_vae`). `given`: the autoencoder's files
    (name -> uploaded blob: its config.json and one .safetensors) or the name of a stored
    model holding one (a pulled TAESD repo, or a drawing model with a tiny autoencoder)."""
    if "image" not in config.get("capabilities", []) or config.get("model_format") not in (
        "diffusers",
        "sd-checkpoint",
    ):
        raise InvalidRequest(
            "tiny_vae adds a tiny autoencoder (TAESD) to a Stable Diffusion model; this model "
            "is not one"
        )
    files = _stored_tiny_vae(store, given) if isinstance(given, str) else given
    found: dict[str, tuple[str, Path]] = {}
    for raw_name, digest in sorted(files.items()):
        name = posixpath.basename(check_relative(raw_name))
        if name != "config.json" and not name.endswith(".safetensors"):
            raise InvalidRequest(
                f"tiny_vae takes the tiny autoencoder's config.json and its .safetensors "
                f"weights; {raw_name!r} is neither"
            )
        key = "config.json" if name == "config.json" else "weights"
        if key in found:
            raise InvalidRequest(f"tiny_vae has more than one {key} file")
        path = _uploaded_blob(store, digest, f"tiny_vae {raw_name!r}")
        found[key] = (normalize(digest), path)
    if set(found) != {"config.json", "weights"}:
        raise InvalidRequest(
            "tiny_vae needs the tiny autoencoder's config.json and its .safetensors weights "
            "(a diffusers AutoencoderTiny folder, as madebyollin/taesd)"
        )
    _check_tiny_vae_files(store, layers, found["config.json"][1], found["weights"][1])
    new = [
        Layer(mediaType=media, digest=digest, size=path.stat().st_size, name=name)
        for media, (digest, path), name in (
            (m.FILE, found["config.json"], f"{TINY_VAE_FOLDER}/config.json"),
            (m.MODEL, found["weights"], f"{TINY_VAE_FOLDER}/diffusion_pytorch_model.safetensors"),
        )
    ]
    kept = [layer for layer in layers if not (layer.name or "").startswith(f"{TINY_VAE_FOLDER}/")]
    family = config.get("model_family", "")
    info = {**config.get("model_info", {}), f"{family}.tiny_vae": True}
    return kept + new, {**config, "model_info": info}


def _stored_tiny_vae(store: Store, name: str) -> dict[str, str]:
    """The tiny autoencoder's files (name -> digest) in the stored model `name`."""
    try:
        entry = store.entry(store.resolve(name, quote='"'))
    except ModelNotFound:
        raise InvalidRequest(
            f"tiny_vae: model {name!r} not found; pull a TAESD repo first (limner pull "
            "hf.co/madebyollin/taesd) or give the autoencoder's files"
        ) from None
    named = {layer.name: layer.digest for layer in entry.manifest.layers if layer.name}
    prefix = f"{TINY_VAE_FOLDER}/"
    inside = {n.removeprefix(prefix): d for n, d in named.items() if n.startswith(prefix)}
    if inside:
        return inside
    if stored_config(store, entry.manifest).get("model_format") == TINY_VAE_FORMAT:
        return named
    raise InvalidRequest(
        f"tiny_vae: {name!r} holds no tiny autoencoder; name a pulled TAESD repo (limner pull "
        "hf.co/madebyollin/taesd) or a drawing model that has one"
    )


def _check_tiny_vae_files(store: Store, layers: list[Layer], config: Path, weights: Path) -> None:
    """An AutoencoderTiny config that decodes the latents of the model of `layers`, and its
    weights in safetensors (pickle refused) under AutoencoderTiny's names."""
    try:
        tiny = json.loads(config.read_bytes())
    except ValueError:
        raise InvalidRequest("tiny_vae: its config.json is not JSON") from None
    if not isinstance(tiny, dict):
        raise InvalidRequest("tiny_vae: its config.json is not a JSON object")
    vae = next((layer for layer in layers if layer.name == "vae/config.json"), None)
    vae_config = json.loads(store.blobs.open_path(vae.digest).read_bytes()) if vae else {}
    check_tiny_vae(tiny, vae_config.get("latent_channels", 4), "the tiny autoencoder (tiny_vae)")
    kind = sniff(weights)
    if kind == PICKLE:
        raise UnsafeWeights(
            "tiny_vae's weights are pickle, which can run code when loaded; use its "
            ".safetensors file"
        )
    try:
        keys = safetensors_header(weights) if kind == SAFETENSORS else {}
    except ValueError:  # a header that is not JSON
        keys = {}
    if not any(key.startswith("decoder.layers.") for key in keys):
        raise InvalidRequest(
            "tiny_vae's weights are not a tiny autoencoder's (diffusers' AutoencoderTiny, "
            "`decoder.layers.*`) in safetensors format"
        )


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
        return layers, {**stored_config(store, base.manifest), "parent_model": parent}
    raise InvalidRequest("neither 'from' or 'files' was specified")


def _layers_from_files(store: Store, files: dict[str, str]) -> tuple[list[Layer], dict[str, Any]]:
    layers, kinds, ggufs = [], {}, {}
    for raw_name, digest in sorted(files.items()):
        name = check_relative(raw_name)
        path = _uploaded_blob(store, digest, repr(raw_name))
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
    return layers, config_for_folder(kinds)


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
    for data in extras.values():
        yield ProgressResponse(
            status=f"creating new layer sha256:{hashlib.sha256(data).hexdigest()}"
        )
    yield ProgressResponse(status="writing manifest")
    # The new layers and the manifest that names them in one go: a delete beside this
    # create cannot prune a layer the two models share in between.
    with store.changing, disk_space(store.root, sum(map(len, extras.values()))):
        for media, data in extras.items():
            digest, size = store.blobs.write_bytes(data)
            layers.append(Layer(mediaType=media, digest=digest, size=size))
        store.write(name, _manifest(store, layers, config))
    yield ProgressResponse(status="success")
