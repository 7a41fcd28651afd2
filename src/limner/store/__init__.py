"""The model store: blobs by sha256, manifests in Ollama's layout, model creation."""

from limner.store.manifests import Entry, Manifest, Store

__all__ = ["Entry", "Manifest", "Store"]
