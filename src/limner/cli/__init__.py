"""The `limner` command. Every command but `serve` talks to the server through the SDK."""

from __future__ import annotations

import sys

from limner.cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
