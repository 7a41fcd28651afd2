"""`limner run MODEL [PROMPT...]`: one answer, or the interactive REPL (cli/repl.py).

As `ollama run`: it answers once and exits when a prompt is given on the command line,
when stdin is not a terminal (piped text comes first in the prompt) or when stdout is not
a terminal; otherwise it loads the model and opens the REPL. A drawing model (capability
"image") draws a picture per prompt instead (cli/draw.py); an embedding model prints the
vector of its input as a JSON array.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from limner.cli import draw
from limner.cli.session import (
    Session,
    attach_pictures,
    print_stream,
    print_timings,
    waiting_for,
)

if TYPE_CHECKING:
    from limner.client import Client


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "run", help="run a model",
        description="Answer PROMPT once, or chat in a REPL when no prompt is given. Picture "
        "paths in the prompt (cat.png, ./a.jpg, ~/b.webp, /c/d.jpeg) are sent as pictures. "
        "A drawing model draws PROMPT instead and saves the PNG in the current folder; a "
        "picture path in its prompt is the picture to redraw.",
    )  # fmt: skip
    parser.add_argument("model")
    parser.add_argument("prompt", nargs="*", help="the prompt; piped stdin comes first")
    parser.add_argument(
        "--format", type=response_format, metavar="FORMAT",
        help='"json", a JSON schema, or a .json file holding one: the answer follows it',
    )  # fmt: skip
    parser.add_argument(
        "--keepalive", metavar="DURATION", help="how long the model stays loaded (e.g. 5m)"
    )
    parser.add_argument("--verbose", action="store_true", help="print timings after each answer")
    parser.add_argument(
        "--nowordwrap", action="store_true", help="do not wrap words at the terminal's edge"
    )
    draw.add_arguments(parser)
    parser.set_defaults(run=run)


def response_format(value: str) -> str | dict[str, Any]:
    """--format's value: "json", or a JSON schema given inline or as a file's path."""
    if value == "json":
        return value
    path = Path(value).expanduser()
    text = path.read_text(encoding="utf-8") if path.is_file() else value
    try:
        schema = json.loads(text)
    except ValueError:
        schema = None
    if not isinstance(schema, dict):
        where = f"{value} does not hold" if path.is_file() else f"{value!r} is not"
        raise argparse.ArgumentTypeError(f'{where} a JSON schema object; use "json" or a schema')
    return schema


def run(args: argparse.Namespace) -> int:
    from limner.client import Client
    from limner.errors import InvalidRequest, NotFound

    sdk = Client()
    try:
        info = sdk.show(args.model)
    except NotFound as error:
        raise NotFound(f"{error}; see 'limner list', or create it with 'limner create'") from None
    if info.capabilities == ["embedding"]:
        return embed_once(sdk, args)
    drawing = "image" in info.capabilities
    settings = draw.settings_from_args(args)
    flags = settings.given() + (["--output"] if args.output else [])
    if flags and not drawing:  # silently dropping them would lose what was asked for
        raise InvalidRequest(f"{', '.join(flags)}: only for drawing models; '{args.model}' chats")
    session = Session(
        model=args.model, vision="vision" in info.capabilities, format=args.format,
        keep_alive=keep_alive(args.keepalive), verbose=args.verbose, wordwrap=not args.nowordwrap,
    )  # fmt: skip
    parts = list(args.prompt)
    if parts or not sys.stdin.isatty() or not sys.stdout.isatty():
        if not sys.stdin.isatty():
            parts.insert(0, sys.stdin.read())
        prompt = " ".join(p for p in parts if p)
        if drawing:
            return draw.draw_once(sdk, session, settings, prompt, args.output)
        return one_shot(sdk, session, prompt)
    from limner.cli.repl import DrawRepl, Repl

    if drawing:
        return DrawRepl(sdk, session, info, settings, args.output).loop()
    return Repl(sdk, session, info).loop()


def embed_once(sdk: Client, args: argparse.Namespace) -> int:
    """An embedding model prints the vector of its input as a JSON array, as `ollama run`."""
    import json

    from limner.errors import InvalidRequest

    parts = list(args.prompt)
    if not sys.stdin.isatty():
        parts.insert(0, sys.stdin.read())
    text = " ".join(p for p in parts if p).strip()
    if not text:
        raise InvalidRequest(
            f"embedding models require input text: limner run {args.model} TEXT, "
            "or pipe the text in"
        )
    reply = sdk.embed(args.model, text, keep_alive=keep_alive(args.keepalive))
    print(json.dumps(reply.embeddings[0]))
    return 0


def keep_alive(text: str | None) -> float | str | None:
    """`--keepalive`: a Go duration (`5m`), or a plain number of seconds (`-1`: forever)."""
    if text is not None and re.fullmatch(r"[-+]?\d+(\.\d*)?", text.strip()):
        return float(text)
    return text


def one_shot(sdk: Client, session: Session, prompt: str) -> int:
    images: list[bytes] = []
    if session.vision:
        prompt, images = attach_pictures(prompt)
    if not prompt and not images:
        sdk.generate(session.model, keep_alive=session.keep_alive)  # `run M ""` only loads
        return 0
    chunks = sdk.generate(
        session.model, prompt, images=images, format=session.format, options=session.parameters or None,
        keep_alive=session.keep_alive, stream=True,
    )  # fmt: skip
    try:
        final = print_stream(chunks, lambda chunk: chunk.response, session.wordwrap,
                             waiting_for(sdk, session.model))  # fmt: skip
    except KeyboardInterrupt:
        print()
        return 130
    print("\n", flush=True)
    if session.verbose and final is not None:
        print_timings(final, sys.stderr)
    return 0
