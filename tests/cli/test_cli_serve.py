"""The commands around the server itself: `limner -v`, `limner serve` on a busy port, and
`limner check` beside a server that uses another store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port
from limner.cli.main import main


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_names_the_servers_and_warns_without_one(
    server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LIMNER_HOST", server.url)
    for flag in ("-v", "--version"):
        assert cli(capsys, flag) == (0, f"limner version is {version('limner')}\n", "")
    monkeypatch.setenv("LIMNER_HOST", f"127.0.0.1:{free_port()}")
    code, out, _ = cli(capsys, "-v")
    assert code == 0 and out == (
        "Warning: could not connect to a running limner server\n"
        f"Warning: client version is {version('limner')}\n"
    )


def test_serve_on_a_busy_port_is_one_line_that_says_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "LIMNER_HOST": f"127.0.0.1:{port}",
               "LIMNER_MODELS": str(tmp_path / "models")}  # fmt: skip
        served = subprocess.run([sys.executable, "-m", "limner", "serve"], env=env,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
    assert served.returncode == 1
    assert served.stderr.startswith(
        f"Error: listen tcp 127.0.0.1:{port}: bind: address already in use; another limner"
    )
    assert "Traceback" not in served.stderr and "listening on" not in served.stderr


def test_check_says_when_the_server_it_can_reach_uses_another_store(
    server: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("LIMNER_HOST", server.url)
    monkeypatch.setenv("LIMNER_MODELS", str(tmp_path / "elsewhere"))
    code, out, _ = cli(capsys, "check")
    assert code == 0 and f"note: the server at {server.url} uses another store" in out
    assert str(tmp_path / "elsewhere") in out  # and which store it checked
