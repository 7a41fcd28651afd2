"""A distilled few-step model (SD-Turbo, SDXL-Turbo: Euler over trailing timesteps) draws
with its own defaults, one step without classifier-free guidance, when the request names
none; /api/show says so; a request's own steps and guidance still win."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

import limner
from helpers import add_model
from limner.cli.models import folder_files
from limner.store import Store
from limner.tiny import write_tiny_sd


def tiny_turbo(folder: Path) -> Path:
    """The tiny SD with SD-Turbo's scheduler config."""
    write_tiny_sd(folder, seed=0, ip_adapter=False)
    config = folder / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(config.read_text())
    scheduler.update(_class_name="EulerDiscreteScheduler", timestep_spacing="trailing")
    config.write_text(json.dumps(scheduler))
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]  # what diffusers builds
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_a_turbo_model_draws_in_one_step_without_guidance_unless_asked(
    server: Any, store: Store, tmp_path: Path
) -> None:
    add_model(
        store, "turbo", {rel: p.read_bytes() for rel, p in folder_files(tiny_turbo(tmp_path / "t"))}
    )
    client = limner.Client(server.url)
    info = client.show("turbo").model_info
    assert info["stable-diffusion.default_steps"] == 1
    assert info["stable-diffusion.default_guidance_scale"] == 0.0

    seen: list[tuple[int, int]] = []
    drawn = client.generate_image("turbo", "a red cat", width=64, height=64, seed=1,
                                  progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert seen == [(1, 1)]
    assert drawn.parameters["steps"] == 1 and drawn.parameters["guidance_scale"] == 0.0

    asked = client.generate_image("turbo", "a red cat", width=64, height=64, seed=1, steps=3,
                                  guidance_scale=2.0)  # fmt: skip
    assert asked.parameters["steps"] == 3 and asked.parameters["guidance_scale"] == 2.0


def test_zero_steps_is_a_400_not_the_default(server: Any, store: Store, tmp_path: Path) -> None:
    add_model(
        store, "turbo", {rel: p.read_bytes() for rel, p in folder_files(tiny_turbo(tmp_path / "t"))}
    )
    reply = httpx.post(f"{server.url}/api/generate",
                       json={"model": "turbo", "prompt": "a cat", "steps": 0})  # fmt: skip
    assert reply.status_code == 400
    assert reply.json()["error"] == "steps must be between 1 and 150, got 0"
