"""What a chat session sends with every request, and how its answers are printed:
streamed text with word wrap, and Ollama's `--verbose` timings."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from limner.client import Client
    from limner.types import Metrics


@dataclass
class Session:
    """What one `run` sends with every request; the REPL changes it with /set."""

    model: str
    vision: bool = False
    format: str | dict[str, Any] | None = None  # "json" or a JSON schema
    keep_alive: float | str | None = None
    verbose: bool = False
    wordwrap: bool = True
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)


def attach_pictures(text: str) -> tuple[str, list[bytes]]:
    """Find picture paths in `text`, read them, and say so on stderr."""
    from limner.cli.pictures import find_pictures, read_picture

    found = find_pictures(text, Path.cwd())
    images = []
    for path in found.paths:
        images.append(read_picture(path))
        print(f"Added image '{path}'", file=sys.stderr)
    for name in found.missing:
        print(f"Picture '{name}' not found; sending the text without it", file=sys.stderr)
    return found.text, images


# --- printing an answer as it streams ---------------------------------------------------


class Spinner:
    """Until the first word or step: a spinner on a terminal's stderr with what it waits for
    and for how long, so a cold model's seconds of loading are not a silent pause."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, label: str = "", out: IO[str] | None = None) -> None:
        self.label, self.out = label, out if out is not None else _terminal(sys.stderr)
        self.started = time.monotonic()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._width = 0
        if self.out is not None:
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        assert self.out is not None
        frame = 0
        # A bare spinner waits a second: a loaded model's first word usually comes sooner.
        if self._stopped.wait(0.0 if self.label else 0.9):
            return
        while not self._stopped.wait(0.1):
            seconds = time.monotonic() - self.started
            line = f"{self.FRAMES[frame % len(self.FRAMES)]} {self.label} {seconds:.0f}s".strip()
            self.out.write("\r" + line.replace("  ", " ").ljust(self._width))
            self.out.flush()
            self._width, frame = len(line), frame + 1

    def stop(self) -> None:
        """Stop and wipe the line (safe to call twice)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._width and self.out is not None:
                self.out.write("\r" + " " * self._width + "\r")
                self.out.flush()


def _terminal(out: IO[str]) -> IO[str] | None:
    return out if out.isatty() else None


def waiting_for(sdk: Client, model: str) -> str:
    """What a spinner says before the first word: `loading MODEL` while it is not loaded.
    Asked only when a spinner can show (stderr is a terminal): scripts pay no extra call."""
    from limner.errors import LimnerError

    if _terminal(sys.stderr) is None:
        return ""

    try:
        loaded = {each.name.removesuffix(":latest") for each in sdk.ps().models}
    except LimnerError:
        return ""
    return "" if model.removesuffix(":latest") in loaded else f"loading {model}"


def print_stream(
    chunks: Iterable[Any], text_of: Callable[[Any], str], wordwrap: bool, waiting: str = ""
) -> Metrics | None:
    """Print each piece as it arrives; return the final chunk (with the timings). Until the
    first piece, a spinner says what it waits for (`waiting`).

    The stream is closed however this ends, so a Ctrl+C drops the connection and the
    server stops generating.
    """
    out = Wrapper(terminal_width(), _write) if wordwrap and sys.stdout.isatty() else None
    final = None
    spinner = Spinner(waiting)
    try:
        for chunk in chunks:
            spinner.stop()
            piece = text_of(chunk)
            if out is not None:
                out.feed(piece)
            else:
                _write(piece)
            if chunk.done:
                final = chunk
    finally:
        spinner.stop()
        if out is not None:
            out.flush()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return final


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def terminal_width() -> int:
    return shutil.get_terminal_size((80, 24)).columns


class Wrapper:
    """Word wrap for streamed text: a word is printed once it is complete."""

    def __init__(self, width: int, write: Callable[[str], None]) -> None:
        self.width = max(width - 5, 10)  # Ollama leaves the same margin
        self.write = write
        self.column = 0
        self.spaces = ""
        self.word = ""

    def feed(self, text: str) -> None:
        for char in text:
            if char == "\n":
                self._end_word()
                self.write("\n")
                self.column, self.spaces = 0, ""
            elif char == " ":
                self._end_word()
                self.spaces += " "
            else:
                self.word += char

    def flush(self) -> None:
        self._end_word()

    def _end_word(self) -> None:
        if not self.word:
            return
        if self.column and self.column + len(self.spaces) + len(self.word) > self.width:
            self.write("\n")
            self.column = 0
        else:
            self.write(self.spaces)
            self.column += len(self.spaces)
        self.write(self.word)
        self.column += len(self.word)
        self.spaces = self.word = ""


# --- timings (--verbose) ----------------------------------------------------------------


def print_timings(final: Metrics, out: IO[str]) -> None:
    for line in timing_lines(final):
        print(line, file=out)
    out.flush()


def timing_lines(m: Metrics) -> list[str]:
    """Ollama's `--verbose` summary; a line is left out when its value is missing or zero."""
    lines = []
    if m.total_duration:
        lines.append(f"total duration:       {go_duration(m.total_duration)}")
    if m.load_duration:
        lines.append(f"load duration:        {go_duration(m.load_duration)}")
    if m.prompt_eval_count:
        lines.append(f"prompt eval count:    {m.prompt_eval_count} token(s)")
    if m.prompt_eval_duration:
        lines.append(f"prompt eval duration: {go_duration(m.prompt_eval_duration)}")
        rate = (m.prompt_eval_count or 0) / m.prompt_eval_duration * 1e9
        lines.append(f"prompt eval rate:     {rate:.2f} tokens/s")
    if m.eval_count:
        lines.append(f"eval count:           {m.eval_count} token(s)")
    if m.eval_duration:
        lines.append(f"eval duration:        {go_duration(m.eval_duration)}")
        lines.append(
            f"eval rate:            {(m.eval_count or 0) / m.eval_duration * 1e9:.2f} tokens/s"
        )
    return lines


def go_duration(ns: int) -> str:
    """A duration in nanoseconds as Go prints it: 412ns, 3.2µs, 342.546ms, 1m2.5s."""
    if ns < 1000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return _decimal(ns, 3) + "µs"
    if ns < 1_000_000_000:
        return _decimal(ns, 6) + "ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if hours or minutes else ""
    return text + _decimal(rest, 9) + "s"


def _decimal(value: int, digits: int) -> str:
    whole, fraction = divmod(value, 10**digits)
    tail = str(fraction).rjust(digits, "0").rstrip("0")
    return f"{whole}.{tail}" if tail else str(whole)
