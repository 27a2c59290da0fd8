"""The names of emolightning's commands: importable without lightning, so the entry point can answer at once."""

import argparse
import difflib

# commands without a Trainer: `emolightning NAME ...` runs COMMAND_MODULES[NAME]'s main(argv); listed in --help
PLAIN_COMMANDS = {
    "score": "Official metrics of a prediction file: emolightning score PRED GOLD [--json].",
    "export": "A Hugging Face model directory from a checkpoint: emolightning export --ckpt_path CKPT --output DIR.",
    "report": "A table and figures comparing runs: emolightning report RUN_DIR [RUN_DIR ...] --output DIR.",
    "ensemble": "An ensemble manifest for validate/test/predict --ckpt_path: emolightning ensemble CKPT [CKPT ...] --data_dir DIR --out ENSEMBLE.json.",
}
# where each plain command's main(argv) lives
COMMAND_MODULES = {
    "score": "emolightning.reporting.score",
    "export": "emolightning.inference.export",
    "report": "emolightning.reporting.report",
    "ensemble": "emolightning.inference.ensemble_command",
}
SUBCOMMANDS = ["fit", "validate", "test", "predict", *PLAIN_COMMANDS]


def closest_command(name: str) -> str | None:
    """The command `name` was probably meant to be (None when none is close)."""
    match = difflib.get_close_matches(name, SUBCOMMANDS, n=1, cutoff=0.6)
    return match[0] if match else None


def command_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of the plain command `emolightning NAME` (its module's main(argv) adds the arguments)."""
    return argparse.ArgumentParser(prog=f"emolightning {name}", description=description)
