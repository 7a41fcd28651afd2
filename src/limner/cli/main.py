"""Argument parsing: one module per command group, imported lazily where heavy."""

from __future__ import annotations

import argparse
import sys

from limner.cli import serve


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="limner", description="A local model server that sees and draws.")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    serve.add_parser(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not hasattr(args, "run"):
        parser().print_help()
        return 0
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
