"""The page at / as a user works it, in headless Chromium: asking the toy vision model about a
picture, drawing with the toy Stable Diffusion, inpainting a half painted with the mouse, and
the API's errors shown on the page. Results are read back from the page and judged."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from browser.pages import (
    LONG,
    bodies,
    decoded,
    drawn,
    open_page,
    require_browser,
    shape_file,
    shown_picture,
)
from helpers import ThreadServer
from limner.toys.shapes import QUESTIONS, Spec, judge_colour

require_browser()
from playwright.sync_api import expect  # noqa: E402

CSP = ["default-src 'self'", "img-src 'self' data: blob:", "style-src 'self'",
       "script-src 'self'", "connect-src 'self'"]  # fmt: skip


def test_browsers_get_the_page_and_everyone_else_ollamas_answer(
    page: Any, toys: ThreadServer
) -> None:
    plain = httpx.get(f"{toys.url}/")
    assert (plain.status_code, plain.text) == (200, "Ollama is running")
    assert plain.headers["content-type"].startswith("text/plain")
    assert httpx.head(f"{toys.url}/").status_code == 200
    html = httpx.get(f"{toys.url}/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert html.headers["content-type"].startswith("text/html") and "<title>limner" in html.text
    assert all(rule in html.headers["content-security-policy"] for rule in CSP)
    assert html.headers["cache-control"] == "no-cache"
    script = httpx.get(f"{toys.url}/web/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.headers["cache-control"] == "no-cache"
    assert script.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{toys.url}/web/index.html").headers["content-security-policy"]
    for name in ("nothing.js", "..%2Fweb.py", "%2e%2e%2fapp.py", "..%5C..%5Capp.py"):
        missing = httpx.get(f"{toys.url}/web/{name}")
        assert missing.status_code == 404 and "error" in missing.json(), name
    assert httpx.get(f"{toys.url}/web/../server/web.py").status_code == 404

    open_page(page, toys)
    expect(page).to_have_title("limner")
    expect(page.locator("#not-started")).to_be_hidden()
    expect(page.locator("#chat-model option")).to_have_text(["see:latest"])  # chat models only
    for tab in ("draw", "inpaint", "restyle", "train", "models", "chat"):
        page.get_by_role("tab", name=tab.capitalize()).click()
        expect(page.locator(f"#panel-{tab}")).to_be_visible()
    expect(page.locator("#panel-draw")).to_be_hidden()
    expect(page.locator("#draw-model option")).to_have_text(["draw:latest"])  # drawing models only


def test_the_sha256_fallback_for_plain_http_pages_matches_hashlib(
    page: Any, toys: ThreadServer
) -> None:
    open_page(page, toys)
    lengths = [0, 1, 55, 56, 63, 64, 65, 1000, 70_001]
    digests = page.evaluate(
        """async (lengths) => {
            const { sha256Fallback } = await import("/web/sha256.js");
            return lengths.map((n) => sha256Fallback(Uint8Array.from({ length: n }, (_, i) => (i * 31 + 7) & 255)));
        }""",
        lengths,
    )
    expected = [hashlib.sha256(bytes((i * 31 + 7) & 255 for i in range(n))).hexdigest()
                for n in lengths]  # fmt: skip
    assert digests == expected


@pytest.mark.slow
def test_pictures_are_attached_by_picking_pasting_and_dropping(
    page: Any, toys: ThreadServer, tmp_path: Path
) -> None:
    open_page(page, toys)
    attached = page.locator("#chat-attachments img")
    page.set_input_files("#chat-files", shape_file(tmp_path, Spec("red", "circle")))
    expect(attached).to_have_count(1)
    png = base64.b64encode(shape_file(tmp_path, Spec("blue", "square")).read_bytes()).decode()
    make_file = """(png) => new File([Uint8Array.from(atob(png), (c) => c.charCodeAt(0))],
                                     "shape.png", { type: "image/png" })"""
    page.evaluate(
        f"""(png) => {{
            const pasted = new DataTransfer();
            pasted.items.add(({make_file})(png));
            document.getElementById("chat-input").dispatchEvent(
                new ClipboardEvent("paste", {{ clipboardData: pasted, bubbles: true }}));
        }}""",
        png,
    )
    expect(attached).to_have_count(2)
    page.evaluate(
        f"""(png) => {{
            const dropped = new DataTransfer();
            dropped.items.add(({make_file})(png));
            document.getElementById("chat-form").dispatchEvent(
                new DragEvent("drop", {{ dataTransfer: dropped, bubbles: true, cancelable: true }}));
        }}""",
        png,
    )
    expect(attached).to_have_count(3)
    page.get_by_role("button", name="Remove shape.png").first.click()
    expect(page.locator("#chat-attachments img")).to_have_count(2)
    expect(page.locator("#chat-error")).to_be_hidden()


@pytest.mark.slow
def test_chat_names_the_colour_of_an_attached_picture_and_keeps_the_conversation(
    page: Any, toys: ThreadServer, tmp_path: Path
) -> None:
    open_page(page, toys)
    sent = bodies(page, "/api/chat")
    page.select_option("#chat-model", "see:latest")
    page.locator("#chat-options summary").click()
    page.fill("#chat-temperature", "0")  # greedy: the toy's one-word answers
    page.set_input_files("#chat-files", shape_file(tmp_path, Spec("red", "circle")))
    expect(page.locator("#chat-attachments img")).to_have_count(1)
    page.fill("#chat-input", QUESTIONS["colour"])
    page.click("#chat-send")
    answer = page.locator(".message.assistant .text").last
    expect(answer).to_have_text("red", timeout=LONG)
    expect(page.locator(".message.assistant .meta").last).to_contain_text("tokens")
    expect(page.locator("#chat-attachments img")).to_have_count(0)  # sent with the question

    # A follow-up sends the whole conversation, the picture in its first turn.
    page.fill("#chat-input", QUESTIONS["shape"])
    page.keyboard.press("Enter")
    expect(page.locator(".message.assistant")).to_have_count(2)
    expect(page.locator(".message.assistant.pending")).to_have_count(0, timeout=LONG)
    expect(page.locator("#chat-error")).to_be_hidden()
    follow_up = sent[-1]["messages"]
    assert [m["role"] for m in follow_up] == ["user", "assistant", "user"]
    assert follow_up[1]["content"] == "red" and len(follow_up[0]["images"]) == 1
    assert sent[-1]["options"] == {"temperature": 0}

    # The model is now loaded, and the Models tab says so.
    page.get_by_role("tab", name="Models").click()
    expect(page.locator("#ps-rows")).to_contain_text("see:latest")


@pytest.mark.slow
def test_draw_shows_the_steps_and_the_picture_asked_for(page: Any, toys: ThreadServer) -> None:
    open_page(page, toys, "draw")
    page.select_option("#draw-model", "draw:latest")
    page.fill("#draw-prompt", "a blue square")
    page.fill("#draw-width", "64")
    page.fill("#draw-height", "64")
    page.fill("#draw-steps", "20")
    page.fill("#draw-seed", "0")
    sent = bodies(page, "/api/generate")
    page.click("#draw-go")
    drawn(page, "draw")
    assert sent[0]["stream"] is True and sent[0]["preview_every"] == 2  # about 10 previews
    assert sent[0]["width"] == 64 and "guidance_scale" not in sent[0]  # empty: the model's
    assert "vae" not in sent[0]  # "Tiny VAE (fast)" unchecked: the model's own VAE
    expect(page.locator("#draw-counter")).to_have_text("20 / 20 steps")
    assert page.eval_on_selector("#draw-progress", "bar => [bar.value, bar.max]") == [20, 20]
    picture = shown_picture(page, "#draw-result")
    assert picture.size == (64, 64) and judge_colour(picture) == "blue"
    expect(page.locator("#draw-seed-used")).to_have_text("seed 0")
    download = page.locator("#draw-download")
    assert download.get_attribute("href") == page.locator("#draw-result").get_attribute("src")
    assert download.get_attribute("download") == "draw-latest-0.png"
    expect(page.locator("#draw-error")).to_be_hidden()
    expect(page.locator("#draw-go")).to_be_enabled()

    # The picture goes on to Inpaint, with a mask to paint at its size.
    page.get_by_role("button", name="Inpaint this picture").click()
    expect(page.locator("#panel-inpaint")).to_be_visible()
    expect(page.locator("#inpaint-mask")).to_be_visible()
    assert page.eval_on_selector("#inpaint-mask", "c => [c.width, c.height]") == [64, 64]


@pytest.mark.slow
def test_inpaint_repaints_the_half_painted_with_the_mouse_and_keeps_the_rest(
    page: Any, toys: ThreadServer, tmp_path: Path
) -> None:
    source = shape_file(tmp_path, Spec("red", "circle", "white", centre=(0.75, 0.5), extent=0.4))
    open_page(page, toys, "inpaint")
    page.select_option("#inpaint-model", "draw:latest")
    page.set_input_files("#inpaint-file", source)
    canvas = page.locator("#inpaint-mask")
    expect(canvas).to_be_visible()
    page.fill("#inpaint-brush", "32")  # the range input: 32 px on screen
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    brush = 32  # px on screen, whatever the picture's own size
    # Zigzag over the right half: stroke centres half a brush right of the middle, so the
    # painted edge falls on the middle line and never on the left half.
    left, right = box["x"] + box["width"] / 2 + brush / 2 + 1, box["x"] + box["width"] + brush
    page.mouse.move(left, box["y"] + 1)  # the stroke starts on the canvas, then may leave it
    page.mouse.down()
    page.mouse.move(left, box["y"] - brush / 2)
    y = box["y"] - brush / 2
    while y <= box["y"] + box["height"] + brush:
        page.mouse.move(right, y, steps=6)
        page.mouse.move(right, y + brush / 2, steps=2)
        page.mouse.move(left, y + brush / 2, steps=6)
        y += brush
        page.mouse.move(left, y, steps=2)
    page.mouse.up()

    sent = bodies(page, "/api/generate")
    page.fill("#inpaint-prompt", "a green square")
    page.fill("#inpaint-seed", "0")
    page.click("#inpaint-go")
    drawn(page, "inpaint")

    mask = np.asarray(decoded(sent[0]["mask"]).convert("L"))
    assert mask.shape == (64, 64)
    assert (mask[:, :32] == 0).all() and (mask[:, 33:] == 255).all()  # the painted half, exactly
    before = np.asarray(decoded(base64.b64encode(source.read_bytes()).decode()))
    result = shown_picture(page, "#inpaint-result")
    after = np.asarray(result)
    assert np.array_equal(after[:, :32], before[:, :32])  # kept
    assert np.abs(after[:, 33:].astype(int) - before[:, 33:]).mean() > 20  # repainted
    assert judge_colour(result.crop((32, 0, 64, 64))) == "green"


def test_errors_from_the_api_are_shown_on_the_page(page: Any, toys: ThreadServer) -> None:
    open_page(page, toys, "draw")
    page.fill("#draw-prompt", "a blue square")
    page.fill("#draw-steps", "500")
    page.click("#draw-go")
    expect(page.locator("#draw-error")).to_have_text("steps must be between 1 and 150, got 500")
    page.fill("#draw-steps", "2")
    page.fill("#draw-width", "60")
    page.click("#draw-go")
    expect(page.locator("#draw-error")).to_contain_text("multiples of 8")
    expect(page.locator("#draw-result")).to_be_hidden()
    page.fill("#draw-width", "64")
    page.check("#draw-tiny-vae")  # sends vae "tiny"; the toy has no tiny autoencoder
    page.click("#draw-go")
    expect(page.locator("#draw-error")).to_contain_text("--tiny-vae PATH")
    page.uncheck("#draw-tiny-vae")

    # An error line in the middle of a stream: a pull from a registry that is not there.
    page.get_by_role("tab", name="Models").click()
    page.fill("#pull-name", "127.0.0.1:9/library/nothing")
    page.check("#pull-insecure")
    page.click("#pull-go")
    expect(page.locator("#pull-error")).to_contain_text("pull model manifest", timeout=LONG)
    expect(page.locator("#pull-status")).to_have_text("pulling manifest")  # the line before

    # The page's own checks say what is missing, before anything is sent.
    page.get_by_role("tab", name="Inpaint").click()
    page.click("#inpaint-go")
    expect(page.locator("#inpaint-error")).to_have_text("choose a picture first")
    page.get_by_role("tab", name="Chat").click()
    page.click("#chat-send")
    expect(page.locator("#chat-error")).to_have_text("write a message or attach a picture")
    assert json.loads(httpx.get(f"{toys.url}/api/tags").text)["models"]  # nothing was deleted


@pytest.mark.slow
def test_restyle_draws_from_the_reference_and_says_when_the_model_cannot(
    page: Any, toys: ThreadServer, tmp_path: Path
) -> None:
    open_page(page, toys, "restyle")
    page.select_option("#restyle-model", "draw:latest")
    reference = shape_file(tmp_path, Spec("yellow", "triangle"), "reference.png")
    page.set_input_files("#restyle-reference", reference)
    expect(page.locator("#restyle-reference-preview")).to_be_visible()
    page.fill("#restyle-prompt", "a yellow triangle")
    page.fill("#restyle-seed", "1")
    page.click("#restyle-go")
    drawn(page, "restyle")
    assert judge_colour(shown_picture(page, "#restyle-result")) == "yellow"

    # The toy has no IP-Adapter (/api/show says so): the page says it cannot restyle a picture
    # of yours, and the field for one is off, before anything is sent.
    expect(page.locator("#restyle-picture")).to_be_disabled()
    expect(page.locator("#restyle-picture-reason")).to_contain_text("has no IP-Adapter")


@pytest.mark.slow
def test_stop_ends_a_drawing_and_the_page_says_so(page: Any, toys: ThreadServer) -> None:
    open_page(page, toys, "draw")
    page.fill("#draw-prompt", "a red circle")
    page.fill("#draw-width", "64")
    page.fill("#draw-height", "64")
    page.fill("#draw-steps", "150")
    page.click("#draw-go")
    expect(page.locator("#draw-counter")).to_contain_text(" / 150 steps", timeout=LONG)
    page.click("#draw-stop")
    expect(page.locator("#draw-counter")).to_contain_text("stopped")
    expect(page.locator("#draw-go")).to_be_enabled()
    expect(page.locator("#draw-result")).to_be_hidden()
    expect(page.locator("#draw-error")).to_be_hidden()
    # The server let go of the drawing: the next one runs at once.
    page.fill("#draw-steps", "2")
    page.click("#draw-go")
    drawn(page, "draw")
    expect(page.locator("#draw-counter")).to_have_text("2 / 2 steps")
