"""`limner gallery`: the server's drawings listed, shown, saved and removed from the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from helpers import add_fake_draw
from limner.cli.main import main
from limner.client import Client
from limner.store import Store


@pytest.fixture
def sdk(server: Any, store: Store, monkeypatch: pytest.MonkeyPatch) -> Client:
    add_fake_draw(store, "draw")
    monkeypatch.setenv("LIMNER_HOST", server.url)
    return Client(server.url)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out + err


def test_an_empty_gallery_says_how_pictures_get_there(
    sdk: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "gallery") == (0, "The gallery is empty: pictures appear here once "
                                          "the server draws them.\n")  # fmt: skip


def test_the_listing_shows_the_newest_first_with_model_size_seed_and_prompt(
    sdk: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    old = sdk.generate_image("draw", "a fox", width=32, height=48, seed=7).picture_id
    new = sdk.generate_image("draw", "a very long prompt " * 5, width=32, height=32, seed=8)
    code, out = cli(capsys, "gallery")
    header, first, second = out.splitlines()
    assert code == 0 and header.split() == ["ID", "MODEL", "SIZE", "SEED", "DRAWN", "PROMPT"]
    assert first.split()[:4] == [new.picture_id, "draw:latest", "32x32", "8"]
    assert first.endswith("…") and len(first.split("ago")[1].strip()) == 48
    assert second.split()[:4] == [old, "draw:latest", "32x48", "7"]
    assert second.endswith("a fox")
    _, out = cli(capsys, "gallery", "--limit", "1")
    assert len(out.splitlines()) == 2


def test_show_prints_every_parameter_and_json_for_scripts(
    sdk: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    drawn = sdk.generate_image("draw", "a fox", width=32, height=32, seed=5, steps=3)
    _, out = cli(capsys, "gallery", "show", drawn.picture_id or "")
    assert re.search(r"^prompt\s+a fox$", out, re.M) and re.search(r"^seed\s+5$", out, re.M)
    _, out = cli(capsys, "gallery", "show", drawn.picture_id or "", "--json")
    assert json.loads(out) == drawn.parameters


def test_save_writes_the_png_and_never_over_another_file(
    sdk: Client, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = sdk.generate_image("draw", "a fox", width=32, height=32)
    picture_id = drawn.picture_id or ""
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "gallery", "save", picture_id) == (0, f"saved {tmp_path / picture_id}.png\n")
    (tmp_path / "fox.png").write_bytes(b"mine")
    assert cli(capsys, "gallery", "save", picture_id, "fox.png") == (
        0,
        f"saved {tmp_path}/fox-2.png\n",
    )
    assert (tmp_path / "fox.png").read_bytes() == b"mine"
    assert (
        (tmp_path / "fox-2.png").read_bytes()
        == drawn.png
        == (tmp_path / f"{picture_id}.png").read_bytes()
    )


def test_rm_removes_pictures_and_names_an_id_it_does_not_know(
    sdk: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    picture_id = sdk.generate_image("draw", "a fox", width=32, height=32).picture_id or ""
    assert cli(capsys, "gallery", "rm", picture_id) == (0, f"deleted {picture_id}\n")
    assert sdk.gallery().pictures == []
    code, out = cli(capsys, "gallery", "show", picture_id)
    assert code == 1 and out == f"Error: picture '{picture_id}' not found in the gallery\n"
    code, out = cli(capsys, "gallery", "rm", "fox")
    assert code == 1 and "is not a gallery id (like 20261204-103000123456-1a2b)" in out
