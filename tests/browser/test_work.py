"""The page keeps work and says what it is doing, at a desktop's size and a phone's: a drawing
survives a reload and a failed run and is in the gallery with its parameters, which fill the
Draw form again; picture to picture and PNG info; chats kept in the browser, rendered as
Markdown, copied, regenerated and edited; "loading MODEL…" while a cold model loads; and no
tab scrolls sideways. On the fake engine (tests/helpers.py), so every run takes a moment."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from browser.pages import bodies, decoded, drawn, open_page, require_browser, shown_picture
from helpers import ThreadServer, add_fake, add_fake_draw
from limner.scheduler import Scheduler
from limner.store import Store

require_browser()
from playwright.sync_api import expect  # noqa: E402

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
TABS = ["chat", "draw", "inpaint", "restyle", "gallery", "train", "models"]


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    """Fake models: "chatty" answers at once, "cold" takes 2 s to load; "painter" draws at
    once, "sketcher" (the newest, so first in every picker) takes 1.5 s to load."""
    store = Store(tmp_path_factory.mktemp("work") / "models")
    add_fake(store, "chatty")
    add_fake(store, "cold", load_delay=2.0)
    add_fake_draw(store, "painter")
    add_fake_draw(store, "sketcher", load_delay=1.5)
    with ThreadServer(Scheduler(store, keep_alive=300.0)) as server:
        yield server


def draw(page: Any, prompt: str, seed: int, steps: int = 3) -> None:
    page.select_option("#draw-model", "painter:latest")
    page.fill("#draw-prompt", prompt)
    page.fill("#draw-width", "64")
    page.fill("#draw-height", "64")
    page.fill("#draw-steps", str(steps))
    page.fill("#draw-seed", str(seed))
    page.locator("#draw-prompt").press("Control+Enter")  # draws
    drawn(page, "draw")


def test_a_drawing_survives_a_reload_and_a_failed_run_and_the_gallery_reuses_it(
    page: Any, fakes: ThreadServer
) -> None:
    page.set_viewport_size(PHONE)
    open_page(page, fakes, "draw")
    draw(page, "a red x", 7)
    expect(page.locator("#draw-rate")).to_contain_text("steps/s")
    expect(page.locator("#draw-parameters")).to_contain_text("a red x")
    before = shown_picture(page, "#draw-result").tobytes()

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#draw-result")).to_be_visible()
    assert shown_picture(page, "#draw-result").tobytes() == before  # from the gallery
    expect(page.locator("#draw-prompt")).to_have_value("a red x")  # the form is kept too
    expect(page.locator("#draw-model")).to_have_value("painter:latest")  # and the model

    page.fill("#draw-steps", "500")
    page.click("#draw-go")
    expect(page.locator("#draw-error")).to_have_text("steps must be between 1 and 150, got 500")
    expect(page.locator("#draw-result")).to_be_visible()  # the error beside it, not instead
    assert shown_picture(page, "#draw-result").tobytes() == before

    page.get_by_role("tab", name="Gallery").click()
    tile = page.locator("#gallery-grid .tile").first  # the newest
    tile.click()
    expect(page.locator("#gallery-parameters")).to_contain_text("a red x")
    expect(page.locator("#gallery-parameters")).to_contain_text("painter:latest")
    expect(page.locator("#gallery-parameters")).to_contain_text("64×64")
    page.evaluate("document.getElementById('draw-prompt').value = ''")
    page.click("#gallery-reuse")
    expect(page.locator("#panel-draw")).to_be_visible()
    expect(page.locator("#draw-prompt")).to_have_value("a red x")
    expect(page.locator("#draw-seed")).to_have_value("7")
    expect(page.locator("#draw-steps")).to_have_value("3")

    # Inpaint carries the model, which is not the Inpaint picker's first.
    page.get_by_role("tab", name="Gallery").click()
    expect(page.locator("#inpaint-model")).to_have_value("sketcher:latest")
    page.click("#gallery-inpaint")
    expect(page.locator("#panel-inpaint")).to_be_visible()
    expect(page.locator("#inpaint-model")).to_have_value("painter:latest")
    assert page.eval_on_selector("#inpaint-mask", "c => [c.width, c.height]") == [64, 64]
    expect(page.locator("#inpaint-prompt")).to_have_value("a red x")

    # A stroke undone leaves nothing painted; one blurred goes out with grey levels.
    def stroke() -> None:
        box = page.locator("#inpaint-mask").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=4)
        page.mouse.up()

    page.locator("#inpaint-mask").scroll_into_view_if_needed()
    stroke()
    page.click("#inpaint-undo")
    expect(page.locator("#inpaint-undo")).to_be_disabled()
    page.click("#inpaint-go")
    expect(page.locator("#inpaint-error")).to_have_text(
        "paint over the part of the picture to repaint first"
    )
    page.fill("#inpaint-brush", "120")  # px on screen: 30 of the picture's 64
    stroke()
    page.fill("#inpaint-blur", "4")
    sent = bodies(page, "/api/generate")
    page.click("#inpaint-go")
    drawn(page, "inpaint")
    mask = np.asarray(decoded(sent[0]["mask"]).convert("L"))
    assert mask.shape == (64, 64) and mask.min() == 0 and mask.max() == 255
    assert len(np.unique(mask)) > 10  # soft edges


def a1111_png(folder: Path) -> Path:
    """A picture as Automatic1111 writes one: its parameters in a `parameters` text chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a lighthouse at dusk\nNegative prompt: fog, rain\n"
                  "Steps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, "
                  "Seed: 1234, Size: 64x48, Model: painter:latest")  # fmt: skip
    path = folder / "a1111.png"
    Image.new("RGB", (64, 48), "teal").save(path, pnginfo=info)
    return path


def test_png_info_fills_the_form_and_img2img_draws_from_a_picture(
    page: Any, fakes: ThreadServer, tmp_path: Path
) -> None:
    open_page(page, fakes, "draw")
    page.set_input_files("#draw-pnginfo-file", a1111_png(tmp_path))
    expect(page.locator("#draw-pnginfo")).to_contain_text("a lighthouse at dusk")
    page.click("#draw-pnginfo-use")
    expect(page.locator("#draw-prompt")).to_have_value("a lighthouse at dusk")
    expect(page.locator("#draw-negative")).to_have_value("fog, rain")
    for field, value in [("steps", "12"), ("guidance", "6.5"), ("seed", "1234"),
                         ("width", "64"), ("height", "48"), ("scheduler", "dpm++ 2m karras"),
                         ("model", "painter:latest")]:  # fmt: skip
        expect(page.locator(f"#draw-{field}")).to_have_value(value)

    page.check("#draw-mode-img2img")
    picture = io.BytesIO()
    Image.new("RGB", (64, 48), "orange").save(picture, "PNG")
    page.set_input_files("#draw-init-file", {"name": "start.png", "mimeType": "image/png",
                                             "buffer": picture.getvalue()})  # fmt: skip
    expect(page.locator("#draw-init-preview")).to_be_visible()
    page.fill("#draw-strength", "0.5")
    page.fill("#draw-batch", "2")
    sent = bodies(page, "/api/generate")
    page.click("#draw-go")
    expect(page.locator("#draw-results img")).to_have_count(2)  # a batch of two
    drawn(page, "draw")
    assert [body["seed"] for body in sent] == [1234, 1235]
    assert all(len(body["images"]) == 1 and body["strength"] == 0.5 for body in sent)
    assert sent[0]["guidance_scale"] == 6.5 and sent[0]["scheduler"] == "dpm++ 2m karras"
    assert shown_picture(page, "#draw-result").size == (64, 48)

    # The result goes on to picture to picture, with its parameters.
    page.fill("#draw-prompt", "")
    page.get_by_role("button", name="Send to img2img").click()
    expect(page.locator("#draw-prompt")).to_have_value("a lighthouse at dusk")
    expect(page.locator("#draw-seed")).to_have_value("1235")


def test_chats_are_kept_and_answers_render_markdown_copy_regenerate_and_edit(
    page: Any, fakes: ThreadServer
) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    open_page(page, fakes)
    page.select_option("#chat-model", "chatty:latest")
    sent = bodies(page, "/api/chat")
    page.fill("#chat-input", "ECHO Here:\n```python\nprint('<b>hi</b>')\n```\n- one\n- **two**")
    page.click("#chat-send")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".code-block code")).to_have_text("print('<b>hi</b>')")  # as text
    expect(answer.locator(".code-block .language")).to_have_text("python")
    expect(answer.locator("ul li")).to_have_text(["one", "two"])
    expect(answer.locator("li strong")).to_have_text("two")
    assert answer.locator("b").count() == 0  # the model's markup is never markup
    answer.locator(".code-block .copy").click()
    expect(answer.locator(".code-block .copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "print('<b>hi</b>')"

    page.get_by_role("button", name="Regenerate this answer").click()
    expect(page.locator(".message.assistant.pending")).to_have_count(0)
    expect(page.locator(".message")).to_have_count(2)
    assert len(sent) == 2 and [m["role"] for m in sent[1]["messages"]] == ["user"]

    page.get_by_role("button", name="Edit and send again").click()
    page.fill(".message.user textarea.edit", "ECHO edited")
    page.get_by_role("button", name="Send the edited message").click()
    expect(page.locator(".message.assistant .text")).to_have_text("edited")
    assert sent[-1]["messages"] == [{"role": "user", "content": "ECHO edited", "images": []}]

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    chats = page.locator("#chat-list li")
    expect(chats).to_have_count(1)
    expect(chats.first).to_contain_text("ECHO edited")  # named after its first question
    expect(page.locator("#chat-log .message")).to_have_count(0)  # a new chat is open
    chats.first.locator(".chat-open").click()
    expect(page.locator(".message.assistant .text")).to_have_text("edited")
    page.once("dialog", lambda dialog: dialog.accept("Markdown"))
    page.get_by_role("button", name="Rename ECHO edited").click()
    expect(chats.first).to_have_text("Markdown✎×")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete Markdown").click()
    expect(chats).to_have_count(0)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(chats).to_have_count(0)


def test_a_cold_model_says_it_is_loading_until_its_first_word_or_step(
    page: Any, fakes: ThreadServer
) -> None:
    open_page(page, fakes)
    page.select_option("#chat-model", "cold:latest")
    page.fill("#chat-input", "hello")
    page.click("#chat-send")
    status = page.locator(".message.assistant .status")
    expect(status).to_contain_text("loading cold:latest… ", timeout=1500)
    expect(page.locator(".message.assistant .text")).to_contain_text("You said: hello")
    expect(status).to_have_count(0)

    page.get_by_role("tab", name="Draw").click()
    expect(page.locator("#draw-model")).to_have_value("sketcher:latest")
    page.fill("#draw-prompt", "a dot")
    page.fill("#draw-width", "64")
    page.fill("#draw-height", "64")
    page.click("#draw-go")
    expect(page.locator("#draw-counter")).to_contain_text("loading sketcher:latest… ", timeout=1500)
    drawn(page, "draw")
    expect(page.locator("#draw-counter")).to_have_text("4 / 4 steps")

    # The Models tab shows what /api/show says, and unloads a model.
    page.get_by_role("tab", name="Models").click()
    page.get_by_role("button", name="Details of cold:latest").click()
    facts = page.locator("#model-details-facts")
    expect(facts).to_contain_text("Capabilities")
    expect(facts).to_contain_text("completion, vision")
    expect(facts).to_contain_text("4,096 tokens")  # the context length
    loaded = page.locator('#ps-rows tr[data-model="cold:latest"]')
    expect(loaded).to_have_count(1)
    page.get_by_role("button", name="Unload cold:latest").click()
    expect(loaded).to_have_count(0)
    assert "cold:latest" not in [
        m["name"] for m in httpx.get(f"{fakes.url}/api/ps").json()["models"]
    ]


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_no_tab_scrolls_sideways(page: Any, fakes: ThreadServer, size: dict[str, int]) -> None:
    page.set_viewport_size(size)
    open_page(page, fakes)
    long = "x" * 300
    page.select_option("#chat-model", "chatty:latest")
    page.fill("#chat-input", f"ECHO ```\n{long}\n```\n{long}")
    page.click("#chat-send")
    expect(page.locator(".message.assistant .code-block")).to_have_count(1)
    page.get_by_role("tab", name="Draw").click()
    draw(page, "a wide prompt " + long, 1)
    for tab in TABS:
        page.locator(f"#tab-{tab}").click()
        expect(page.locator(f"#panel-{tab}")).to_be_visible()
        if tab == "models":
            page.get_by_role("button", name="Details of painter:latest").click()
        if tab == "gallery":
            page.locator("#gallery-grid .tile").first.click()
            expect(page.locator("#gallery-detail")).to_be_visible()
        wide = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
        assert wide[0] <= wide[1], f"{tab} is {wide[0]} px wide at {wide[1]} px"


MARKDOWN = [
    ("a **b** *c* `d<e>` ~~f~~", "<p>a <strong>b</strong> <em>c</em> <code>d&lt;e&gt;</code> <s>f</s></p>"),
    ("# Title\ntext\nmore", "<h3>Title</h3><p>text<br>more</p>"),
    ("1. one\n2. two\n   - inner\n3. three",
     "<ol><li>one</li><li>two<ul><li>inner</li></ul></li><li>three</li></ol>"),
    ("> quoted\n\n---", "<blockquote><p>quoted</p></blockquote><hr>"),
    ('<img src=x onerror="alert(1)">', "<p>&lt;img src=x onerror=\"alert(1)\"&gt;</p>"),
    ("[click](javascript:alert(1))",
     '<p><span class="link">click</span><span class="address"> (javascript:alert(1))</span></p>'),
    ("```\nunclosed <b>", '<div class="code-block"><div class="code-head"><span class="language">'
     'code</span><button class="copy" type="button" aria-label="Copy the code">Copy</button></div>'
     "<pre><code>unclosed &lt;b&gt;</code></pre></div>"),
    ("snake_case_name and 2 * 3 * 4", "<p>snake_case_name and 2 * 3 * 4</p>"),
    ("| a | b |\n|:--|--:|\n| `x` | <b>2</b> \\| 3 |\nafter",
     '<div class="table-box"><table><thead><tr><th>a</th><th style="text-align: right;">b</th>'
     '</tr></thead><tbody><tr><td><code>x</code></td><td style="text-align: right;">&lt;b&gt;2'
     '&lt;/b&gt; | 3</td></tr></tbody></table></div><p>after</p>'),
]  # fmt: skip


def test_the_markdown_renderer_builds_elements_and_never_markup_from_text(
    page: Any, fakes: ThreadServer
) -> None:
    open_page(page, fakes)
    shown = page.evaluate(
        """async (texts) => {
            const { render } = await import("/web/markdown.js");
            return texts.map((text) => {
                const box = document.createElement("div");
                box.append(render(text));
                return box.innerHTML;
            });
        }""",
        [text for text, _ in MARKDOWN],
    )
    assert shown == [html for _, html in MARKDOWN]
