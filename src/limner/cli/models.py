"""Model management commands: list/ls, ps, show, rm, cp, create, pull, stop.

Output follows `ollama`'s: the same tables, sizes (`4.7 GB`), times (`2 days ago`) and
messages (`deleted 'M'`), so scripts written for one work with the other.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from limner.cli.formats import (
    format_show,
    human_bytes,
    human_time,
    now,
    processor,
    show_field,
    table,
)

if TYPE_CHECKING:
    from limner.client import Client
    from limner.types import ProgressResponse

SHOW_FIELDS = ("license", "modelfile", "parameters", "template", "system")
# Vision families that limner.tiny_families writes as Hugging Face folders.
TINY_FAMILIES = ("gemma3", "llava-next", "smolvlm", "mistral3", "qwen2-vl", "qwen2.5-vl",
                 "minicpm-v4.6")  # fmt: skip
TINY_KINDS = ("llava", *TINY_FAMILIES, "text", "llava-gguf", "minicpm-v-gguf", "text-gguf",
              "embed", "embed-gguf", "sd", "sd-inpaint", "sd-checkpoint")  # fmt: skip
TOY_KINDS = ("see", "see-gguf", "draw")


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ls = commands.add_parser("list", aliases=["ls"], help="list models")
    ls.add_argument("prefix", nargs="?", default="", help="only names starting with this")
    ls.set_defaults(run=list_models)

    ps = commands.add_parser("ps", help="list running models")
    ps.set_defaults(run=running_models)

    show = commands.add_parser("show", help="show information for a model")
    show.add_argument("model")
    for field in SHOW_FIELDS:
        show.add_argument(f"--{field}", action="store_true", help=f"show the model's {field}")
    show.set_defaults(run=show_model)

    rm = commands.add_parser("rm", help="remove models")
    rm.add_argument("models", nargs="+", metavar="MODEL")
    rm.set_defaults(run=remove_models)

    cp = commands.add_parser("cp", help="copy a model")
    cp.add_argument("source")
    cp.add_argument("destination")
    cp.set_defaults(run=copy_model)

    stop = commands.add_parser("stop", help="stop (unload) a running model")
    stop.add_argument("model")
    stop.set_defaults(run=stop_model)

    create = commands.add_parser(
        "create", help="create a model from a folder, a file or another model",
        description="Create a model from a local Hugging Face LLaVA folder, GGUF files (a text "
        "model and its mmproj projector), a Stable Diffusion (diffusers) folder or single-file "
        ".safetensors checkpoint, a stored model, or a tiny random-weight one for tests: --tiny "
        "llava (chat), --tiny llava-gguf (chat on llama.cpp), --tiny minicpm-v-gguf "
        "(MiniCPM-V 2.6 on llama.cpp), --tiny text-gguf (chat without pictures), --tiny "
        "gemma3 / llava-next / smolvlm / mistral3 / qwen2-vl / qwen2.5-vl / minicpm-v4.6 "
        "(other vision families; with --quantize, for llama.cpp), --tiny text "
        "(chat without pictures, transformers), --tiny embed / embed-gguf (embeddings), "
        "--tiny sd (draws, with an "
        "IP-Adapter for style pictures), --tiny sd-inpaint, --tiny sd-checkpoint (one file). "
        "--quantize converts a Hugging Face LLaVA, LLaVA-NeXT, Gemma 3, SmolVLM, Mistral Small "
        "3.1, Qwen2-VL, Qwen2.5-VL or MiniCPM-V 4.6 to GGUF for llama.cpp, or quantizes a GGUF.",
    )  # fmt: skip
    create.add_argument("model")
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from", dest="folder", metavar="PATH|MODEL",
        help="a model folder, a .safetensors or .gguf file, or the name of a stored model",
    )  # fmt: skip
    source.add_argument("--tiny", choices=TINY_KINDS, help="a tiny model with random weights")
    source.add_argument(
        "-f", "--file", dest="modelfile", metavar="MODELFILE",
        help="an Ollama Modelfile: FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE, MESSAGE",
    )  # fmt: skip
    source.add_argument(
        "--toy", choices=TOY_KINDS,
        help="a toy model that knows coloured shapes: see (chat), see-gguf (the same on "
        "llama.cpp), draw (draws and inpaints them)",
    )  # fmt: skip
    create.add_argument(
        "--adapter", metavar="FILE[=WEIGHT]", action="append",
        help="a LoRA .safetensors (diffusers or kohya keys) to fuse into a drawing model, at "
        "WEIGHT (default 1) when several are stacked; --from names the stored model; may be "
        "given more than once",
    )  # fmt: skip
    create.add_argument(
        "--adapter-scale", "--scale", metavar="S", type=float,
        help="how strongly the LoRAs apply (default 1)",
    )  # fmt: skip
    create.add_argument(
        "--tiny-vae", metavar="PATH|MODEL",
        help="a tiny autoencoder (TAESD, TAESDXL) for a drawing model, for fast previews and "
        "--vae tiny: a diffusers AutoencoderTiny folder (config.json + "
        "diffusion_pytorch_model.safetensors, as madebyollin/taesd) or a stored one (limner "
        "pull hf.co/madebyollin/taesd); --from names the stored model",
    )  # fmt: skip
    add_training_arguments(create)
    create.add_argument(
        "--quantize", metavar="TYPE", type=str.lower,
        help="quantize with llama.cpp's quantizer: q4_K_M, q4_K_S, q5_K_M, q6_K, q8_0, q4_0, "
        "iq4_xs, f16, ... (a Hugging Face vision model is converted to GGUF first; a GGUF must be "
        "F16, BF16 or F32)",
    )  # fmt: skip
    create.set_defaults(run=create_model)

    pull = commands.add_parser(
        "pull", help="pull a model from a registry",
        description="Pull a model from the Ollama registry (registry.ollama.ai), or from "
        "another registry named in the model: host[:port]/namespace/model[:tag].",
    )  # fmt: skip
    pull.add_argument("model")
    pull.add_argument(
        "--insecure", action="store_true", help="use an insecure (plain http) registry"
    )
    pull.set_defaults(run=pull_model)


def client() -> Client:
    from limner.client import Client

    return Client()


# --- list and ps ------------------------------------------------------------------------


def list_models(args: argparse.Namespace) -> int:
    rows = [
        [
            m.name,
            m.digest.removeprefix("sha256:")[:12],
            human_bytes(m.size),
            human_time(m.modified_at),
        ]
        for m in client().list().models
        if m.name.startswith(args.prefix)
    ]
    print(table(["NAME", "ID", "SIZE", "MODIFIED"], rows))
    return 0


def running_models(args: argparse.Namespace) -> int:
    rows = []
    for m in client().ps().models:
        until = "Stopping..." if m.expires_at < now(m.expires_at) else human_time(m.expires_at)
        rows.append([m.name, m.digest.removeprefix("sha256:")[:12], human_bytes(m.size),
                     processor(m.size, m.size_vram), str(m.context_length or ""), until])  # fmt: skip
    print(table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows))
    return 0


# --- show -------------------------------------------------------------------------------


def show_model(args: argparse.Namespace) -> int:
    chosen = [field for field in SHOW_FIELDS if getattr(args, field)]
    if len(chosen) > 1:
        print("Error: only one of '--license', '--modelfile', '--parameters', '--system', "
              "or '--template' can be specified", file=sys.stderr)  # fmt: skip
        return 1
    info = client().show(args.model)
    if chosen:
        print(show_field(info, chosen[0]))
    elif info.training:
        from limner.cli.training import format_training

        print(format_show(info) + "\n" + format_training(info.training))
    else:
        print(format_show(info))
    return 0


def remove_models(args: argparse.Namespace) -> int:
    from limner.errors import LimnerError, NotFound

    sdk = client()
    for model in args.models:
        try:
            sdk.generate(model, keep_alive=0)  # unload first, as `ollama rm` does
        except NotFound:
            pass
        except LimnerError:
            print(f"Warning: unable to stop model '{model}'", file=sys.stderr)
        sdk.delete(model)
        print(f"deleted '{model}'")
    return 0


def copy_model(args: argparse.Namespace) -> int:
    client().copy(args.source, args.destination)
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def stop_model(args: argparse.Namespace) -> int:
    from limner.errors import LimnerError, NotFound

    sdk = client()
    try:
        sdk.show(args.model)
    except NotFound:
        raise LimnerError(f'couldn\'t find model "{args.model}" to stop') from None
    sdk.generate(args.model, keep_alive=0)
    return 0


# --- create -----------------------------------------------------------------------------


def create_model(args: argparse.Namespace) -> int:
    if args.modelfile:
        return _create_from_modelfile(args)
    if args.train:
        return _create_by_training(args)
    if args.adapter or args.tiny_vae:
        return _create_with_adapters(args)
    quantize = args.quantize
    if args.toy:
        with tempfile.TemporaryDirectory(prefix="limner-toy-") as tmp:
            upload_folder(client(), args.model, toy_folder(args.toy, Path(tmp)), quantize=quantize)
        return 0
    if args.tiny:
        with tempfile.TemporaryDirectory(prefix="limner-tiny-") as tmp:
            print(f"writing a tiny {args.tiny} model with random weights")
            folder = write_tiny(args.tiny, Path(tmp))
            upload_folder(client(), args.model, folder, quantize=quantize)
        return 0
    path = Path(args.folder).expanduser()
    if path.is_file():  # a single-file checkpoint or GGUF
        upload_files(client(), args.model, [(path.name, path)], quantize=quantize)
        return 0
    if path.is_dir():
        upload_folder(client(), args.model, path, quantize=quantize)
        return 0
    if not _looks_like_path(args.folder):  # the name of a stored model
        show_progress(
            client().create(args.model, from_=args.folder, quantize=quantize, stream=True)
        )
        return 0
    from limner.errors import InvalidRequest

    raise InvalidRequest(
        f"'{args.folder}' does not exist; --from takes a model folder, a checkpoint or GGUF "
        "file, or the name of a stored model"
    )


def _create_from_modelfile(args: argparse.Namespace) -> int:
    """As `ollama create -f`: paths in the Modelfile are relative to it; files are uploaded
    (the server skips those it has), then one /api/create carries the rest."""
    from limner.cli import modelfile
    from limner.errors import InvalidRequest

    path = Path(args.modelfile).expanduser()
    if not path.is_file():
        raise InvalidRequest(f"'{args.modelfile}' does not exist; -f takes a Modelfile")
    parsed = modelfile.parse(path.read_text(encoding="utf-8"))
    sdk = client()
    base = _beside(parsed.base, path.parent)
    files = None
    if base is not None:
        named = folder_files(base) if base.is_dir() else [(base.name, base)]
        files = {}
        for relname, file in named:
            print(f"copying file {relname} ({human_bytes(file.stat().st_size)})")
            files[relname] = sdk.create_blob(file)
    adapters = {}
    for given in parsed.adapters:
        adapter = _beside(given, path.parent)
        if adapter is None or not adapter.is_file():
            raise InvalidRequest(f"ADAPTER {given!r} is not a file next to the Modelfile")
        adapters[adapter.name] = sdk.create_blob(adapter)
    steps = sdk.create(
        args.model, from_=None if files is not None else parsed.base, files=files,
        parameters=parsed.parameters or None, template=parsed.template, system=parsed.system,
        license=parsed.license or None, messages=parsed.messages or None,
        adapters=adapters or None, quantize=args.quantize, stream=True,
    )  # fmt: skip
    show_progress(steps)
    return 0


def _beside(value: str, folder: Path) -> Path | None:
    """`value` as a path relative to `folder` when it names an existing file or folder."""
    path = Path(value).expanduser()
    path = path if path.is_absolute() else folder / path
    return path if path.exists() else None


def _create_with_adapters(args: argparse.Namespace) -> int:
    """A stored drawing model plus LoRA files (each uploaded, then one adapter layer each)
    and a tiny autoencoder."""
    from limner.errors import InvalidRequest

    if not args.folder:
        flag = "--adapter" if args.adapter else "--tiny-vae"
        raise InvalidRequest(f"{flag} needs --from with the name of a stored drawing model")
    sdk = client()
    adapters, weights = {}, {}
    for given in args.adapter or []:
        path, weight = _weighted(given)
        if not path.is_file():
            raise InvalidRequest(f"'{path}' does not exist; --adapter takes a .safetensors file")
        print(f"copying file {path.name} ({human_bytes(path.stat().st_size)})")
        adapters[path.name] = sdk.create_blob(path)
        if weight is not None:
            weights[path.name] = weight
    params: dict[str, Any] = {"adapter_weights": weights} if weights else {}
    if args.adapter_scale is not None:
        params["adapter_scale"] = args.adapter_scale
    tiny_vae = _tiny_vae(sdk, args.tiny_vae) if args.tiny_vae else None
    steps = sdk.create(
        args.model, from_=args.folder, adapters=adapters or None, tiny_vae=tiny_vae,
        parameters=params or None, stream=True,
    )  # fmt: skip
    show_progress(steps)
    return 0


def _tiny_vae(sdk: Client, given: str) -> dict[str, str] | str:
    """--tiny-vae: a TAESD folder's config.json and weights, uploaded; or a stored model."""
    from limner.errors import InvalidRequest

    path = Path(given).expanduser()
    if not path.is_dir():
        if path.exists() or _looks_like_path(given):
            raise InvalidRequest(
                f"'{given}' is not a folder; --tiny-vae takes a diffusers AutoencoderTiny "
                "folder (config.json + diffusion_pytorch_model.safetensors) or a stored model"
            )
        return given  # the name of a stored model: the server looks it up
    weights = sorted(path.glob("*.safetensors"))
    usual = [p for p in weights if p.name == "diffusion_pytorch_model.safetensors"]
    chosen = usual or (weights if len(weights) == 1 else [])
    if not (path / "config.json").is_file() or not chosen:
        raise InvalidRequest(
            f"'{given}' is not a tiny autoencoder folder: it needs config.json and "
            "diffusion_pytorch_model.safetensors (diffusers' AutoencoderTiny, as madebyollin/taesd)"
        )
    files = {}
    for file in (path / "config.json", chosen[0]):
        print(f"copying file {file.name} ({human_bytes(file.stat().st_size)})")
        files[file.name] = sdk.create_blob(file)
    return files


TRAIN_FLAGS = {  # flag -> (train field, type, help)
    "steps": ("steps", int, "optimizer steps (default 500)"),
    "rank": ("rank", int, "LoRA rank (default 4)"),
    "alpha": ("alpha", float, "LoRA alpha (default: the rank)"),
    "lr": ("learning_rate", float, "learning rate (default 1e-4)"),
    "lr-scheduler": ("lr_scheduler", str, "constant, linear, cosine or constant_with_warmup"),
    "resolution": ("resolution", int, "picture size trained at (default: the model's)"),
    "batch-size": ("batch_size", int, "pictures per batch (default 1)"),
    "gradient-accumulation": ("gradient_accumulation", int, "batches per step (default 1)"),
    "seed": ("seed", int, "seed of everything random (default 0)"),
    "precision": ("precision", str, "fp32, bf16 or fp16 (default: bf16 where the hardware has it)"),
    "instance-prompt": ("instance_prompt", str, "the caption of pictures without their own"),
    "caption-with": ("caption_with", str, "a vision model that captions pictures without one"),
    "validation-prompt": ("validation_prompt", str, "what validation pictures draw"),
    "validation-every": ("validation_every", int, "a validation picture every N steps"),
    "checkpoint-every": ("checkpoint_every", int, "a checkpoint every N steps (kept if stopped)"),
}


def add_training_arguments(create: argparse.ArgumentParser) -> None:
    group = create.add_argument_group(
        "training",
        "--train PATH trains a LoRA of the drawing model named by --from on a folder or .zip of "
        "pictures (captions: same-name .txt files, a metadata.jsonl, --instance-prompt or "
        "--caption-with); Ctrl-C stops it, keeping the last checkpoint as the model",
    )
    group.add_argument("--train", metavar="PATH", type=Path, help="a folder or .zip of pictures")
    group.add_argument("--random-flip", action="store_true", help="flip pictures at random")
    group.add_argument("--random-crop", action="store_true", help="crop at random, not centred")
    for flag, (field, kind, text) in TRAIN_FLAGS.items():
        metavar = {int: "N", float: "X"}.get(kind, "MODEL" if flag == "caption-with" else "TEXT")
        group.add_argument(
            f"--{flag}", dest=f"train_{field}", type=kind, metavar=metavar, help=text
        )


def _create_by_training(args: argparse.Namespace) -> int:
    """Upload the dataset, train with a live progress line, then save the loss curve."""
    from limner.cli.training import TrainingPrinter, format_training, loss_curve_png
    from limner.engines.training import dataset_paths
    from limner.errors import InvalidRequest

    if not args.folder or _looks_like_path(args.folder):
        raise InvalidRequest("--train needs --from with the name of a stored drawing model")
    source = args.train.expanduser()
    if source.is_file():
        named = [(source.name, source)]
    elif source.is_dir():
        named = dataset_paths(source)
    else:
        raise InvalidRequest(f"'{source}' does not exist; --train takes a folder or a .zip")
    sdk = client()
    files = {}
    for relname, path in named:
        print(f"copying file {relname} ({human_bytes(path.stat().st_size)})")
        files[relname] = sdk.create_blob(path)
    train = {field: getattr(args, f"train_{field}") for field, _, _ in TRAIN_FLAGS.values()}
    train = {k: v for k, v in train.items() if v is not None} | {"files": files}
    if args.random_flip:
        train["random_flip"] = True
    if args.random_crop:
        train["center_crop"] = False
    scale = None if args.adapter_scale is None else {"adapter_scale": args.adapter_scale}
    results = Path(re.sub(r"[^A-Za-z0-9._-]+", "-", args.model) + "-training")
    printer = TrainingPrinter(sys.stdout, validation_dir=results)
    steps = sdk.create(args.model, from_=args.folder, train=train, parameters=scale, stream=True)
    try:
        for step in cast("Iterator[ProgressResponse]", steps):
            printer.show(step)
    except KeyboardInterrupt:
        printer.end()
        print("stopping: the server keeps the last checkpoint as the model, if one was written")
        raise
    finally:
        printer.end()
    training = sdk.show(args.model).training or {}
    curve = loss_curve_png(
        training.get("losses") or printer.losses, results / "loss.png", args.model
    )
    summary = results / "summary.json"
    summary.write_text(json.dumps(training, indent=2) + "\n")
    print(format_training(training).rstrip())
    print(f"loss curve: {curve}\nsummary: {summary}")
    return 0


def _weighted(given: str) -> tuple[Path, float | None]:
    """`style.safetensors=0.7` -> the file and its weight; a name with `=` and no number stays."""
    name, _, weight = given.rpartition("=")
    try:
        return Path(name).expanduser(), float(weight)
    except ValueError:
        return Path(given).expanduser(), None


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.endswith((".safetensors", ".gguf"))


def toy_folder(kind: str, scratch: Path) -> Path:
    """The shipped folder of a toy (see TOY_KINDS); see-gguf is converted into `scratch`."""
    from limner.toys import weights

    if kind != "see-gguf":
        return weights(kind)
    from limner.store.gguf import convert_llava

    convert_llava(weights("see"), scratch, "f16")
    return scratch


def write_tiny(kind: str, dest: Path) -> Path:
    """A tiny random-weight model folder of one of TINY_KINDS (also used by `limner demo`)."""
    from limner import tiny

    if kind == "llava":
        return tiny.write_tiny_llava(dest, seed=0)
    if kind == "llava-gguf":
        return tiny.write_tiny_llava_gguf(dest, seed=0)
    if kind == "minicpm-v-gguf":
        from limner.tiny_minicpmv import write_tiny_minicpmv_gguf

        return write_tiny_minicpmv_gguf(dest, seed=0)
    if kind == "text-gguf":  # the same text model without its projector: it cannot see
        (tiny.write_tiny_llava_gguf(dest, seed=0) / "mmproj.gguf").unlink()
        return dest
    if kind in (*TINY_FAMILIES, "text"):
        from limner.tiny_families import write_tiny_family

        return write_tiny_family(kind, dest)
    if kind in ("embed", "embed-gguf"):
        from limner import tiny_embed

        write = (
            tiny_embed.write_tiny_embed_gguf
            if kind == "embed-gguf"
            else tiny_embed.write_tiny_embed
        )
        return write(dest, seed=0)
    if kind == "sd-checkpoint":
        return tiny.write_tiny_sd_checkpoint(dest / "tiny-sd.safetensors", seed=0).parent
    # Both drawing kinds carry the IP-Adapter, so style pictures work with either.
    return tiny.write_tiny_sd(dest, seed=0, inpaint=kind == "sd-inpaint", ip_adapter=True)


def upload_folder(
    sdk: Client, model: str, folder: Path, say: Callable[[str], None] = print,
    quantize: str | None = None,
) -> None:  # fmt: skip
    """Upload every file of `folder` (the server skips ones it has), then create `model`."""
    upload_files(sdk, model, folder_files(folder), say, quantize)


def upload_files(
    sdk: Client, model: str, named: list[tuple[str, Path]], say: Callable[[str], None] = print,
    quantize: str | None = None,
) -> None:  # fmt: skip
    files = {}
    for relname, path in named:
        say(f"copying file {relname} ({human_bytes(path.stat().st_size)})")
        files[relname] = sdk.create_blob(path)
    show_progress(sdk.create(model, files=files, quantize=quantize, stream=True), say)


def show_progress(steps: object, say: Callable[[str], None] = print) -> None:
    for step in cast("Iterator[ProgressResponse]", steps):
        say(step.status)


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    """Regular files below `folder` as (relative posix name, path), hidden ones left out.

    Symbolic links are followed: a Hugging Face cache snapshot is a folder of links.
    """
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found.append((relative.as_posix(), path))
    if not found:
        from limner.errors import InvalidRequest

        raise InvalidRequest(f"the folder '{folder}' holds no files")
    return found


# --- pull -------------------------------------------------------------------------------


def pull_model(args: argparse.Namespace) -> int:
    steps = cast(
        "Iterator[ProgressResponse]",
        client().pull(args.model, insecure=args.insecure, stream=True),
    )
    printer = PullPrinter(sys.stdout)
    try:
        for step in steps:
            printer.show(step)
    finally:
        printer.end()
    return 0


class PullPrinter:
    """`ollama pull`'s output: a status per line, and a progress line per layer.

    On a terminal a layer's line is redrawn in place with a bar (`pulling 6a0746a1ec1a:
    42% ▕████      ▏ 2.0 GB/4.7 GB`); otherwise each layer gets one plain line once it is
    complete, so logs stay readable.
    """

    BAR = 25

    def __init__(self, out: IO[str], tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.open = False  # a layer's line is drawn without its newline yet
        self.status = ""  # the layer whose line that is
        self.printed: set[str] = set()

    def show(self, step: ProgressResponse) -> None:
        if step.digest and step.total is not None:
            self._layer(step.status, step.completed or 0, step.total)
            return
        self.end()
        self.out.write(f"{step.status}\n")
        self.out.flush()

    def _layer(self, status: str, completed: int, total: int) -> None:
        if not self.tty:
            if completed >= total and status not in self.printed:
                self.printed.add(status)
                self.out.write(f"{status}: 100% {human_bytes(total)}\n")
                self.out.flush()
            return
        percent = 100 if total == 0 else min(100, completed * 100 // total)
        filled = percent * self.BAR // 100
        amount = (
            human_bytes(total)
            if completed >= total
            else f"{human_bytes(completed)}/{human_bytes(total)}"
        )
        line = f"{status}: {percent:3d}% ▕{'█' * filled}{' ' * (self.BAR - filled)}▏ {amount}"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        if self.open and status != self.status:
            self.out.write("\n")
        self.out.write(f"\r{line[:width]}\x1b[K")
        self.out.flush()
        self.open, self.status = True, status

    def end(self) -> None:
        if self.open:
            self.out.write("\n")
            self.out.flush()
            self.open = False
