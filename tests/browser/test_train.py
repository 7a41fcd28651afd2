"""The Train tab: a folder of toy pictures with captions, uploaded from the page as blobs and
trained into a LoRA of the toy Stable Diffusion in a few steps; the loss curve, the samples
and the new model show on the page."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from browser.pages import LONG, open_page, require_browser, shape_file, store_toy
from limner.store import Store
from limner.toys import shapes

require_browser()
pytest.importorskip("peft")
from playwright.sync_api import expect  # noqa: E402

STEPS = 4


@pytest.mark.slow
def test_a_folder_of_pictures_trains_a_model_with_its_loss_curve_on_the_page(
    page: Any, store: Store, make_server: Any, tmp_path: Path
) -> None:
    store_toy(store, "draw", "draw")
    server = make_server()
    folder = tmp_path / "zq"
    folder.mkdir()
    rng = random.Random(3)
    for number in range(3):
        spec = shapes.random_spec(rng, colours=("orange",))
        shape_file(folder, spec, f"{number}.png")
        (folder / f"{number}.txt").write_text(f"a zq {spec.shape}")
    (folder / ".DS_Store").write_bytes(b"\0")  # hidden: left out

    open_page(page, server, "train")
    page.set_input_files("#train-folder", folder)
    expect(page.locator("#train-summary")).to_have_text(
        "3 pictures, 3 captions; 1 other files left out"
    )
    page.select_option("#train-base", "draw:latest")
    page.fill("#train-name", "draw-zq")
    page.fill("#train-steps", str(STEPS))
    page.fill("#train-lr", "1e-3")
    page.fill("#train-resolution", "64")
    page.fill("#train-validation-every", "2")
    page.fill("#train-validation-prompt", "a zq square")
    page.click("#train-go")
    page.wait_for_selector("#train-go:enabled", timeout=LONG)
    expect(page.locator("#train-error")).to_be_hidden()
    expect(page.locator("#train-status")).to_contain_text("draw-zq is ready")
    points = page.locator("#train-loss polyline").get_attribute("points") or ""
    assert len(points.split()) == STEPS  # one point per step
    expect(page.locator("#train-validations img")).to_have_count(STEPS // 2)
    expect(page.locator("#train-log")).to_contain_text("uploaded 6 files")
    expect(page.locator("#train-log")).to_contain_text("success")
    expect(page.locator("#draw-model option")).to_have_text(["draw-zq:latest", "draw:latest"])
    shown = httpx.post(f"{server.url}/api/show", json={"model": "draw-zq"}).json()
    assert shown["training"]["steps"] == STEPS and shown["training"]["parameters"]["pictures"] == 3
