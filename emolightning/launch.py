"""The `emolightning` entry point: answers `--version` at once, and imports the CLI (lightning, transformers) only for real work."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        from . import __version__

        print(f"emolightning {__version__}")
        return
    from .cli import main as cli_main

    cli_main(argv)
