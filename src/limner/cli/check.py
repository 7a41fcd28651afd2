"""`limner check [--repair]`: verify the local model store (LIMNER_MODELS), offline.

It reads the store directly, as an fsck does, so it works while the server is down: after a
crash is when it is needed. While a server holds this store (its lock file), temporary files
younger than an hour are left alone (the server may be writing them); a server removes the
older ones itself when it starts.
"""

from __future__ import annotations

import argparse

from limner import config

RUNNING_GRACE = 3600.0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "check", help="verify the model store (and --repair it)",
        description="Check that every manifest parses, every blob it names is there and "
        "hashes to its name, and no temporary file is left over. --repair removes leftover "
        "temporary files and damaged blobs and moves unreadable manifests to "
        "manifests-damaged/ (nothing is deleted that could still be read).",
    )  # fmt: skip
    parser.add_argument("--repair", action="store_true", help="fix what can be fixed safely")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from limner.store import Store
    from limner.store.check import check

    store = Store(config.models())
    grace = RUNNING_GRACE if store.in_use() else 0.0
    if grace:
        print("a server is using this store: temporary files younger than an hour are left alone")
    else:
        _warn_of_another_store()
    report = check(store, repair=args.repair, grace=grace)
    print(f"checked {report.manifests} manifest(s) and {report.blobs} blob(s) in {store.root}")
    for line in report.repaired:
        print(f"repaired: {line}")
    remaining = report.problems if not args.repair else check(store, grace=grace).problems
    for line in remaining:
        print(f"problem: {line}")
    for name in report.partial_pulls:
        print(f"kept for the next pull to resume: {name}")
    for where in report.in_progress:
        print(f"being written by the server, or left by a write it lost (removed when it next "
              f"starts): {where}")  # fmt: skip
    print("the store is consistent" if not remaining else f"{len(remaining)} problem(s)")
    return 0 if not remaining else 1


def _warn_of_another_store() -> None:
    """A server answers at LIMNER_HOST but holds no lock on this store: it serves another
    one, which this command cannot see from here."""
    from limner.client import Client

    with Client(timeout=2) as client:
        if client.is_running():
            print(f"note: the server at {client.host} uses another store than this one; to "
                  "check that one, run limner check where it runs, with its LIMNER_MODELS")  # fmt: skip
