"""`emolightning report RUN_DIR [RUN_DIR ...] --output DIR`: one table and a few figures that compare runs.

    emolightning report runs/semeval/minilm-l6 runs/semeval/minilm-l3 --output reports/minilm

A RUN_DIR is a run's log directory (`<default_root_dir>/lightning_logs/version_N`, or a W&B run's
`<save_dir>/<project>/<run id>`), or a folder above such directories: then each fit run under it is
reported (a `test` run of one of its checkpoints adds its test scores to that run's row).
Everything comes from the run's own files: metrics.csv (CSV logger), config.yaml, the best
checkpoint (parameters) and checkpoints/val_probs.npz (record.py). A value a run did not record (another
logger, no best checkpoint yet) shows as "–".

DIR receives report.md and report.csv (the table), one PNG per figure (figures.py), report.html
(the table and the figures in one self-contained page) and report.json (what each figure shows:
its file, title and the runs in its legend; the runs a figure leaves out and why).
"""

from __future__ import annotations

import base64
import csv
import glob
import html
import json
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from ..errors import ConfigError, DataError
from ..files import atomic_open, write_atomically
from ..metrics import official_scores
from ..models.checkpoints import read_checkpoint
from ..training.record import TEST_SCORES_FILE, VAL_PROBS_FILE, load_val_probs, monitored_checkpoint
from ..training.tracking import CSVLogger, TensorBoardLogger, WandbLogger, log_report_to_wandb

MISSING = "–"
SCORES = ("jaccard", "f1_micro", "f1_macro")
# (key in the CSV and in Run.row, header of the Markdown table)
COLUMNS = [
    ("run", "run"),
    ("model", "model"),
    ("params", "parameters"),
    ("epochs", "epochs"),
    ("train_time_s", "train time"),
    ("samples_per_sec", "samples/s"),
    ("best_epoch", "best epoch"),
    ("val_jaccard", "val Jaccard"),
    ("val_f1_micro", "val micro-F1"),
    ("val_f1_macro", "val macro-F1"),
    ("val_tuned_jaccard", "val Jaccard tuned"),
    ("val_tuned_f1_micro", "val micro-F1 tuned"),
    ("val_tuned_f1_macro", "val macro-F1 tuned"),
    ("test_tuned_jaccard", "test Jaccard tuned"),
    ("test_tuned_f1_micro", "test micro-F1 tuned"),
    ("test_tuned_f1_macro", "test macro-F1 tuned"),
]
RUN_FILES = ("metrics.csv", "config.yaml", "hparams.yaml", "checkpoints")


@dataclass
class Run:
    """What one run's files say, ready for the table and the figures (None: not recorded)."""

    path: Path
    label: str = ""
    row: dict = field(default_factory=dict)  # COLUMNS keys -> value or None
    curves: dict = field(default_factory=dict)  # "val/jaccard", "val/tuned/jaccard", ... -> [(epoch, value)]
    loss: list = field(default_factory=list)  # [(step, train/loss)]
    label_f1: dict = field(default_factory=dict)  # label -> val F1 at the fixed threshold, best epoch
    label_f1_tuned: dict = field(default_factory=dict)  # label -> val F1 at the tuned thresholds, best epoch (val_probs.npz)
    val_probs: dict | None = None  # record.load_val_probs of the best epoch
    missing: list = field(default_factory=list)  # what the run did not record, in words


def _number(text: str):
    if text == "":
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def damaged_record(path: Path, what: str) -> DataError:
    """The one-paragraph error for a run record (metrics.csv, config.yaml, hparams.yaml, test_scores.json) that cannot be read."""
    return DataError(
        f"The run record '{path}' cannot be read: {what}. It was cut short or damaged (a job killed while writing it, a disk that filled, "
        "an interrupted copy); nothing was changed. Copy it again from the original run if there is one, or move it out of the run "
        "folder (the report then leaves out what it holds) and run `emolightning report` again."
    )


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv of Lightning's CSVLogger: one dict per row, only the cells that hold a number."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: v for k, v in ((k, _number(v or "")) for k, v in row.items() if k) if v is not None} for row in csv.DictReader(f)]
    except (csv.Error, ValueError) as err:  # binary bytes (UnicodeDecodeError), a cell that is not a number
        raise damaged_record(path, f"it is not a CSV file of numbers ({type(err).__name__}: {str(err)[:120]!r})") from None


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise damaged_record(path, f"it is not valid YAML ({' '.join(str(err).split())[:160]})") from None
    if not isinstance(data, dict):
        raise damaged_record(path, f"it holds a {type(data).__name__}, not the mapping of options a run saves")
    return data


def read_test_scores(path: Path) -> dict:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["scores"])
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise damaged_record(path, f"it is not the JSON of test scores `emolightning test` writes ({type(err).__name__})") from None


def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES)


def find_runs(arg: str) -> list[Path]:
    """The fit runs that RUN_DIR `arg` names: itself, or the run directories anywhere under it."""
    path = Path(arg)
    if not path.is_dir():
        raise DataError(
            f"The run directory '{arg}' does not exist. Give a run's log directory (e.g. runs/quickstart/lightning_logs/version_0) or a folder above it (e.g. runs/quickstart)."
        )
    if is_run_dir(path):
        return [path]
    found = sorted({Path(p).parent for name in ("metrics.csv", "checkpoints") for p in glob.glob(str(path / "**" / name), recursive=True)})
    # `validate` and `test` runs log no train/* metrics and save no checkpoints
    fits = [p for p in found if (p / "checkpoints").is_dir() or any(k.startswith("train/") for r in _metrics(p) for k in r)]
    if not fits:
        raise DataError(
            f"'{arg}' holds no run of `emolightning fit`: no metrics.csv or checkpoints/ in it or in the folders below it. "
            "Give a run's log directory (e.g. runs/quickstart/lightning_logs/version_0) or the trainer.default_root_dir of a fit."
        )
    return fits


def _metrics(path: Path) -> list[dict]:
    return read_metrics(path / "metrics.csv") if (path / "metrics.csv").is_file() else []


def series(rows: list[dict], key: str, by: str = "epoch") -> list[tuple[int, float]]:
    return [(int(r[by]), r[key]) for r in rows if key in r and by in r]


def best_row(rows: list[dict], monitor: str, mode: str) -> dict | None:
    """The validation row ModelCheckpoint keeps: the first one with the best `monitor` value."""
    best = None
    for row in rows:
        if monitor in row and (best is None or (row[monitor] > best[monitor] if mode == "max" else row[monitor] < best[monitor])):
            best = row
    return best


def model_name(config: dict, hparams: dict) -> str | None:
    model = config.get("model") or {}
    args = model.get("init_args") or hparams
    encoder = args.get("encoder")
    if not encoder:
        return None
    name = str(encoder).rstrip("/").split("/")[-1]
    layers = args.get("student_layers") or args.get("encoder_layers")
    if layers:
        name += f" (layers {','.join(str(i) for i in layers)})"
    if str(model.get("class_path", "")).endswith("EmotionDistiller"):
        name += ", distilled"
    return name


def best_checkpoint(folder: Path, epoch: int | None) -> Path | None:
    """The best-*.ckpt in `folder` (the one of `epoch` when there are several), else None."""
    ckpts = sorted(Path(p) for p in glob.glob(str(folder / "*.ckpt")) if not Path(p).name.startswith("last"))
    if epoch is not None:
        same = [p for p in ckpts if re.search(rf"(^|[-_=]){epoch}([-_.]|$)", p.stem.split("best", 1)[-1])]
        ckpts = same or ckpts
    return max(ckpts, key=lambda p: p.stat().st_mtime) if ckpts else None


def parameters(ckpt: Path) -> int | None:
    """Parameters of the checkpoint's model (its floating-point tensors, not the thresholds or loss weights)."""
    try:
        state = read_checkpoint(ckpt).get("state_dict", {})
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError):  # an unreadable checkpoint costs the report one cell, not the table
        return None
    return sum(t.numel() for k, t in state.items() if torch.is_floating_point(t) and k not in ("thresholds", "pos_weight")) or None


def test_rows(path: Path, ckpt_dir: Path) -> list[dict]:
    """Test metrics of the run: test_scores.json beside its checkpoints (record.KeepTestScores), else its own metrics.csv."""
    if (ckpt_dir / TEST_SCORES_FILE).is_file():
        return [read_test_scores(ckpt_dir / TEST_SCORES_FILE)]
    return [r for r in _metrics(path) if "test/tuned/jaccard" in r]


def load_run(path: Path) -> Run:
    run = Run(path)
    rows = _metrics(path)
    config, hparams = read_yaml(path / "config.yaml"), read_yaml(path / "hparams.yaml")
    checkpoint = config.get("checkpoint") or {}
    monitor, mode = checkpoint.get("monitor") or "val/jaccard", checkpoint.get("mode") or "max"
    # a resumed run (resume.py) or an explicit checkpoint.dirpath keeps its checkpoints elsewhere
    ckpt_dir = Path(checkpoint.get("dirpath") or path / "checkpoints")
    npz = ckpt_dir / VAL_PROBS_FILE
    run.val_probs = load_val_probs(str(npz)) if npz.is_file() else None
    row = {key: None for key, _ in COLUMNS}
    row["model"] = model_name(config, hparams)
    if not rows:
        run.missing.append("metrics.csv (learning curves, per-label F1)")
    epochs = [int(r["epoch"]) for r in rows if "epoch" in r]
    row["epochs"] = max(epochs) + 1 if epochs else None
    times = [v for _, v in series(rows, "train/epoch_time_s")]
    speeds = [v for _, v in series(rows, "train/samples_per_sec")]
    if times:
        row["train_time_s"], row["samples_per_sec"] = sum(times), sum(speeds) / len(speeds) if speeds else None
    best = best_row(rows, monitor, mode)
    if best is not None:
        row["best_epoch"] = int(best["epoch"]) if "epoch" in best else None
        for score in SCORES:
            row[f"val_{score}"], row[f"val_tuned_{score}"] = best.get(f"val/{score}"), best.get(f"val/tuned/{score}")
        run.label_f1 = {k.split("/", 2)[2]: v for k, v in best.items() if k.startswith("val/f1/")}
    elif run.val_probs is not None:  # no CSV log (e.g. W&B only): the saved validation outputs of the best epoch
        vp = run.val_probs
        probs, target = torch.from_numpy(vp["probs"]), torch.from_numpy(vp["target"])
        fixed = official_scores(probs >= 0.5, target, vp["label_names"])
        tuned = official_scores(probs >= torch.from_numpy(vp["thresholds"]), target, vp["label_names"])
        row["best_epoch"] = vp["epoch"]
        for score in SCORES:
            row[f"val_{score}"], row[f"val_tuned_{score}"] = fixed[score], tuned[score]
        run.label_f1 = {name: fixed[f"f1/{name}"] for name in vp["label_names"]}
    if run.val_probs is not None:
        vp = run.val_probs
        tuned = official_scores(torch.from_numpy(vp["probs"]) >= torch.from_numpy(vp["thresholds"]), torch.from_numpy(vp["target"]), vp["label_names"])
        run.label_f1_tuned = {name: tuned[f"f1/{name}"] for name in vp["label_names"]}
    for curve in ("val/jaccard", "val/f1_macro", "val/tuned/jaccard", "val/tuned/f1_macro"):
        run.curves[curve] = series(rows, curve)
    run.loss = series(rows, "train/loss", by="step")
    ckpt = best_checkpoint(ckpt_dir, row["best_epoch"])
    row["params"] = parameters(ckpt) if ckpt else None
    if ckpt is None:
        run.missing.append("a best checkpoint (parameters)")
    tests = test_rows(path, ckpt_dir)
    if tests:
        for score in SCORES:
            row[f"test_tuned_{score}"] = tests[-1].get(f"test/tuned/{score}")
    run.row = row
    return run


def set_labels(runs: list[Run]) -> None:
    """Short, distinct names: as few of the path's last parts as tell the runs apart (lightning_logs left out,
    and version_N too unless two runs differ only in it)."""
    parts = [[p for p in r.path.resolve().parts if p != "lightning_logs"] for r in runs]
    for trimmed in ([p[:-1] if p[-1].startswith("version_") else p for p in parts], parts):
        for depth in range(1, max(len(p) for p in trimmed) + 1):
            names = ["/".join(p[-depth:]) for p in trimmed]
            if len(set(names)) == len(names):
                for run, name in zip(runs, names):
                    run.label = run.row["run"] = name
                return
    for i, run in enumerate(runs):  # the same directory given twice
        run.label = run.row["run"] = f"{'/'.join(parts[i][-2:])} ({i + 1})"


def cell(key: str, value) -> str:
    """A value as the Markdown table shows it."""
    if value is None:
        return MISSING
    if key == "params":
        return f"{value / 1e6:.1f}M" if value >= 1e6 else f"{value:,}"
    if key == "train_time_s":
        minutes, seconds = divmod(round(value), 60)
        return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"
    if key == "samples_per_sec":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def markdown(runs: list[Run]) -> str:
    lines = ["| " + " | ".join(header for _, header in COLUMNS) + " |", "|" + "|".join("---" if k in ("run", "model") else "---:" for k, _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(k, run.row[k]) for k, _ in COLUMNS) + " |" for run in runs]
    return (
        "\n".join(lines) + "\n\nTrain time in m:ss (h:mm:ss), summed over epochs with validation; samples/s over training steps only. "
        "Scores at threshold 0.5 and at the thresholds tuned on the validation split; test scores use the checkpoint's tuned thresholds.\n"
    )


def write_text(path: Path, text: str) -> None:
    write_atomically(str(path), lambda f: f.write(text), "w", needed=len(text.encode()), encoding="utf-8")


def write_csv(runs: list[Run], path: Path) -> None:
    with atomic_open(str(path), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([k for k, _ in COLUMNS])
        writer.writerows([["" if run.row[k] is None else run.row[k] for k, _ in COLUMNS] for run in runs])


def html_page(runs: list[Run], figures: list[dict], output: Path) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(k, r.row[k]))}</td>" for k, _ in COLUMNS) + "</tr>" for r in runs)
    parts = [
        f'<h2>{html.escape(fig["title"])}</h2>\n<img alt="{html.escape(fig["title"])}" src="data:image/png;base64,{base64.b64encode((output / fig["file"]).read_bytes()).decode()}">'
        for fig in figures
    ]
    notes = "".join(f"<li>{html.escape(r.label)}: not recorded: {html.escape('; '.join(r.missing))}</li>" for r in runs if r.missing)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>emolightning report</title><style>'
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}img{max-width:100%}</style></head><body>\n"
        f"<h1>emolightning report</h1>\n<table><tr>{head}</tr>{body}</table>\n"
        + (f"<ul>{notes}</ul>\n" if notes else "")
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def write_report(run_dirs: list[str | Path], output: str | Path, figures: bool = True) -> tuple[list[Run], dict]:
    """Write the report of `run_dirs` into `output`; returns the runs and what report.json holds.

    figures=False (matplotlib missing) writes the table only.
    """
    runs = [load_run(p) for arg in run_dirs for p in find_runs(str(arg))]
    set_labels(runs)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    # each file atomically: a full disk or a read-only folder stops with the path, and the previous report stays whole
    write_text(output / "report.md", markdown(runs))
    write_csv(runs, output / "report.csv")
    drawn = []
    if figures:
        from .figures import draw_all

        drawn = draw_all(runs, output)
        write_text(output / "report.html", html_page(runs, drawn, output))
    sidecar = {
        "runs": [{"label": r.label, "path": str(r.path), "not_recorded": r.missing} for r in runs],
        "table": {"markdown": "report.md", "csv": "report.csv"},
        "html": "report.html" if figures else None,
        "figures": drawn,
    }
    write_text(output / "report.json", json.dumps(sidecar, indent=2))
    return runs, sidecar


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            "`emolightning report` draws its figures with matplotlib, which is not installed. Install it with `pip install 'emolightning[report]'` (or `pip install matplotlib`)."
        ) from err


def fit_run_dir(trainer) -> Path:
    """The directory of the run `trainer` just fitted: its log dir with metrics.csv, else the folder above its checkpoints.

    Called on rank 0 only, so it reads the first logger's log_dir itself: `trainer.log_dir` is a
    broadcast under DDP, which would wait for the other ranks forever (they have left).
    """
    checkpoint = monitored_checkpoint(trainer)
    above = Path(checkpoint.dirpath).parent if checkpoint is not None and checkpoint.dirpath else None
    first = trainer.loggers[0] if trainer.loggers else None
    log_dir = Path(first.log_dir) if isinstance(first, (CSVLogger, TensorBoardLogger)) else None
    if log_dir is not None and (log_dir / "metrics.csv").is_file():
        return log_dir
    return above if above is not None and above.is_dir() else log_dir or Path(trainer.default_root_dir)


def report_after_fit(trainer) -> str | None:
    """`fit`'s closing report: <run dir>/report/ (the table only without matplotlib), also sent to each W&B logger. Rank 0 only.

    Returns the line naming it, for fit's closing block, or None when it failed (said here, with the command to retry).
    """
    run_dir = fit_run_dir(trainer)
    output = run_dir / "report"
    try:
        require_matplotlib()
        figures = True
    except ConfigError:
        figures = False
    try:
        runs, sidecar = write_report([run_dir], output, figures=figures)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                log_report_to_wandb(logger, runs[0], [(output / f["file"], f["title"]) for f in sidecar["figures"]])
    except Exception as err:  # training is done and saved: a report that fails must not turn the run into a failure
        if os.environ.get("EMOLIGHTNING_TRACEBACK"):
            raise
        print(
            f"emolightning: the run's report could not be written ({type(err).__name__}: {err}); make it with `emolightning report {run_dir} --output {output}`."
        )
        return None
    if figures:
        return f"report: {output / 'report.html'} (table: {output / 'report.md'})"
    return f"report: {output / 'report.md'} (table only: the figures need matplotlib, `pip install 'emolightning[report]'`)"
