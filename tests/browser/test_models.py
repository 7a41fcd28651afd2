"""The Models tab, on a server of its own (deleting must not take the other tests' models):
the stored models listed, a delete that asks first, and the pickers of every tab following."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from browser.pages import open_page, require_browser, store_toy
from limner.store import Store

require_browser()
from playwright.sync_api import expect  # noqa: E402


def test_the_models_tab_lists_the_models_and_deletes_one_after_asking(
    page: Any, store: Store, make_server: Any
) -> None:
    store_toy(store, "see", "see")
    store_toy(store, "draw", "draw")
    server = make_server()
    open_page(page, server, "models")
    rows = page.locator("#models-rows tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#models-rows")).to_contain_text("draw:latest")
    expect(page.locator('tr[data-model="see:latest"]')).to_contain_text("vision")
    expect(page.locator('tr[data-model="draw:latest"]')).to_contain_text("stable-diffusion")
    expect(page.locator("#ps-rows")).to_have_text("Nothing is loaded.")

    # Cancelling the question keeps the model.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Delete see:latest").click()
    expect(rows).to_have_count(2)

    questions: list[str] = []

    def accept(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name="Delete see:latest").click()
    expect(rows).to_have_count(1)
    expect(page.locator("#models-rows")).not_to_contain_text("see:latest")
    assert questions and "see:latest" in questions[0]
    assert [m["name"] for m in httpx.get(f"{server.url}/api/tags").json()["models"]] == [
        "draw:latest"
    ]
    expect(page.locator("#models-error")).to_be_hidden()
    # The chat tab's picker follows: no chat model is left.
    page.get_by_role("tab", name="Chat").click()
    expect(page.locator("#chat-model option")).to_have_text(["no chat model: pull one in Models"])


def test_a_server_with_an_api_token_asks_for_it_once_and_the_page_works(
    page: Any, store: Store, make_server: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("LIMNER_API_KEY", "s3cret")
    store_toy(store, "draw", "draw")
    server = make_server()
    assert httpx.get(f"{server.url}/api/tags").status_code == 401  # the API stays closed
    assert httpx.get(f"{server.url}/web/app.js").status_code == 200  # the page's files do not
    asked: list[str] = []

    def answer(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept("s3cret")

    page.on("dialog", answer)
    open_page(page, server, "models")
    expect(page.locator("#models-rows")).to_contain_text("draw:latest")
    assert len(asked) == 1 and "LIMNER_API_KEY" in asked[0]  # asked once, then kept


def test_the_page_on_a_lan_address_may_call_its_own_server(store: Store, make_server: Any) -> None:
    """A page served from a LAN name sends that Origin with its own requests: they pass,
    while another site's origin still gets the empty 403."""
    own = {"Host": "limner.lan:11434", "Origin": "http://limner.lan:11434"}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LIMNER_ALLOWED_HOSTS", "limner.lan")
        lan = make_server()
    assert httpx.post(f"{lan.url}/api/show", json={"model": "x"}, headers=own).status_code == 404
    other = {**own, "Origin": "http://evil.example"}
    refused = httpx.post(f"{lan.url}/api/show", json={"model": "x"}, headers=other)
    assert (refused.status_code, refused.content) == (403, b"")
