"""What a LoRA training run receives and yields, with no torch: the request, the dataset, the steps.

The server validates a request and reads its dataset with this module before anything is
loaded, so a bad dataset is a 4xx before training starts; the trainer (`engines/lora.py`, in
a runner process) reads the same files again with the same code.

Datasets: PNG, JPEG and WebP pictures (by suffix, at any depth), captioned by a
`metadata.jsonl` line (`{"file_name": ..., "text": ...}`, file_name relative to that file's
folder) or else by a same-stem `.txt` next to the picture, or else by the instance prompt
(DreamBooth style) or a caption written by a vision model (`captions`). Other files, hidden
files and `__MACOSX/` are ignored; a picture suffix on a file that does not decode is refused.
Nothing outside the dataset is ever read: symlinks, and zip members or file_names that are
absolute or hold `..`, are refused; a zip is read in memory (never unpacked to disk) within
MAX_DATASET_BYTES.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from limner.errors import InvalidRequest, TooLarge
from limner.pictures import SUFFIXES, check_header

METADATA = "metadata.jsonl"
MAX_DATASET_BYTES = 2 << 30  # pictures + captions, read into memory
MAX_RESOLUTION = 2048
MAX_STEPS = 1_000_000
MAX_RANK = 1024
MAX_BATCH = 256
LR_SCHEDULERS = ("constant", "linear", "cosine", "constant_with_warmup")


@dataclass
class Example:
    """One training picture: its path inside the dataset, encoded bytes, and caption."""

    name: str
    picture: bytes
    caption: str


@dataclass
class TrainRequest:
    """How to train. Defaults follow diffusers' LoRA example (rank 4, lr 1e-4, constant)."""

    resolution: int = 0  # 0: the model's default size (512 for SD 1.5)
    center_crop: bool = True  # else a random crop
    random_flip: bool = False
    steps: int = 500  # optimizer steps
    batch_size: int = 1
    gradient_accumulation: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"  # one of LR_SCHEDULERS
    warmup_steps: int = 0
    rank: int = 4
    alpha: float | None = None  # None: rank (LoRA scale 1)
    seed: int = 0
    precision: str = ""  # frozen weights: "" picks bf16 where the device has it, else fp32
    instance_prompt: str = ""  # caption of pictures without their own
    validation_prompt: str = ""  # "": the first picture's caption
    validation_every: int = 0  # 0: no validation pictures
    checkpoint_every: int = 0  # 0: no checkpoints
    max_grad_norm: float = 1.0


@dataclass
class TrainProgress:
    """One optimizer step done; `loss` is its mean over the accumulated batches."""

    step: int
    total: int
    loss: float
    learning_rate: float
    eta_seconds: float


@dataclass
class TrainCheckpoint:
    """A loadable LoRA (diffusers keys) of the weights after `step`."""

    step: int
    path: Path


@dataclass
class TrainValidation:
    """A picture of the validation prompt drawn with the adapter after `step`."""

    step: int
    png: bytes


@dataclass
class TrainDone:
    """Training finished: `path` is the diffusers-format LoRA, `parameters` what was used."""

    steps: int
    final_loss: float
    path: Path
    parameters: dict[str, Any]


TrainStep = TrainProgress | TrainCheckpoint | TrainValidation | TrainDone


# --- Datasets ----------------------------------------------------------------------------


def load_dataset(source: Path, instance_prompt: str = "") -> list[Example]:
    """The captioned pictures of a folder or .zip; `instance_prompt` captions the others."""
    source = Path(source)
    if source.is_file() and zipfile.is_zipfile(source):
        files = _zip_files(source)
    elif source.is_dir():
        files = _folder_files(source)
    else:
        raise InvalidRequest(f"dataset {source.name!r} is neither a folder nor a .zip file")
    return examples(files, instance_prompt.strip())


def _wanted(name: str) -> bool:
    # Only pictures and captions are read; macOS adds __MACOSX/ and ._ files to zips.
    parts = PurePosixPath(name).parts
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return False
    return name.lower().endswith((*SUFFIXES, ".txt")) or parts[-1] == METADATA


def dataset_paths(folder: Path) -> list[tuple[str, Path]]:
    """The dataset files of a folder as (relative name, path), checked but not read."""
    found: list[tuple[str, Path]] = []
    for root, dirs, names in os.walk(folder):  # symlinked folders are listed, not entered
        for name in dirs + names:
            if Path(root, name).is_symlink():
                relative = Path(root, name).relative_to(folder).as_posix()
                raise InvalidRequest(f"the dataset holds a symbolic link, {relative!r}")
        for name in names:
            relative = Path(root, name).relative_to(folder).as_posix()
            if _wanted(relative):
                found.append((relative, Path(root, name)))
    _check_total(sum(path.stat().st_size for _, path in found))
    return sorted(found)


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in dataset_paths(folder)}


def _zip_files(archive_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive_path) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        for info in members:
            _check_member(info)
        wanted = [info for info in members if _wanted(info.filename)]
        _check_total(sum(info.file_size for info in wanted))
        # ZipExtFile stops at the declared size and checks the CRC, so this read is bounded.
        return {info.filename: archive.read(info) for info in wanted}


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    if stat.S_ISLNK(info.external_attr >> 16):
        raise InvalidRequest(f"the zip holds a symbolic link, {name!r}")
    if not _inside(name):
        raise InvalidRequest(f"the zip member {name!r} points outside the dataset")


def _inside(name: str) -> bool:
    """Whether a relative name stays inside its folder on POSIX and on Windows."""
    windows = PureWindowsPath(name)
    return bool(
        name
        and not windows.drive
        and not windows.root
        and not PurePosixPath(name).is_absolute()
        and ".." not in windows.parts
    )


def _check_total(total: int) -> None:
    if total > MAX_DATASET_BYTES:
        raise TooLarge(
            f"the dataset's pictures and captions hold {total} bytes; "
            f"at most {MAX_DATASET_BYTES} are accepted"
        )


def examples(
    files: dict[str, bytes],
    instance_prompt: str = "",
    written: dict[str, str] | None = None,
    uncaptioned_ok: bool = False,
) -> list[Example]:
    """The dataset's pictures with their captions, checked; `files` maps names to bytes.

    A picture's caption is its metadata.jsonl line, else its .txt, else one `written` for it
    (by a vision model; after the instance prompt when there is one), else the instance
    prompt. Pictures left without one are refused, or kept with "" if `uncaptioned_ok`.
    """
    pictures = [name for name in files if name.lower().endswith(SUFFIXES)]
    if not pictures:
        raise InvalidRequest("the dataset holds no PNG, JPEG or WebP pictures")
    for name in pictures:
        check_header(files[name], f"picture {name!r}")
    listed = _metadata_captions(files, set(pictures))
    written = written or {}
    found, missing = [], []
    for name in sorted(pictures):
        caption = listed.get(name) or _caption_file(files, name)
        if not caption and written.get(name):
            caption = ", ".join(part for part in (instance_prompt, written[name]) if part)
        caption = caption or instance_prompt
        if not caption:
            missing.append(name)
        found.append(Example(name, files[name], caption))
    if missing and not uncaptioned_ok:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if missing[10:] else "")
        raise InvalidRequest(
            f"no caption for {shown}: add a same-stem .txt, a metadata.jsonl line, "
            "an instance prompt, or caption_with a vision model"
        )
    return found


def read_uploaded(files: dict[str, Path]) -> dict[str, bytes]:
    """The dataset files uploaded under their relative names; one .zip is read as a dataset."""
    if len(files) == 1:
        ((name, path),) = files.items()
        if name.lower().endswith(".zip") and zipfile.is_zipfile(path):
            return _zip_files(path)
    for name in files:
        if not _inside(name) or "\\" in name:
            raise InvalidRequest(f"the dataset file name {name!r} points outside the dataset")
    wanted = {posixpath.normpath(name): path for name, path in files.items() if _wanted(name)}
    _check_total(sum(path.stat().st_size for path in wanted.values()))
    return {name: wanted[name].read_bytes() for name in sorted(wanted)}


def _caption_file(files: dict[str, bytes], picture: str) -> str:
    data = files.get(posixpath.splitext(picture)[0] + ".txt")
    return data.decode("utf-8", errors="replace").strip() if data is not None else ""


def _metadata_captions(files: dict[str, bytes], pictures: set[str]) -> dict[str, str]:
    """Captions of every metadata.jsonl, keyed by the picture's name in the dataset."""
    captions: dict[str, str] = {}
    for meta in sorted(name for name in files if PurePosixPath(name).name == METADATA):
        folder = posixpath.dirname(meta)
        text = files[meta].decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                where = f"{meta} line {number}"
                file_name, caption = _metadata_line(line, where)
                name = posixpath.join(folder, file_name) if folder else file_name
                if name not in pictures:
                    raise InvalidRequest(f"{where} names {file_name!r}, which is no picture here")
                captions[name] = caption
    return captions


def _metadata_line(line: str, where: str) -> tuple[str, str]:
    try:
        entry = json.loads(line)
    except RecursionError:
        raise InvalidRequest(f"{where} is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, or a number of more than 4300 digits
        raise InvalidRequest(f"{where} is not JSON we can read: {_json_problem(error)}") from None
    file_name = entry.get("file_name") if isinstance(entry, dict) else None
    caption = entry.get("text", "") if isinstance(entry, dict) else None
    if not isinstance(file_name, str) or not isinstance(caption, str):
        raise InvalidRequest(f'{where} needs a string "file_name" and a string "text"')
    if not _inside(file_name) or "\\" in file_name:
        raise InvalidRequest(f"{where}: file_name {file_name!r} points outside the dataset")
    return posixpath.normpath(file_name), caption.strip()


def _json_problem(error: ValueError) -> str:
    """What json.loads refused, in words that do not point at Python's settings."""
    if "integer string conversion" in str(error):
        return "a number has more than 4300 digits"
    return str(error)


# --- Requests ----------------------------------------------------------------------------


def check_request(request: TrainRequest) -> None:
    """Refuse settings no training run can use, before anything is loaded."""
    positive = ("steps", "batch_size", "gradient_accumulation", "rank")
    for name in positive:
        if getattr(request, name) < 1:
            raise InvalidRequest(f"{name} must be at least 1, not {getattr(request, name)}")
    for name in ("warmup_steps", "validation_every", "checkpoint_every", "resolution"):
        if getattr(request, name) < 0:
            raise InvalidRequest(f"{name} must not be negative, not {getattr(request, name)}")
    for name in ("learning_rate", "max_grad_norm", "alpha"):
        value = getattr(request, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InvalidRequest(f"{name} must be a positive number, not {value}")
    if request.lr_scheduler not in LR_SCHEDULERS:
        raise InvalidRequest(
            f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, not {request.lr_scheduler!r}"
        )
    if request.resolution % 8 or request.resolution > MAX_RESOLUTION:
        raise InvalidRequest(
            f"resolution must be a multiple of 8 up to {MAX_RESOLUTION}, not {request.resolution}"
        )
    for name, most in (("steps", MAX_STEPS), ("rank", MAX_RANK), ("batch_size", MAX_BATCH)):
        if getattr(request, name) > most:
            raise InvalidRequest(f"{name} must be at most {most}, not {getattr(request, name)}")
