"""The names of emolightning's commands: importable without lightning, so the entry point can answer at once."""

import difflib

# commands without a Trainer: `emolightning NAME ...` runs cli/plain.py's NAME(argv); listed in --help
PLAIN_COMMANDS = {
    "score": "Official metrics of a prediction file: emolightning score PRED GOLD [--json].",
    "export": "A Hugging Face model directory from a checkpoint: emolightning export --ckpt_path CKPT --output DIR.",
    "report": "A table and figures comparing runs: emolightning report RUN_DIR [RUN_DIR ...] --output DIR.",
    "ensemble": "An ensemble manifest for validate/test/predict --ckpt_path: emolightning ensemble CKPT [CKPT ...] --data_dir DIR --out ENSEMBLE.json.",
    "serve": "An HTTP server of a model (LitServe, dynamic batching): emolightning serve --ckpt_path RUN_OR_CKPT [--port 8000].",
}
SUBCOMMANDS = ["fit", "validate", "test", "predict", *PLAIN_COMMANDS]


def closest_command(name: str) -> str | None:
    """The command `name` was probably meant to be (None when none is close)."""
    match = difflib.get_close_matches(name, SUBCOMMANDS, n=1, cutoff=0.6)
    return match[0] if match else None
