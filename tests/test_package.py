"""The package's public surface and its one-way layering."""

import subprocess
import sys
from pathlib import Path

import limner

ROOT = Path(__file__).resolve().parents[1]


def test_the_public_surface_is_exactly_the_sdk_types_and_errors() -> None:
    assert sorted(limner.__all__) == sorted(
        ["AsyncClient", "Client", "ConnectError", "InvalidImage", "InvalidRequest", "LimnerError",
         "ModelNotFound", "NotFound", "RequestCanceled", "RunnerFailed", "ServerBusy", "TooLarge",
         "UnsafeWeights", "errors", "types", "GeneratedImage", "read_parameters"]
    )  # fmt: skip


def test_importing_the_sdk_loads_no_server_and_no_engine_library() -> None:
    code = "import sys, limner; print(sorted(m for m in ('torch', 'transformers', 'fastapi', 'uvicorn', 'limner.server', 'limner.scheduler') if m in sys.modules))"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"


def test_the_layers_only_import_downwards() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


def test_a_runners_log_carries_no_note_about_torchvision_being_absent() -> None:
    """torchvision is no dependency: transformers' Pillow processors are what limner means,
    so its note that it falls back to them is not passed on; its other lines are."""
    import logging

    import limner.engines  # noqa: F401  (installs the filter)

    notes = logging.getLogger("transformers.utils.import_utils")
    fallback = "`CLIPImageProcessor` requires torchvision (not installed); falling back to ..."

    def passes(message: str) -> bool:
        record = notes.makeRecord(notes.name, logging.WARNING, __file__, 0, message, None, None)
        return notes.filter(record) is not False

    assert not passes(fallback) and passes("Could not import module 'x'")


def test_the_demos_set_up_needs_no_root_and_no_browser() -> None:
    """`make demo` on a fresh machine: a venv and pip, never apt-get or Chromium (only the
    browser tests need those)."""
    root = Path(__file__).resolve().parents[1]
    planned = subprocess.run(["make", "-n", "-B", "demo"], cwd=root, capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    assert "python3 -m venv" in planned and "limner demo" in planned
    for needs_root in ("apt-get", "chromium", "sudo"):
        assert needs_root not in planned.lower()
