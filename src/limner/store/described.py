"""What a stored model is and can do: one typed description, read once per request.

`describe(store, name)` reads the manifest and its small layers once (as Ollama's GetModel)
and every handler -- native, OpenAI, Automatic1111 -- asks the result what the model can do
(`can`, `require`, as Ollama's CheckCapabilities). A registry's config carries only format,
family and sizes; GGUF models are completed from their files' headers here, so a capability
is decided in this one place.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from limner.errors import InvalidRequest
from limner.names import ModelName
from limner.store import manifests as m
from limner.store.manifests import Layer, Manifest
from limner.store.store import Store

GGUF = "gguf"
DEFAULT_SIZE = 512  # a drawing model's side when its config does not say (SD 1.x)


class Capability(StrEnum):
    """What a model can be asked to do; the names are Ollama's (/api/show `capabilities`)."""

    COMPLETION = "completion"
    VISION = "vision"
    TOOLS = "tools"
    THINKING = "thinking"
    EMBEDDING = "embedding"
    INSERT = "insert"
    IMAGE = "image"


@dataclass(frozen=True)
class Described:
    """One stored model, as the server, the scheduler and the runners see it."""

    name: ModelName
    digest: str  # the manifest's sha256, as Ollama reports it
    manifest: Manifest
    modified_at: datetime
    config: dict[str, Any]  # the config blob, completed from GGUF headers
    capabilities: frozenset[Capability]
    parameters: dict[str, Any] = field(default_factory=dict)  # the params layer
    template: str | None = None
    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    adapters: tuple[Layer, ...] = ()

    @property
    def format(self) -> str:
        return str(self.config.get("model_format", ""))

    @property
    def engine(self) -> str:
        """The key of engines.ENGINES that runs it: an embedding model has engines of its own."""
        if self.can(Capability.EMBEDDING) and not self.can(Capability.COMPLETION):
            return f"embed:{self.format}"
        return self.format

    @property
    def family(self) -> str:
        return str(self.config.get("model_family", ""))

    @property
    def context_length(self) -> int:
        """The window it was trained with (0: it does not chat)."""
        return int(self.config.get("context_length") or 0)

    @property
    def picture_tokens(self) -> int:
        """What one picture costs in the window when the projector says (0: unknown)."""
        return int((self.config.get("projector_info") or {}).get("clip.vision.image_tokens", 0))

    @property
    def default_size(self) -> int:
        """A drawing model's default side in pixels."""
        return int(self.config.get("default_size") or DEFAULT_SIZE)

    @property
    def fixed_window(self) -> bool:
        """Whether its context window is fixed when it loads (llama.cpp allocates it then)."""
        return self.format == GGUF

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities

    @property
    def draws(self) -> bool:
        return self.can(Capability.IMAGE)

    def require(self, capability: Capability, asked: str = "") -> None:
        """400 in Ollama's words when the model cannot do what the request asks:
        `"NAME" does not support tools`."""
        if not self.can(capability):
            raise InvalidRequest(f'"{self.name.display()}" does not support {asked or capability}')


def describe(store: Store, name: ModelName) -> Described:
    """The stored model `name` (404 when it is not stored), read once."""
    entry = store.entry(name)
    manifest = entry.manifest
    config = completed_config(store, manifest)
    template = store.text(manifest, m.TEMPLATE)
    return Described(
        name=entry.name,
        digest=entry.digest,
        manifest=manifest,
        modified_at=entry.modified_at,
        config=config,
        capabilities=capabilities(config, template),
        parameters=store.json_layer(manifest, m.PARAMS) or {},
        template=template,
        system=store.text(manifest, m.SYSTEM),
        messages=store.json_layer(manifest, m.MESSAGES) or [],
        adapters=tuple(layer for layer in manifest.layers if layer.mediaType == m.ADAPTER),
    )


def capabilities(config: dict[str, Any], template: str | None = None) -> frozenset[Capability]:
    """A config's capabilities; a config that names none can complete text, as Ollama's. A
    model that completes text calls tools when the template it chats with renders them:
    its template layer, else the chat template of its files."""
    named = config.get("capabilities")
    if named is None:
        found = {Capability.COMPLETION}
    else:
        found = {Capability(c) for c in named if c in Capability.__members__.values()}
    source = template or (config.get("model_info") or {}).get("tokenizer.chat_template")
    if Capability.COMPLETION in found and isinstance(source, str) and renders_tools(source):
        found.add(Capability.TOOLS)
    return frozenset(found)


TEMPLATE_TOOLS = re.compile(r"\{[{%]-?[^}]*?\btools\b", re.IGNORECASE)


def renders_tools(template: str) -> bool:
    """Whether a Go (`.Tools`) or Jinja (`tools`) chat template writes the tools it is
    offered into the prompt, as Ollama decides from the template's variables."""
    return bool(TEMPLATE_TOOLS.search(template))


def stored_config(store: Store, manifest: Manifest) -> dict[str, Any]:
    """A model's config blob as stored: enough for a listing (format, family, sizes)."""
    config: dict[str, Any] = json.loads(store.blobs.open_path(manifest.config.digest).read_bytes())
    return config


def completed_config(store: Store, manifest: Manifest) -> dict[str, Any]:
    """A model's config, completed from its GGUF headers when a registry's config (Ollama's
    carries only format, family and sizes) leaves out capabilities and model_info."""
    config = stored_config(store, manifest)
    if config.get("model_format") != GGUF or "model_info" in config:
        return config
    from limner.store.gguf import gguf_info

    text, projector = manifest.layer(m.MODEL), manifest.layer(m.PROJECTOR)
    if text is None:
        return config
    info = gguf_info(store.blobs.open_path(text.digest))
    vision = gguf_info(store.blobs.open_path(projector.digest)) if projector else None
    return {**gguf_config(info, vision), **config}


def gguf_config(info: dict[str, Any], projector: dict[str, Any] | None) -> dict[str, Any]:
    """The config blob of a GGUF model, with Ollama's fields, from the files' metadata."""
    arch = info.get("general.architecture", "llama")
    params = int(info.get("general.parameter_count", 0))
    file_type = int(info.get("general.file_type", 1))
    families = [arch, "clip"] if projector else [arch]
    context = int(info.get(f"{arch}.context_length", 4096))
    return {
        "model_format": GGUF,
        "model_family": arch,
        "model_families": families,
        "model_type": human_count(params),
        "file_type": FILE_TYPES.get(file_type, f"type {file_type}"),
        "capabilities": _gguf_capabilities(info, arch, projector),
        "context_length": context,
        "embedding_length": info.get(f"{arch}.embedding_length"),
        "model_info": info,
        "projector_info": _with_image_tokens(projector) if projector else {},
    }


def _gguf_capabilities(
    info: dict[str, Any], arch: str, projector: dict[str, Any] | None
) -> list[str]:
    """As Ollama decides: a model that pools its states embeds, any other completes text."""
    if f"{arch}.pooling_type" in info:
        return [Capability.EMBEDDING]
    return [Capability.COMPLETION, Capability.VISION] if projector else [Capability.COMPLETION]


def _with_image_tokens(projector: dict[str, Any]) -> dict[str, Any]:
    """A LLaVA-1.5 (`mlp`) projector's exact cost of one picture: one token per patch."""
    side, patch = projector.get("clip.vision.image_size"), projector.get("clip.vision.patch_size")
    if projector.get("clip.projector_type", "mlp") != "mlp" or not side or not patch:
        return projector
    return {**projector, "clip.vision.image_tokens": (int(side) // int(patch)) ** 2}


# general.file_type -> Ollama's quantization_level names (llama.cpp's LLAMA_FTYPE values).
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
              16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 25: "IQ4_NL", 30: "IQ4_XS",
              32: "BF16"}  # fmt: skip
FILE_TYPE_NUMBERS = {name: number for number, name in FILE_TYPES.items()}


def human_count(count: int) -> str:
    """Ollama's parameter_size: 7.2B, 312M, 217K."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}".rstrip("0").rstrip(".") + unit
    return str(count)
