"""Screenshots of every tab of the web page, at 1280x800 and 390x844 (a phone), into
docs/screens/ (`make screenshots`). A server on loopback holds the shipped toys ("see", a
vision chat model, and "draw", a Stable Diffusion); the page is driven as a user drives it (a
chat about a picture, drawings, a mask painted) so every tab shows real work. Needs Chromium at
/usr/bin/chromium and Playwright, as the browser tests do; about a minute on two cores.

    HF_HUB_OFFLINE=1 .venv/bin/python tests/browser/screenshots.py [FOLDER]
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: the helpers the browser tests use

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from browser.conftest import ARGS  # noqa: E402
from browser.pages import CHROMIUM, LONG, open_page, shape_file, store_toy  # noqa: E402
from helpers import ThreadServer  # noqa: E402
from limner.scheduler import Scheduler  # noqa: E402
from limner.store import Store  # noqa: E402
from limner.toys.shapes import QUESTIONS, Spec  # noqa: E402

SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
TABS = ["chat", "draw", "inpaint", "restyle", "gallery", "train", "models"]
DRAWINGS = ["a red circle", "a blue square", "a green triangle", "a yellow circle",
            "an orange square", "a purple triangle"]  # fmt: skip


def small_png(data: bytes) -> bytes:
    """A screenshot as a palette PNG: the page's flat colours survive, the file is a third."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
    return out.getvalue()


def prepare(page: Any, server: ThreadServer, work: Path) -> None:
    """Work on every tab: a chat about a picture, a drawing, a mask, model details."""
    open_page(page, server)
    page.locator("#chat-options summary").click()
    page.fill("#chat-temperature", "0")
    page.locator("#chat-options summary").click()
    page.set_input_files("#chat-files", shape_file(work, Spec("red", "circle")))
    page.fill("#chat-input", QUESTIONS["colour"])
    page.click("#chat-send")
    page.wait_for_selector(".message.assistant:not(.pending)", timeout=LONG)
    page.click("#chat-new")  # a second chat, listed beside the first
    page.set_input_files("#chat-files", shape_file(work, Spec("blue", "square"), "s.png"))
    page.fill("#chat-input", QUESTIONS["shape"])
    page.click("#chat-send")
    page.wait_for_selector(".message.assistant:not(.pending)", timeout=LONG)

    page.get_by_role("tab", name="Draw").click()
    page.fill("#draw-prompt", "a blue square")
    page.fill("#draw-seed", "3")
    page.fill("#draw-steps", "12")
    page.click("#draw-go")
    page.wait_for_selector("#draw-result:visible", timeout=LONG)

    page.get_by_role("tab", name="Inpaint").click()
    page.set_input_files("#inpaint-file", shape_file(work, Spec("red", "circle", "white"), "i.png"))
    page.fill("#inpaint-prompt", "a green square")
    canvas = page.locator("#inpaint-mask")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.8, steps=8)
    page.mouse.up()

    page.get_by_role("tab", name="Restyle").click()
    page.set_input_files(
        "#restyle-reference", shape_file(work, Spec("yellow", "triangle"), "r.png")
    )
    page.fill("#restyle-prompt", "a yellow triangle")

    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery-grid .tile").first.click()
    page.wait_for_selector("#gallery-detail:visible")

    page.get_by_role("tab", name="Models").click()
    page.get_by_role("button", name="Details of draw:latest").click()
    page.wait_for_selector("#ps-rows tr[data-model]")


def main() -> None:
    from playwright.sync_api import sync_playwright

    root = Path(__file__).resolve().parents[2]
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "docs" / "screens"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="limner-screens-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["LIMNER_DRAW_ENGINE"] = "torch"
    store = Store(work / "models")
    store_toy(store, "see", "see")
    store_toy(store, "draw", "draw")
    with ThreadServer(Scheduler(store, keep_alive=600.0)) as server, sync_playwright() as pw:
        for seed, prompt in enumerate(DRAWINGS):  # the gallery's pictures
            httpx.post(f"{server.url}/api/generate", timeout=300,
                       json={"model": "draw", "prompt": prompt, "seed": seed, "steps": 8,
                             "stream": False}).raise_for_status()  # fmt: skip
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        prepare(page, server, work)
        total = 0
        for size, (width, height) in SIZES.items():
            page.set_viewport_size({"width": width, "height": height})
            for tab in TABS:
                page.get_by_role("tab", name=tab.capitalize()).click()
                page.wait_for_timeout(150)
                page.evaluate("window.scrollTo(0, 0)")
                path = out / f"{tab}-{size}.png"
                path.write_bytes(small_png(page.screenshot()))
                total += path.stat().st_size
                print(f"{path.relative_to(root) if path.is_relative_to(root) else path}"
                      f"  {path.stat().st_size // 1024} KB")  # fmt: skip
        browser.close()
        if problems:
            sys.exit(f"the page had script errors: {problems}")
    print(f"{len(SIZES) * len(TABS)} screenshots, {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
