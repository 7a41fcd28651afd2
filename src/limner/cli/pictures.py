"""Picture paths in prompts: find them, take them out of the text, read the files.

Ollama finds only absolute and `./` paths and silently skips the ones that do not exist.
limner also finds `~/` paths and plain relative names (`cat.png`, `photos/cat.jpg`), and
reports a named picture that does not exist instead of dropping it without a word:

    >>> find_pictures("what is in cat.png?", Path("/tmp/empty"))
    Found(text='what is in cat.png?', paths=[], missing=['cat.png'])
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from limner import pictures

EXTENSIONS = "(?:" + "|".join(re.escape(suffix) for suffix in pictures.SUFFIXES) + ")"
# A path ends at the end of the text, a space, closing punctuation, or a sentence's full stop.
_END = r"(?=$|[\s,;:!?)\]}'\"]|\.(?:\s|$))"
# Quoted: anything but quotes and line breaks. Bare: non-space characters or `\`-escapes
# (`my\ cat.png`), starting after a space or an opening bracket, never with a quote
# or a bracket.
_CANDIDATE = re.compile(
    rf"(?P<q>['\"])(?P<quoted>[^'\"\n]+?{EXTENSIONS})(?P=q)"
    rf"|(?<![^\s(\[{{])(?P<bare>(?:\\.|[^\s\\'\"(\[{{])(?:\\.|[^\s\\\"])*?{EXTENSIONS}){_END}",
    re.IGNORECASE,
)
_ESCAPE = re.compile(r"\\(.)")


class Found(NamedTuple):
    text: str  # the prompt with every picture that exists taken out
    paths: list[Path]  # the pictures that exist, in order, as paths usable from anywhere
    missing: list[str]  # picture names that do not exist, as written (their text stays)


def find_pictures(text: str, cwd: Path) -> Found:
    """Take the paths of existing pictures out of `text`; relative paths start at `cwd`."""
    paths: list[Path] = []
    missing: list[str] = []
    remaining = _scan(text, cwd, paths, missing)
    return Found(remaining.strip() if paths else remaining, paths, missing)


def _scan(text: str, cwd: Path, paths: list[Path], missing: list[str]) -> str:
    out: list[str] = []
    position = 0
    for match in _CANDIDATE.finditer(text):
        out.append(text[position : match.start()])
        position = match.end()
        quoted = match.group("quoted")
        spelled = quoted if quoted is not None else _ESCAPE.sub(r"\1", match.group("bare"))
        path = _resolve(spelled, cwd)
        if path is not None and path.is_file():
            paths.append(path)
            _drop_space_before(out, text, position)
        elif quoted is not None and any(c.isspace() for c in quoted):
            # A quoted sentence that merely ends in a file name: look inside it instead.
            out.append(match.group("q") + _scan(quoted, cwd, paths, missing) + match.group("q"))
        else:
            if path is not None:
                missing.append(spelled)
            out.append(match.group(0))
    out.append(text[position:])
    return "".join(out)


def _resolve(spelled: str, cwd: Path) -> Path | None:
    if "://" in spelled:
        return None  # a URL, not a file
    path = Path(spelled).expanduser()
    return path if path.is_absolute() else cwd / path


def _drop_space_before(out: list[str], text: str, end: int) -> None:
    """Keep one space where a path was cut out of the middle of a sentence."""
    if out and out[-1].endswith(" ") and (end == len(text) or text[end] in " ?!.,;:"):
        out[-1] = out[-1][:-1]


def read_picture(path: Path) -> bytes:
    """The bytes of a PNG, JPEG or WebP file; other files are refused before sending."""
    return pictures.read_file(path)
