"""The `emolightning` entry point: answers `--version` and a mistyped command at once, and imports the CLI
(lightning, transformers: seconds) only for real work."""

from __future__ import annotations

import sys

from .commands import SUBCOMMANDS, closest_command


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        from .. import __version__

        print(f"emolightning {__version__}")
        return
    if args and not args[0].startswith("-") and args[0] not in SUBCOMMANDS:
        close = closest_command(args[0])
        hint = f" Did you mean `emolightning {close}`?" if close else ""
        print(
            f"emolightning: {args[0]!r} is not a command; the commands are {', '.join(SUBCOMMANDS)}.{hint} `emolightning --help` describes them.",
            file=sys.stderr,
        )
        sys.exit(2)
    from .main import main as cli_main

    cli_main(argv)
