"""Argument parsing: one module per command group, imported lazily where heavy."""

from __future__ import annotations

import argparse
import os
import sys

from limner.cli import check, demo, gallery, models, run, serve


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="limner", description="A local model server that sees and draws."
    )
    top.add_argument("-v", "--version", action="store_true",
                     help="print the server's version (and this client's, if it differs)")  # fmt: skip
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    serve.add_parser(commands)
    run.add_parser(commands)
    models.add_parsers(commands)
    demo.add_parser(commands)
    check.add_parser(commands)
    gallery.add_parser(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run one command; SDK errors become `Error: <message>` on stderr and exit code 1."""
    from limner.errors import LimnerError

    top = parser()
    args, extra = top.parse_known_args(argv)
    if extra and (args.command != "run" or any(word.startswith("-") for word in extra)):
        top.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.prompt += extra  # flags may come between prompt words, as with `ollama run`
    if args.version and args.command is None:
        return _versions()
    if not hasattr(args, "run"):
        top.print_help()
        return 0
    try:
        code: int = args.run(args)
    except LimnerError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    except _transport_errors() as error:  # evaluated only when something was raised
        print(f"Error: the connection to limner broke off: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `limner run ... | head`: the reader left. Point stdout at devnull so the
        # interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


def _versions() -> int:
    """As `ollama -v` prints them: the server's version, and a warning for a client that
    differs from it or finds no server."""
    from importlib.metadata import version

    from limner.client import Client
    from limner.errors import LimnerError

    mine = version("limner")
    try:
        theirs = Client().version()
    except LimnerError:
        print("Warning: could not connect to a running limner server")
        print(f"Warning: client version is {mine}")
        return 0
    print(f"limner version is {theirs}")
    if theirs != mine:
        print(f"Warning: client version is {mine}")
    return 0


def _transport_errors() -> type[Exception]:
    """httpx's network errors that the SDK does not turn into LimnerError (mid-stream)."""
    import httpx

    return httpx.TransportError


if __name__ == "__main__":
    sys.exit(main())
