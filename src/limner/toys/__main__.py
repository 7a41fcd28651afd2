"""`python -m limner.toys train`: regenerate the toy models' weights from scratch, with a
fixed seed, and print what they learned; `python -m limner.toys evaluate`: measure the shipped
ones again on fresh pictures.

    python -m limner.toys train                   # both, into limner/toys/weights/ (~25 min)
    python -m limner.toys train --only see --dest /tmp/toys
    python -m limner.toys evaluate --count 100
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from limner.toys import TOYS, weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m limner.toys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the toys from scratch and measure them")
    train.add_argument("--only", choices=TOYS, action="append", help="one toy (repeatable)")
    train.add_argument("--dest", type=Path, help="where to write (default: the shipped folder)")
    train.add_argument("--seed", type=int, default=0)
    evaluate = commands.add_parser("evaluate", help="measure the shipped toys")
    evaluate.add_argument("--only", choices=TOYS, action="append", help="one toy (repeatable)")
    evaluate.add_argument("--count", type=int, default=100, help="fresh pictures per measure")
    args = parser.parse_args(argv)
    chosen = args.only or list(TOYS)
    if args.command == "train":
        return _train(chosen, args.dest, args.seed)
    return _evaluate(chosen, args.count)


def _train(chosen: list[str], dest: Path | None, seed: int) -> int:
    started, report = time.monotonic(), {}
    for toy in chosen:
        folder = (dest / toy) if dest else weights(toy)
        print(f"== training the {toy} toy into {folder}", flush=True)
        report[toy] = _module(toy).train(folder, seed=seed, log=_log(toy))
    report["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))
    return 0


def _evaluate(chosen: list[str], count: int) -> int:
    report: dict[str, Any] = {}
    for toy in chosen:
        module = _module(toy)
        if toy == "see":
            report[toy] = {engine: module.evaluate(weights(toy), count=count, engine=engine)
                           for engine in ("transformers", "llamacpp")}  # fmt: skip
        else:
            report[toy] = module.evaluate(weights(toy), count=count)
    print(json.dumps(report, indent=2))
    return 0


def _module(toy: str) -> Any:
    # Imported on demand: each pulls in torch and its model's libraries.
    if toy == "see":
        from limner.toys import see

        return see
    from limner.toys import draw

    return draw


def _log(toy: str) -> Any:
    def log(line: str) -> None:
        print(f"[{toy}] {line}", flush=True)

    return log


if __name__ == "__main__":
    raise SystemExit(main())
