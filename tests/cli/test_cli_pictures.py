"""Picture paths in prompts: every form limner finds, escapes, quotes, and missing files."""

from __future__ import annotations

from pathlib import Path

import pytest

from limner.cli.pictures import find_pictures, read_picture
from limner.errors import InvalidImage


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    (tmp_path / "photos").mkdir()
    for name in ("cat.png", "photos/dog.JPG", "my cat.jpeg", "a(1).webp", "photos/b.png"):
        (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    return tmp_path


def test_a_plain_relative_name_is_found_and_taken_out(cwd: Path) -> None:
    found = find_pictures("what is in cat.png?", cwd)
    assert found == ("what is in?", [cwd / "cat.png"], [])


@pytest.mark.parametrize(
    ("text", "relative"),
    [
        ("describe ./cat.png please", "cat.png"),
        ("describe photos/dog.JPG please", "photos/dog.JPG"),
        ("describe ./photos/../cat.png please", "cat.png"),
        ("describe photos/b.png please", "photos/b.png"),
    ],
)
def test_relative_paths_start_at_the_working_folder(cwd: Path, text: str, relative: str) -> None:
    found = find_pictures(text, cwd)
    assert found.text == "describe please"
    assert [p.resolve() for p in found.paths] == [(cwd / relative).resolve()]


def test_parent_folder_paths(cwd: Path) -> None:
    inner = cwd / "photos"
    found = find_pictures("compare ../cat.png and b.png", inner)
    assert found.text == "compare and"
    assert [p.resolve() for p in found.paths] == [cwd / "cat.png", inner / "b.png"]


def test_absolute_and_home_paths(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(cwd))
    found = find_pictures(f"{cwd}/cat.png vs ~/photos/b.png", Path("/"))
    assert found.text == "vs"
    assert found.paths == [cwd / "cat.png", cwd / "photos/b.png"]


def test_shell_escapes_are_undone(cwd: Path) -> None:
    found = find_pictures(r"what about my\ cat.jpeg and a\(1\).webp?", cwd)
    assert found.paths == [cwd / "my cat.jpeg", cwd / "a(1).webp"]
    assert found.text == "what about and?"


@pytest.mark.parametrize("quote", ["'", '"'])
def test_quoted_paths_may_hold_spaces(cwd: Path, quote: str) -> None:
    found = find_pictures(f"look at {quote}my cat.jpeg{quote} now", cwd)
    assert found == ("look at now", [cwd / "my cat.jpeg"], [])


def test_a_quoted_sentence_ending_in_a_name_is_searched_inside(cwd: Path) -> None:
    found = find_pictures('she said "look at cat.png" twice', cwd)
    assert found == ('she said "look at" twice', [cwd / "cat.png"], [])


def test_extensions_are_case_insensitive_and_limited(cwd: Path) -> None:
    (cwd / "x.gif").write_bytes(b"GIF89a")
    found = find_pictures("photos/dog.JPG x.gif notes.txt", cwd)
    assert found == ("x.gif notes.txt", [cwd / "photos/dog.JPG"], [])


def test_missing_pictures_are_reported_and_their_text_stays(cwd: Path) -> None:
    found = find_pictures("compare cat.png with ghost.png and ./none.webp", cwd)
    assert found.paths == [cwd / "cat.png"]
    assert found.missing == ["ghost.png", "./none.webp"]
    assert found.text == "compare with ghost.png and ./none.webp"


def test_text_without_pictures_is_left_exactly_as_it_was(cwd: Path) -> None:
    text = "  keep   my spacing\n  and a .png extension, file.pngx, v1.2 "
    assert find_pictures(text, cwd) == (text, [], [])


def test_urls_and_folders_are_not_pictures(cwd: Path) -> None:
    (cwd / "dir.png").mkdir()
    found = find_pictures("see https://example.com/cat.png and dir.png", cwd)
    assert found.paths == []
    assert found.missing == ["dir.png"]


def test_a_sentence_full_stop_ends_the_path(cwd: Path) -> None:
    found = find_pictures("Describe cat.png. Then stop.", cwd)
    assert found == ("Describe. Then stop.", [cwd / "cat.png"], [])


def test_a_picture_in_brackets(cwd: Path) -> None:
    found = find_pictures("the photo (cat.png) shows", cwd)
    assert found.paths == [cwd / "cat.png"]
    assert found.text == "the photo () shows"


def test_read_picture_refuses_other_files(cwd: Path) -> None:
    assert read_picture(cwd / "cat.png").startswith(b"\x89PNG")
    (cwd / "fake.png").write_text("not a picture")
    with pytest.raises(InvalidImage, match="not a PNG, JPEG or WebP"):
        read_picture(cwd / "fake.png")
