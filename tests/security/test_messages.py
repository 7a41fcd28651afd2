"""Error messages (docs/reliability.md IN-*): a client never reads where the store, the runners'
folders or the user's home are, and never a traceback."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from helpers import add_model
from limner.errors import without_paths
from limner.store import Store


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("/tmp/limner-model-x1/unet has no model_index.json", "…/unet has no model_index.json"),
        ("cannot read /home/ann/.limner/models/blobs/sha256-ab", "cannot read …/sha256-ab"),
        ("file path must be relative: '/etc/passwd'", "file path must be relative: '…/passwd'"),
        ("pull http://10.0.0.5:5000/v2/a/b failed", "pull http://10.0.0.5:5000/v2/a/b failed"),
        ("picture 'photos/a.png' is not a PNG", "picture 'photos/a.png' is not a PNG"),
        ("send its prompt to /api/generate", "send its prompt to /api/generate"),
        ("use /v1/chat/completions", "use /v1/chat/completions"),
    ],
)
def test_absolute_paths_are_cut_to_their_last_part(message: str, shown: str) -> None:
    assert without_paths(message) == shown


def test_a_model_that_fails_to_load_says_why_without_its_folder(store: Store, server: Any) -> None:
    # A diffusers model whose weights are not what its config says: the engine fails inside
    # the runner, whose folder is a temporary path.
    files = {"model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
             "unet/config.json": b"{\"in_channels\": 4}", "unet/diffusion_pytorch_model.safetensors":
             b'\x08\x00\x00\x00\x00\x00\x00\x00{}      '}  # fmt: skip
    add_model(store, "broken", files)
    reply = httpx.post(f"{server.url}/api/generate", json={"model": "broken", "prompt": "x"},
                       timeout=120)  # fmt: skip
    error = reply.json()["error"]
    assert reply.status_code < 600 and error
    assert "/tmp/" not in error and str(store.root) not in error and "Traceback" not in error
