"""`limner gallery`: the pictures the server has drawn, listed, shown, saved and removed.

limner gallery                  the newest pictures: id, model, size, seed, when, prompt
limner gallery show ID          every parameter the picture was drawn with
limner gallery save ID [FILE]   the PNG (with its parameters) as FILE, or ./ID.png;
                                a file there already is never replaced
limner gallery rm ID...         remove pictures from the gallery
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from limner.cli.draw import save_unique
from limner.cli.formats import human_time, table
from limner.cli.models import client

PROMPT_WIDTH = 48  # a listing stays one line per picture on an 80-column terminal


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gallery = commands.add_parser(
        "gallery", help="list, show, save or remove the pictures the server has drawn",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    gallery.add_argument("--limit", type=int, default=20, help="pictures listed (default 20)")
    gallery.set_defaults(run=list_pictures)
    actions = gallery.add_subparsers(dest="action", metavar="ACTION")
    show = actions.add_parser("show", help="the parameters a picture was drawn with")
    show.add_argument("picture_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="as JSON, for scripts")
    show.set_defaults(run=show_picture)
    save = actions.add_parser("save", help="write a picture's PNG to a file")
    save.add_argument("picture_id", metavar="ID")
    save.add_argument("path", nargs="?", type=Path, metavar="FILE", help="default: ./ID.png")
    save.set_defaults(run=save_picture)
    rm = actions.add_parser("rm", help="remove pictures from the gallery")
    rm.add_argument("picture_ids", nargs="+", metavar="ID")
    rm.set_defaults(run=remove_pictures)


def list_pictures(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 200:
        print("Error: --limit must be between 1 and 200")
        return 1
    pictures = client().gallery(limit=args.limit).pictures
    if not pictures:
        print("The gallery is empty: pictures appear here once the server draws them.")
        return 0
    rows = [[p.id, str(p.parameters.get("model", "")), _size(p.parameters),
             str(p.parameters.get("seed", "")), human_time(p.created_at),
             _clipped(str(p.parameters.get("prompt", "")))] for p in pictures]  # fmt: skip
    print(table(["ID", "MODEL", "SIZE", "SEED", "DRAWN", "PROMPT"], rows))
    return 0


def show_picture(args: argparse.Namespace) -> int:
    picture = client().gallery_picture(args.picture_id)
    if args.json:
        print(json.dumps(picture.parameters, indent=2))
        return 0
    width = max(map(len, picture.parameters), default=0)
    for key, value in picture.parameters.items():
        print(f"{key.ljust(width)}  {_value(value)}")
    return 0


def save_picture(args: argparse.Namespace) -> int:
    png = client().gallery_picture(args.picture_id).png
    target: Path | None = args.path
    if target is None or target.is_dir():  # never over another file, as drawings are saved
        saved = save_unique(png, target or Path.cwd(), args.picture_id)
    else:
        saved = save_unique(png, target.parent, target.stem, target.suffix or ".png")
    print(f"saved {saved}")
    return 0


def remove_pictures(args: argparse.Namespace) -> int:
    sdk = client()
    for picture_id in args.picture_ids:
        sdk.delete_picture(picture_id)
        print(f"deleted {picture_id}")
    return 0


def _size(parameters: dict[str, Any]) -> str:
    width, height = parameters.get("width"), parameters.get("height")
    return f"{width}x{height}" if width and height else ""


def _clipped(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= PROMPT_WIDTH else line[: PROMPT_WIDTH - 1] + "…"


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
