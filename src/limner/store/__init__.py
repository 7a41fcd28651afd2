"""The model store: blobs by sha256, manifests in Ollama's layout, model creation."""

from limner.store.manifests import Manifest
from limner.store.store import Entry, Store

__all__ = ["Entry", "Manifest", "Store"]
