"""`limner serve`: run the server in this process."""

from __future__ import annotations

import argparse

from limner import config


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lines = "\n".join(f"  {name:<26} {text}" for name, text in config.describe())
    parser = commands.add_parser(
        "serve", help="start the server",
        description="Start limner's server.",
        epilog=f"Environment variables:\n{lines}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--insecure-open-to-network", action="store_true",
        help="listen on a non-loopback LIMNER_HOST without LIMNER_API_KEY: anyone who can "
        "reach the machine can use, change and delete its models",
    )  # fmt: skip
    parser.add_argument(
        "--cluster", metavar="ADDRESS",
        help="serve every model as Ray Serve replicas on a Ray cluster: 'local' starts one "
        "here, 'auto' joins this node's, ray://HEAD:10001 a remote one (sets LIMNER_CLUSTER; "
        "needs limner[cluster])",
    )  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    from limner.server.app import serve

    if args.cluster:
        os.environ["LIMNER_CLUSTER"] = args.cluster
    serve(open_network=args.insecure_open_to_network)
    return 0
