"""The REPL of `limner run`, driven through a pseudo-terminal as a person would."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from helpers import add_fake, ctrl_c_default, picture
from limner.store import Store

PROMPT = ">>> "


@pytest.fixture
def repl(server: Any, store: Store, tmp_path: Path) -> Iterator[pexpect.spawn]:
    """`limner run fake` in a terminal whose working folder holds img.png."""
    add_fake(store, "fake")
    (tmp_path / "img.png").write_bytes(picture())
    env = {**os.environ, "LIMNER_HOST": server.url.removeprefix("http://"), "TERM": "dumb"}
    child = pexpect.spawn(sys.executable, ["-m", "limner", "run", "fake"], env=env, cwd=str(tmp_path),
                          preexec_fn=ctrl_c_default, encoding="utf-8", timeout=30, dimensions=(24, 200))  # fmt: skip
    child.expect_exact(PROMPT)
    yield child
    child.close(force=True)


def ask(child: pexpect.spawn, line: str) -> str:
    """Send one line; return what was printed before the next prompt."""
    child.sendline(line)
    child.expect_exact(PROMPT)
    return str(child.before).replace("\r\n", "\n").removeprefix(line + "\n")


def test_questions_commands_and_bye(repl: pexpect.spawn) -> None:
    assert ask(repl, "hello there") == "I see 0 picture(s). You said: hello there\n\n"
    assert ask(repl, "/set parameter num_predict 2") == "Set parameter 'num_predict' to '2'\n"
    assert ask(repl, "one two three") == "I see 0 picture(s). You\n\n"
    assert (
        ask(repl, "/set parameter nonsense 2")
        == "Couldn't set parameter: \"unknown parameter 'nonsense'\"\n"
    )
    assert (
        ask(repl, "/set parameter top_k many")
        == 'Couldn\'t set parameter: "invalid int value [many]"\n'
    )
    assert ask(repl, "/set system You are terse.") == "Set system message.\n"
    assert ask(repl, "/show system") == "You are terse.\n\n"
    assert "architecture" in ask(repl, "/show info")
    assert "User defined parameters:\n  num_predict" in ask(repl, "/show parameters")
    assert ask(repl, "/clear") == "Cleared session context\n"
    assert ask(repl, "/nonsense") == "Unknown command '/nonsense'. Type /? for help\n"
    assert "/set parameter seed <int>" in ask(repl, "/set parameter")
    assert "Available Commands:" in ask(repl, "/?")
    assert ask(repl, "/set verbose") == "Set 'verbose' mode.\n"
    answer = ask(repl, "timed")
    assert answer.startswith("I see 0 picture(s). You\n\ntotal duration:")
    assert "eval rate:" in answer
    repl.sendline("/bye")
    repl.expect(pexpect.EOF)
    repl.close()
    assert repl.exitstatus == 0


def test_pictures_are_added_reported_and_kept_in_the_history(repl: pexpect.spawn) -> None:
    answer = ask(repl, "what is in img.png and ghost.png?")
    assert "Added image '" in answer and "img.png'" in answer
    assert "Picture 'ghost.png' not found; sending the text without it" in answer
    assert answer.endswith("I see 1 picture(s). You said: what is in and ghost.png?\n\n")
    assert ask(repl, "and now?") == "I see 1 picture(s). You said: and now?\n\n"


def test_multi_line_input(repl: pexpect.spawn) -> None:
    repl.sendline('"""first line')
    repl.expect_exact("... ")
    repl.sendline("second line")
    repl.expect_exact("... ")
    repl.sendline('third"""')
    repl.expect_exact(PROMPT)
    assert "You said: first line second line third\n" in str(repl.before).replace("\r\n", "\n")


def test_ctrl_c_stops_an_answer_and_the_repl_goes_on(repl: pexpect.spawn) -> None:
    repl.sendline("talk SLOW please")
    repl.expect_exact("w2")
    started = time.monotonic()
    repl.sendintr()
    repl.expect_exact(PROMPT)
    assert time.monotonic() - started < 8
    assert "w99" not in str(repl.before)
    # The server stopped generating: the runner is free at once (the rest would take 19 s).
    assert ask(repl, "still there?") == "I see 0 picture(s). You said: still there?\n\n"
    assert time.monotonic() - started < 8


def test_ctrl_c_on_an_empty_line_and_ctrl_d(repl: pexpect.spawn) -> None:
    repl.send("half a line")
    repl.expect_exact("half a line")  # read by readline (Ctrl+C flushes unread input)
    repl.sendintr()  # drops the line without a word
    repl.expect_exact(PROMPT)
    assert "Use Ctrl" not in str(repl.before)
    repl.sendintr()
    repl.expect_exact("Use Ctrl + d or /bye to exit.")
    repl.expect_exact(PROMPT)
    repl.sendeof()
    repl.expect(pexpect.EOF)
    repl.close()
    assert repl.exitstatus == 0


def test_load_and_save(repl: pexpect.spawn) -> None:
    assert ask(repl, "/load ghost") == "Loading model 'ghost'\nCouldn't find model 'ghost'\n"
    ask(repl, "remember this")
    assert ask(repl, "/save saved") == "Created new model 'saved'\n"
    repl.sendline("/load saved")  # its stored messages are replayed, prompt and all
    repl.expect_exact(
        "Loading model 'saved'\r\n>>> remember this\r\nI see 0 picture(s). You said: remember this\r\n"
    )
    repl.expect_exact(PROMPT)
    assert "saved:latest" in ask(repl, "/list")


def test_a_cold_model_shows_that_it_loads_before_the_prompt(server: Any, store: Store) -> None:
    add_fake(store, "cold", load_delay=1.5)
    env = {**os.environ, "LIMNER_HOST": server.url.removeprefix("http://"), "TERM": "dumb"}
    child = pexpect.spawn(sys.executable, ["-m", "limner", "run", "cold"], env=env,
                          encoding="utf-8", timeout=30, dimensions=(24, 200))  # fmt: skip
    child.expect(r"loading cold \d+s")  # a spinner with the seconds so far
    child.expect_exact(PROMPT)
    child.close(force=True)
