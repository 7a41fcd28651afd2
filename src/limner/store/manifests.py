"""Manifests in Ollama's layout (Docker v2 JSON): the layers a model is made of and their
media types. `store.store` keeps them on disk."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA = "application/vnd.ollama.image."
MODEL, PROJECTOR, ADAPTER = MEDIA + "model", MEDIA + "projector", MEDIA + "adapter"
TEMPLATE, SYSTEM, PARAMS = MEDIA + "template", MEDIA + "system", MEDIA + "params"
GGUF_MODEL, GGUF_PROJECTOR = "model.gguf", "mmproj.gguf"  # engine file names of GGUF layers
MESSAGES, LICENSE = MEDIA + "messages", MEDIA + "license"
# A file of a multi-file model (tokenizer, configs) that is not weights; carries `name`.
FILE = "application/vnd.limner.image.file"
# How a trained model was trained: parameters, losses, captions (JSON).
TRAINING = "application/vnd.limner.image.training"


class Layer(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    mediaType: str
    digest: str
    size: int
    name: str | None = None  # relative file name inside a multi-file model
    from_: str | None = Field(default=None, alias="from")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    schemaVersion: int = 2
    mediaType: str = MANIFEST_TYPE
    config: Layer
    layers: list[Layer] = Field(default_factory=list)

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    def digests(self) -> set[str]:
        return {self.config.digest, *(layer.digest for layer in self.layers)}

    def size(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)

    def layer(self, media_type: str) -> Layer | None:
        return next((lyr for lyr in self.layers if lyr.mediaType == media_type), None)
