"""Memory-aware scheduling: estimates before loading, the limit, and windows that fit."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest

from helpers import add_gguf
from limner.config import parse_bytes
from limner.engines import Message, Options
from limner.errors import InsufficientMemory
from limner.names import ModelName
from limner.scheduler import Scheduler, context_bytes
from limner.store import Store

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.anyio

TINY_KV_PER_TOKEN = 2 * 2 * 16 * 2 * 2  # layers x kv heads x head width x (k, v) x f16


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def chat(scheduler: Scheduler, model: str, num_ctx: int = 0) -> dict[str, Any]:
    options = Options(num_predict=2, temperature=0, num_ctx=num_ctx)
    messages = [Message("user", "hello")]
    async with scheduler.lease(ModelName.parse(model), num_ctx=num_ctx) as loaded:
        steps = [s async for s in loaded.runner.chat(messages, options)]
    return {**asdict(steps[-1]), "window": loaded.context_length, "size": loaded.size}


def test_the_context_estimate_counts_keys_and_values_for_every_layer() -> None:
    gguf = {
        "model_format": "gguf",
        "model_info": {
            "general.architecture": "llama",
            "llama.block_count": 32,
            "llama.embedding_length": 4096,
            "llama.attention.head_count": 32,
            "llama.attention.head_count_kv": 8,
        },
    }
    # BakLLaVA (Mistral 7B): 128 KiB per token in f16, 4 GiB for its 32K window.
    assert context_bytes(gguf, 32768) == 4 << 30
    assert context_bytes({**gguf, "model_format": "safetensors"}, 4096) == 1 << 30
    assert context_bytes({"model_format": "diffusers"}, 4096) == 0


def test_memory_limits_read_like_sizes() -> None:
    assert parse_bytes("12GiB") == 12 << 30
    assert parse_bytes("1.5G") == 3 << 29
    assert parse_bytes("512MB") == 512_000_000
    assert parse_bytes("4096") == 4096
    with pytest.raises(ValueError, match="12GiB"):
        parse_bytes("lots")


async def test_a_gguf_model_loads_with_its_parameters_window_and_counts_it(store: Store) -> None:
    add_gguf(store, "g", num_ctx=1000)
    scheduler = Scheduler(store)
    done = await chat(scheduler, "g")
    assert done["window"] == 1024  # rounded up to llama.cpp's blocks of 256
    weights = store.entry(ModelName.parse("g")).manifest.size()
    assert done["size"] == weights + 1024 * TINY_KV_PER_TOKEN
    await scheduler.close()


async def test_the_default_window_is_the_trained_length_capped_by_the_limit(store: Store) -> None:
    add_gguf(store, "g")
    scheduler = Scheduler(store, context_limit=2048)
    assert (await chat(scheduler, "g"))["window"] == 2048  # trained 32768, capped
    await scheduler.close()


async def test_a_smaller_window_reuses_the_runner_and_a_larger_one_reloads(store: Store) -> None:
    add_gguf(store, "g")
    scheduler = Scheduler(store, context_limit=2048)
    await chat(scheduler, "g")
    smaller = await chat(scheduler, "g", num_ctx=512)
    assert (smaller["window"], scheduler.loads) == (2048, 1)  # no reload for less
    larger = await chat(scheduler, "g", num_ctx=4000)
    assert (larger["window"], scheduler.loads) == (4096, 2)
    assert len(scheduler.running()) == 1
    await scheduler.close()


async def test_a_window_that_can_never_fit_is_refused_with_both_numbers(store: Store) -> None:
    add_gguf(store, "g")
    scheduler = Scheduler(store, memory_limit=8 << 20)
    with pytest.raises(InsufficientMemory) as refused:
        await chat(scheduler, "g", num_ctx=32768)
    message = str(refused.value)
    assert "8.0 MiB" in message and "for a 32768-token context" in message
    assert "lower num_ctx" in message
    assert scheduler.loads == 0
    assert (await chat(scheduler, "g", num_ctx=2048))["window"] == 2048  # a smaller one fits
    await scheduler.close()


async def test_idle_models_are_unloaded_to_make_room_for_a_window(store: Store) -> None:
    add_gguf(store, "a")
    add_gguf(store, "b", num_ctx=256)  # another digest: another model
    weights = store.entry(ModelName.parse("a")).manifest.size()
    scheduler = Scheduler(store, memory_limit=weights * 2 + 2048 * TINY_KV_PER_TOKEN)
    await chat(scheduler, "a", num_ctx=2048)
    await chat(scheduler, "b", num_ctx=2048)
    assert [m.name.model for m in scheduler.running()] == ["b"]
    await scheduler.close()
