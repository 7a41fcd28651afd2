"""list/ls, ps, show, cp, rm, stop and create, against a real server on loopback."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from helpers import add_fake
from limner.cli.formats import human_bytes, human_duration
from limner.cli.main import main
from limner.client import Client
from limner.store import Store


@pytest.fixture
def sdk(server: Any, store: Store, monkeypatch: pytest.MonkeyPatch) -> Client:
    """A server holding the fake model; the CLI in this process talks to it."""
    add_fake(store, "fake")
    monkeypatch.setenv("LIMNER_HOST", server.url)
    return Client(server.url)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_prints_ollamas_table(sdk: Client, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "list")
    header, row = out.splitlines()
    assert re.fullmatch(r"NAME\s+ID\s+SIZE\s+MODIFIED", header)
    digest = sdk.list().models[0].digest.removeprefix("sha256:")
    assert row.split()[:2] == ["fake:latest", digest[:12]]
    assert re.search(r"\d+ B\s+(Less than a second|\d+ seconds?) ago$", row)
    assert code == 0


def test_ls_filters_by_prefix(sdk: Client, capsys: pytest.CaptureFixture[str]) -> None:
    sdk.copy("fake", "other")
    _, out, _ = cli(capsys, "ls", "oth")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["other:latest"]


def test_ps_shows_loaded_models(sdk: Client, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = cli(capsys, "ps")
    assert out.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    sdk.generate("fake", keep_alive="5m")
    _, out, _ = cli(capsys, "ps")
    row = out.splitlines()[1]
    assert row.startswith("fake:latest")
    assert "100% CPU" in row
    assert row.endswith("4 minutes from now")


def test_stop_unloads_and_names_a_missing_model(
    sdk: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    sdk.generate("fake")
    assert cli(capsys, "stop", "fake") == (0, "", "")
    assert sdk.ps().models == []
    code, _, err = cli(capsys, "stop", "ghost")
    assert (code, err) == (1, 'Error: couldn\'t find model "ghost" to stop\n')


def test_cp_and_rm(sdk: Client, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "cp", "fake", "copy") == (0, "copied 'fake' to 'copy'\n", "")
    sdk.generate("copy")
    assert cli(capsys, "rm", "copy", "fake") == (0, "deleted 'copy'\ndeleted 'fake'\n", "")
    assert sdk.list().models == []
    assert sdk.ps().models == []
    code, _, err = cli(capsys, "rm", "ghost")
    assert (code, err) == (1, "Error: model 'ghost' not found\n")


def test_show_prints_the_sections(sdk: Client, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in sdk.create("tuned", from_="fake", system="Be brief.\nReally.\nVery.",
                        parameters={"num_predict": 3, "stop": ["a", "b"]}, stream=True):  # fmt: skip
        pass
    code, out, _ = cli(capsys, "show", "tuned")
    assert code == 0
    sections = [
        line.strip()
        for line in out.splitlines()
        if line.startswith("  ") and not line.startswith("   ")
    ]
    assert sections == ["Model", "Capabilities", "Parameters", "System"]
    assert re.search(r"^    architecture {4,}fake$", out, re.M)
    assert re.search(r"^    context length {4,}4096$", out, re.M)
    assert re.search(r"^    num_predict {4,}3$", out, re.M)
    assert re.search(r'^    stop {4,}"b"$', out, re.M)
    assert "    vision\n" in out
    assert "    Be brief.\n    Really.\n    ...\n" in out


def test_show_flags_print_one_field(sdk: Client, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in sdk.create(
        "tuned", from_="fake", system="Be brief.", parameters={"num_predict": 3}, stream=True
    ):
        pass
    assert cli(capsys, "show", "tuned", "--system")[1] == "Be brief.\n"
    assert cli(capsys, "show", "tuned", "--parameters")[1] == f"{'num_predict':<30} 3\n"
    assert (
        cli(capsys, "show", "tuned", "--license")[1] == "No license was specified for this model.\n"
    )
    assert "FROM tuned:latest" in cli(capsys, "show", "tuned", "--modelfile")[1]
    code, _, err = cli(capsys, "show", "tuned", "--system", "--license")
    assert code == 1 and "only one of" in err


def test_create_refuses_pickle_weights(
    sdk: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "llava"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (folder / "model.bin").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    code, out, err = cli(capsys, "create", "bad", "--from", str(folder))
    assert code == 1
    assert "copying file config.json" in out
    assert err.startswith("Error: ") and "pickle" in err
    assert sdk.list().models[0].name == "fake:latest" and len(sdk.list().models) == 1


def test_create_uploads_nested_files_and_skips_hidden_ones(
    sdk: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / ".cache").mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "limner-fake"}))
    (folder / "sub" / "notes.txt").write_text("hi")
    (folder / ".cache" / "lock").write_text("x")
    code, out, _ = cli(capsys, "create", "mine", "--from", str(folder))
    assert code == 0
    assert out.splitlines()[:2] == [
        "copying file config.json (29 B)",
        "copying file sub/notes.txt (2 B)",
    ]
    assert out.splitlines()[-1] == "success"
    assert "mine:latest" in [m.name for m in sdk.list().models]


def test_create_from_a_missing_folder(sdk: Client, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "create", "x", "--from", "/no/such/folder")
    assert code == 1 and "does not exist" in err


def test_create_tiny_llava(sdk: Client, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("limner.tiny")
    code, out, _ = cli(capsys, "create", "tiny", "--tiny", "llava")
    assert code == 0 and out.splitlines()[-1] == "success"
    _, out, _ = cli(capsys, "show", "tiny")
    assert re.search(r"^    architecture {4,}llava$", out, re.M)
    assert re.search(r"^    image tokens {4,}576$", out, re.M)


def test_create_tiny_gguf_and_quantize_a_stored_llava(
    sdk: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("llama_cpp")
    code, out, _ = cli(capsys, "create", "tiny-gguf", "--tiny", "llava-gguf")
    assert code == 0 and "copying file mmproj.gguf" in out and out.endswith("success\n")
    cli(capsys, "create", "tiny", "--tiny", "llava")
    code, out, _ = cli(capsys, "create", "tiny-q8", "--from", "tiny", "--quantize", "Q8_0")
    assert code == 0 and out.splitlines()[0] == "quantizing F32 model to Q8_0"
    for name, quantization in (("tiny-gguf", "F16"), ("tiny-q8", "Q8_0")):
        _, out, _ = cli(capsys, "show", name)
        assert re.search(rf"quantization\s+{quantization}", out) and "vision" in out
        assert re.search(r"^    image tokens {4,}576$", out, re.M)


@pytest.mark.parametrize(
    ("kind", "capabilities"),
    [("embed", "embedding"), ("embed-gguf", "embedding"), ("text-gguf", "completion")],
)
def test_create_tiny_text_models(
    sdk: Client, capsys: pytest.CaptureFixture[str], kind: str, capabilities: str
) -> None:
    pytest.importorskip("llama_cpp")
    code, out, _ = cli(capsys, "create", kind, "--tiny", kind)
    assert code == 0 and out.endswith("success\n")
    assert sdk.show(kind).capabilities == [capabilities]


def test_a_missing_server_tells_the_user_to_start_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers import free_port

    monkeypatch.setenv("LIMNER_HOST", f"127.0.0.1:{free_port()}")
    code, _, err = cli(capsys, "list")
    assert code == 1 and err.startswith("Error: could not connect") and "limner serve" in err


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (1500, "1.5 KB"),
        (4_700_000_000, "4.7 GB"),
        (12_300_000, "12 MB"),
    ],
)
def test_human_bytes(size: int, text: str) -> None:
    assert human_bytes(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "Less than a second"), (1, "1 second"), (59, "59 seconds"), (60, "About a minute"),
     (299, "4 minutes"), (3600, "About an hour"), (3 * 86400, "3 days"), (20 * 86400, "2 weeks"),
     (90 * 86400, "3 months"), (800 * 86400, "2 years")],
)  # fmt: skip
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_create_the_toy_vision_model_and_its_gguf(
    sdk: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("llama_cpp")
    code, out, _ = cli(capsys, "create", "toy-see", "--toy", "see")
    assert code == 0 and out.endswith("success\n")
    code, out, _ = cli(capsys, "create", "toy-see-gguf", "--toy", "see-gguf")
    assert code == 0 and "copying file mmproj.gguf" in out
    for name in ("toy-see", "toy-see-gguf"):
        _, out, _ = cli(capsys, "show", name)
        assert "vision" in out and re.search(r"^    image tokens {4,}64$", out, re.M), out


MODELFILE = '''# a tuned fake
FROM fake
PARAMETER temperature 0.2
PARAMETER stop "USER:"
parameter stop </s>
PARAMETER num_ctx 2048
SYSTEM """You describe pictures
in one sentence."""
TEMPLATE "{{ .System }} USER: {{ .Prompt }} ASSISTANT:"
LICENSE """MIT"""
MESSAGE user What is this?
MESSAGE assistant A red square.
'''


def test_create_from_a_modelfile_and_show_modelfile_round_trips(
    sdk: Client, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "Modelfile").write_text(MODELFILE)
    code, out, err = cli(capsys, "create", "tuned", "-f", str(tmp_path / "Modelfile"))
    assert code == 0 and out.endswith("success\n"), err
    shown = sdk.show("tuned")
    assert shown.system == "You describe pictures\nin one sentence."
    assert shown.template == "{{ .System }} USER: {{ .Prompt }} ASSISTANT:"
    assert shown.license == "MIT"
    assert shown.messages == [{"role": "user", "content": "What is this?"},
                              {"role": "assistant", "content": "A red square."}]  # fmt: skip
    assert shown.parameters is not None and '"USER:"' in shown.parameters
    # What `show --modelfile` prints builds the same model again.
    (tmp_path / "Again").write_text(cli(capsys, "show", "tuned", "--modelfile")[1])
    assert cli(capsys, "create", "again", "-f", str(tmp_path / "Again"))[0] == 0
    again = sdk.show("again")
    for field in ("system", "template", "license", "messages", "parameters"):
        assert getattr(again, field) == getattr(shown, field), field


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("FROM fake\nPARAMETER temperature hot", "line 2: parameter 'temperature' must be float"),
        ("FROM fake\nRUN rm -rf /", "line 2: unknown instruction 'RUN'"),
        ('FROM fake\nSYSTEM """never closed', 'line 2: a """ value is never closed'),
        ("PARAMETER seed 1", "no FROM line"),
    ],
)
def test_a_bad_modelfile_names_the_line_and_what_was_expected(
    sdk: Client, capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, says: str
) -> None:
    (tmp_path / "Modelfile").write_text(text)
    code, _, err = cli(capsys, "create", "bad", "-f", str(tmp_path / "Modelfile"))
    assert code == 1 and says in err
