"""`pull NAME`: from a registry speaking Ollama's protocol, or, for names on `hf.co` or
`huggingface.co`, from the Hugging Face Hub (hub.py builds on registry.py)."""

from __future__ import annotations

from collections.abc import Iterator

from limner.names import ModelName
from limner.store import hub, registry
from limner.store.store import Store
from limner.types import ProgressResponse

HUB_HOSTS = ("hf.co", "huggingface.co")


def pull(store: Store, text: str, insecure: bool = False) -> Iterator[ProgressResponse]:
    """Check the name now (errors raise before the first line), then yield Ollama's progress."""
    name = ModelName.parse(text.strip())
    if name.host.lower() in HUB_HOSTS:
        return hub.pull(store, name)
    return registry.pull(store, text, insecure)
