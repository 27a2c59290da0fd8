"""The plain commands: `emolightning score|export|report|ensemble|serve ARGS`, each parsed here and run by the module that does the work.

They need no Trainer, so `cli.main` calls them before LightningCLI parses anything; each imports its module
only when it runs, so one command does not pay for another's imports.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from pathlib import Path

from ..errors import ConfigError


def command_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of `emolightning NAME`, described by its function's docstring."""
    return argparse.ArgumentParser(prog=f"emolightning {name}", description=description)


def list_option(value: str) -> list[str]:
    """A list option as fit takes it (`[a, b]`, YAML or JSON) or as a comma list (`a,b`)."""
    import yaml

    items = yaml.safe_load(value) if value.lstrip().startswith("[") else value.split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def score(argv: list[str]) -> None:
    """Official SemEval-2018 E-c metrics (sample-averaged Jaccard, micro-F1, macro-F1, per-label F1) of a prediction file against a gold file, any
    tables the data module reads (every format `emolightning predict` writes); rows are matched by ID. The columns come from the --data options, else
    from --ckpt_path's checkpoint, else from the prediction file's header (predict writes the ID and text columns first), else they are detected
    as the data module detects them."""
    from ..reporting.score import Columns, format_scores, score_files

    parser = command_parser("score", score.__doc__)
    parser.add_argument("pred", help="Predictions (e.g. written by `emolightning predict`).")
    parser.add_argument("gold", help="Gold labels: the file that was predicted, with its labels (e.g. test.csv, 2018-E-c-En-test-gold.txt).")
    parser.add_argument("--json", action="store_true", help="Print the scores as one JSON object.")
    parser.add_argument("--ckpt_path", help="A checkpoint written by `emolightning fit`, or its run folder: its column options and labels name the columns.")
    parser.add_argument("--data.text_column", dest="text_column", help="Column holding the text, in both files (default: detected).")
    parser.add_argument("--data.id_column", dest="id_column", help="Column holding the ID, in both files (default: detected; else row numbers).")
    parser.add_argument(
        "--data.label_columns", dest="label_columns", type=list_option, help="The gold file's label columns, e.g. '[anger, joy]' (default: every other column)."
    )
    parser.add_argument(
        "--data.labels_column", dest="labels_column", help="The gold file's column holding a list of label ids or names, with --data.label_names."
    )
    parser.add_argument("--data.label_names", dest="label_names", type=list_option, help="The label names in id order, for --data.labels_column.")
    args = parser.parse_args(argv)
    columns = Columns(args.text_column, args.id_column, args.label_columns, args.labels_column, args.label_names)
    scores = score_files(args.pred, args.gold, columns, ckpt_path=args.ckpt_path)
    print(json.dumps(scores, indent=2) if args.json else format_scores(scores))


def export(argv: list[str]) -> None:
    """Export an emolightning checkpoint as a Hugging Face model directory (config, safetensors, tokenizer, thresholds, model card). Load it with
    AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True) or pipeline("text-classification", model=DIR, top_k=None,
    trust_remote_code=True); emolightning is not needed."""
    from ..inference.export import export_checkpoint
    from ..models.checkpoints import checkpoint_path

    parser = command_parser("export", export.__doc__)
    parser.add_argument(
        "--ckpt_path", required=True, help="Checkpoint written by `emolightning fit` (a .ckpt), or a run folder (e.g. $RUN), for its best checkpoint."
    )
    parser.add_argument("--output", required=True, help="Directory to write (new or empty).")
    parser.add_argument("--overwrite", action="store_true", help="Write into a non-empty --output, replacing its files.")
    parser.add_argument(
        "--format",
        choices=["hf", "onnx"],
        default="hf",
        help="hf: the Hugging Face directory; onnx: the same plus model.onnx (ids and mask -> logits) for ONNX Runtime (needs the [onnx] extra).",
    )
    args = parser.parse_args(argv)
    ckpt = checkpoint_path(args.ckpt_path)
    out = export_checkpoint(ckpt, args.output, overwrite=args.overwrite, format=args.format)
    print(f"Exported {ckpt} to {out}")


def report(argv: list[str]) -> None:
    """Compare runs: a table (Markdown and CSV: model, parameters, epochs, training time, samples/s, best epoch, validation and test scores) and figures
    (learning curves, training loss, per-label F1, F1 against threshold, quality against training time) as PNGs and one self-contained HTML page."""
    from ..reporting.report import require_matplotlib, write_report

    parser = command_parser("report", report.__doc__)
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="A run's log directory (e.g. runs/quickstart/lightning_logs/version_0) or a folder above run directories."
    )
    parser.add_argument("--output", required=True, help="Folder for report.md, report.csv, report.html, report.json and the PNGs (created if needed).")
    args = parser.parse_args(argv)
    require_matplotlib()
    _, sidecar = write_report(args.runs, args.output)
    print((Path(args.output) / "report.md").read_text(encoding="utf-8"))
    print(f"report: {Path(args.output) / 'report.html'} ({len(sidecar['runs'])} runs, {len(sidecar['figures'])} figures; table in report.md and report.csv)")


def ensemble(argv: list[str]) -> None:
    """Build an ensemble manifest from checkpoints of models with the same labels: their dev probabilities are averaged and thresholds tuned on the average. Use it as `emolightning validate|test|predict --config RUN/config.yaml --ckpt_path MANIFEST`."""
    from ..inference.ensemble_build import build, expand_checkpoints
    from ..metrics import THRESHOLD_STRATEGIES
    from ..models.checkpoints import checkpoint_path

    parser = command_parser("ensemble", ensemble.__doc__)
    parser.add_argument(
        "checkpoints",
        nargs="+",
        help="Member .ckpt files, run folders (each for its best checkpoint), globs (quoted) or .txt files listing one checkpoint per line.",
    )
    parser.add_argument("--out", required=True, help="The manifest to write (JSON); member paths are stored relative to it.")
    parser.add_argument("--weights", nargs="+", type=float, help="One positive weight per member (default: equal).")
    parser.add_argument("--data_dir", help="The official E-c files (the dev split tunes the thresholds). Default: the first member's data options.")
    parser.add_argument("--val_file", help="A dev table instead of --data_dir's.")
    parser.add_argument("--threshold_strategy", choices=THRESHOLD_STRATEGIES, help="Default: the members' own `model.init_args.thresholds.strategy`.")
    parser.add_argument("--batch_size", type=int, default=64, help="Texts per forward pass.")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available).")
    parser.add_argument(
        "--keep_members_loaded",
        action="store_true",
        help="Recorded in the manifest: validate/test/predict keep every member on the device (N x the memory, no reloading) "
        "instead of building each member from its checkpoint for every chunk of texts and freeing it after.",
    )
    args = parser.parse_args(argv)
    members = []
    for arg in args.checkpoints:  # a run folder, or a quoted glob of run folders: each run's best checkpoint
        folders = sorted(glob.glob(arg)) if glob.has_magic(arg) else [arg]
        if folders and all(os.path.isdir(folder) for folder in folders):
            members += [checkpoint_path(folder, "argument of `emolightning ensemble`") for folder in folders]
        else:
            members.append(arg)
    checkpoints = expand_checkpoints(members)
    manifest, lines = build(
        checkpoints,
        args.out,
        args.weights,
        args.threshold_strategy,
        args.batch_size,
        args.device,
        args.keep_members_loaded,
        data_dir=args.data_dir,
        val_file=args.val_file,
    )
    print("\n".join(lines))
    print(
        f"Wrote {manifest.path} ({len(manifest.members)} members). Use it with --ckpt_path, e.g. `emolightning predict --config RUN/config.yaml --ckpt_path {args.out}`."
    )


def serve(argv: list[str]) -> None:
    """Serve a model over HTTP with LitServe: POST /predict takes {"text": "..."} or {"texts": [...]} and answers each text's labels at the
    checkpoint's tuned thresholds and each label's probability, tokenised, truncated and thresholded as `emolightning predict` does; concurrent
    requests share batches. GET /health, GET /info. Needs the [serve] extra. Ctrl-C or SIGTERM stops it."""
    from ..inference.serving import HOSTS, PRECISIONS, check_port, model_source, require_litserve

    parser = command_parser("serve", serve.__doc__)
    parser.add_argument(
        "--ckpt_path",
        required=True,
        help="A run folder (its best checkpoint), a checkpoint written by `emolightning fit`, an ensemble manifest (ENSEMBLE.json) or a folder written by `emolightning export`.",
    )
    parser.add_argument(
        "--host",
        choices=HOSTS,
        default="127.0.0.1",
        help="The interface to listen on: 127.0.0.1 (this machine only) or 0.0.0.0 (every interface, as in a container).",
    )
    parser.add_argument("--port", type=int, default=8000, help="The port to listen on.")
    parser.add_argument("--max_batch_size", type=int, default=64, help="Requests one forward call may take (their texts run in batches of this many).")
    parser.add_argument("--batch_timeout", type=float, default=0.01, help="Seconds a worker waits for more requests to fill a batch.")
    parser.add_argument("--workers_per_device", type=int, default=1, help="Inference processes per device, each with its own copy of the model.")
    parser.add_argument("--accelerator", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="auto: the GPUs when there are, else the CPU.")
    parser.add_argument(
        "--backend",
        choices=["auto", "fp32", "torch", "bf16", "onnx"],
        default="auto",
        help="As `predict --backend`: auto (fp32, the exported model's labels), fp32, torch (at --precision), bf16 (fastest on CPUs with AMX or "
        "AVX-512 BF16, labels close to fp32's) or onnx (the [onnx] extra).",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="With `--backend torch` only, as predict's `--trainer.precision`: auto (bf16-mixed where bf16 is native, 16-mixed on older GPUs, "
        "else 32-true) or one of those; the other backends run their head in fp32.",
    )
    parser.add_argument("--max_texts_per_request", type=int, default=64, help="Texts one request may hold (more: 413).")
    parser.add_argument(
        "--max_text_chars", type=int, default=10000, help="Characters one text may hold (more: 413); texts are truncated to max_length tokens anyway."
    )
    parser.add_argument("--max_length", type=int, help="Tokens a text is truncated to, for an exported folder only (default: the one it records, else 128).")
    args = parser.parse_args(argv)
    for name in ("max_batch_size", "workers_per_device", "max_texts_per_request", "max_text_chars"):
        if getattr(args, name) < 1:
            raise ConfigError(f"`--{name} {getattr(args, name)}` must be at least 1.")
    if args.batch_timeout < 0:
        raise ConfigError(f"`--batch_timeout {args.batch_timeout}` must be 0 or more seconds.")
    require_litserve()  # before anything is loaded: the missing extra is named at once
    check_port(args.host, args.port)
    source = model_source(args.ckpt_path, args.max_length)
    from ..inference.server import serve as run_server

    run_server(
        source,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        workers_per_device=args.workers_per_device,
        accelerator=args.accelerator,
        backend=args.backend,
        precision=args.precision,
        max_texts=args.max_texts_per_request,
        max_chars=args.max_text_chars,
    )


COMMANDS = {"score": score, "export": export, "report": report, "ensemble": ensemble, "serve": serve}


def run(name: str, argv: list[str]) -> None:
    """Run the plain command `name` (a key of commands.PLAIN_COMMANDS) on its arguments."""
    COMMANDS[name](argv)
