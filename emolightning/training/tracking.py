"""Experiment tracking: the resolved CLI config in the logger, and a per-label table in W&B.

LightningCLI and W&B do not fit together out of the box (Lightning issues #11256, #16836,
#11380; wandb #1059). What this module and `configs/logger/wandb.yaml` do about it:

- `SaveConfigToLogger` saves the fully resolved config (every `--config` file and `--key=value`
  merged, as `emolightning test --config` wants it) as config.yaml, and also logs it with
  `log_hyperparams` (for W&B: the run's config, so sweep runs compare on any key). The CSV
  logger keeps config.yaml in its log dir as before; with W&B it goes beside each run's
  checkpoints (`<save_dir>/<project>/<run id>/`) and into the run's files, where Lightning would
  write one config.yaml into `WandbLogger.save_dir`, shared by every run of a sweep (#11256).
- `wandb_save_dir_default`: a WandbLogger without `save_dir` writes under
  `trainer.default_root_dir`, like the checkpoints, instead of the current directory.
- `default_logger`: CSV is the default logger of `fit` (Lightning's own default turns into
  TensorBoard when tensorboard is installed); `local_logger_defaults`: CSV/TensorBoard loggers with
  `save_dir: ""` write under `trainer.default_root_dir` (configs/logger/tensorboard.yaml).
- `LabelTable`: after each validation, a W&B table of label, tuned threshold, F1 at the fixed
  threshold and gold positives.
- `log_report_to_wandb`: at the end of `fit`, the run's report (report.py) in its W&B run: the
  figures as images, a per-label F1 bar chart and precision-recall curves (`wandb.plot`).
- Sweeps pass hyperparameters as `--key=value` on the command line (`sweeps/*.yaml`), never
  through `wandb.config`: under DDP every rank parses the same argv, while `wandb.config` exists
  on rank 0 only. WandbLogger creates its run on global rank 0 only (`rank_zero_experiment`; the
  other ranks get a dummy), and nothing here calls `wandb.init`: one W&B run per job.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import lightning as L
import numpy as np
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from ..errors import ConfigError
from ..outputs import Classifier

LABEL_TABLE_COLUMNS = ["label", "threshold", "f1", "positives"]


def configured_loggers(config):
    """(trainer namespace, class path, logger namespace) of each logger that a parsed subcommand config names."""
    trainer = config.get("trainer")
    if trainer is None:
        return
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        yield trainer, (logger.get("class_path", "") if hasattr(logger, "get") else ""), logger


def wandb_save_dir_default(config) -> None:
    """Point a WandbLogger that has neither `save_dir` nor `dir` at `trainer.default_root_dir`.

    `config` is one subcommand's parsed (not yet instantiated) namespace; changed in place, so
    the saved config.yaml holds the directory that was used.
    """
    for trainer, class_path, logger in configured_loggers(config):
        if not class_path.endswith(".WandbLogger"):
            continue
        init = logger.init_args
        if init.get("save_dir") is None and init.get("dir") is None:
            init.save_dir = trainer.get("default_root_dir") or os.getcwd()


def local_logger_defaults(config) -> None:
    """A CSV/TensorBoard logger with `save_dir: ""` (configs/logger/tensorboard.yaml) writes under `trainer.default_root_dir`.

    `config` is one subcommand's parsed namespace, changed in place (config.yaml records the directory).
    """
    for trainer, class_path, logger in configured_loggers(config):
        # "" (a config can't leave out this required argument): trainer.default_root_dir, not the current directory
        if class_path.endswith((".CSVLogger", ".TensorBoardLogger")) and not logger.init_args.get("save_dir"):
            logger.init_args.save_dir = trainer.get("default_root_dir") or os.getcwd()


def default_logger(default_root_dir: str | None) -> CSVLogger:
    """The logger of a `fit` whose config sets none: CSV, whose metrics.csv `emolightning report` reads.

    Lightning's own default is TensorBoard whenever the tensorboard package happens to be installed,
    CSV otherwise; pinned here so the logs do not depend on what else is installed. Passed to the
    Trainer rather than written into the config, so the run's config.yaml keeps `logger: null`.
    """
    return CSVLogger(save_dir=default_root_dir or os.getcwd())


@contextmanager
def wandb_login_explained():
    """W&B's "No API key configured" (a WandbLogger on a machine without a login) as a ConfigError."""
    try:
        yield
    except Exception as err:
        if type(err).__module__.startswith("wandb.") and type(err).__name__ == "UsageError" and "API key" in str(err):
            raise ConfigError(
                "W&B has no API key on this machine, and `trainer.logger` is a WandbLogger (e.g. from "
                "configs/logger/wandb.yaml). Log in with `wandb login` (or set WANDB_API_KEY), or run without an "
                "account: WANDB_MODE=offline keeps the run on disk for a later `wandb sync`, WANDB_MODE=disabled "
                "logs nothing; or drop configs/logger/wandb.yaml to keep the local CSV logs."
            ) from err
        raise


class SaveConfigToLogger(SaveConfigCallback):
    """LightningCLI's config.yaml, plus the same config in every logger that has no copy of it."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # With W&B, `trainer.log_dir` is the save_dir every run of a sweep shares: save per run
        # instead (in save_config, below). Same value on every rank, so the collectives match.
        if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
            self.save_to_log_dir = False
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning calls this on global rank 0 only
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            # CSV/TensorBoard: config.yaml already sits in their log_dir, and their hparams.yaml
            # must keep only the model's arguments (load_from_checkpoint(hparams_file=...) reads it)
            if isinstance(logger, (CSVLogger, TensorBoardLogger)):
                continue
            logger.log_hyperparams(config)
            if isinstance(logger, WandbLogger):
                self._save_for_wandb_run(logger)

    def _save_for_wandb_run(self, logger: WandbLogger) -> None:
        # <save_dir>/<project>/<run id>/ is where ModelCheckpoint puts this run's checkpoints
        run_dir = os.path.join(logger.save_dir or ".", str(logger.name), str(logger.version))
        targets = [os.path.join(run_dir, self.config_filename)]
        files_dir = getattr(logger.experiment, "dir", None)  # synced to W&B; absent when disabled
        if files_dir and os.path.isdir(files_dir):
            targets.append(os.path.join(files_dir, "lightning_config.yaml"))  # W&B writes its own config.yaml
        for path in targets:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.parser.save(self.config, path, skip_none=False, overwrite=self.overwrite, multifile=False)


class LabelTable(Callback):
    def __init__(self, key: str = "val/labels", stage: str = "val"):
        """After each validation, log a W&B table with one row per label (W&B loggers only).

        Columns: label, threshold (the model's tuned per-label threshold), f1 (the label's F1 at
        the fixed threshold, `<stage>/f1/<label>`), positives (gold positives in the split). The
        labels, thresholds and positives come from the module's latest validation outputs
        (`epoch_outputs("val")`, outputs.Classifier); other LightningModules get no table.

        Args:
            key: Name of the table in W&B.
            stage: Prefix of the per-label F1 metrics.
        """
        self.key, self.stage = key, stage

    def rows(self, label_names: list[str], thresholds, metrics: dict, positives: list[int] | None) -> list[list]:
        """One row per label: name, tuned threshold, F1 (`<stage>/f1/<label>` in `metrics`), gold positives; None where unknown."""
        rows = []
        for i, name in enumerate(label_names):
            f1 = metrics.get(f"{self.stage}/f1/{name}")
            rows.append(
                [
                    name,
                    None if thresholds is None else round(float(thresholds[i]), 4),
                    None if f1 is None else float(f1),
                    None if positives is None else int(positives[i]),
                ]
            )
        return rows

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before
        # the module's, which is where the scores are logged and the thresholds tuned
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not wandb_loggers:
            return
        outputs = pl_module.epoch_outputs("val") if isinstance(pl_module, Classifier) else None
        if outputs is None:
            return
        rows = self.rows(outputs.label_names, outputs.thresholds, trainer.callback_metrics, outputs.positives())
        for logger in wandb_loggers:
            logger.log_table(self.key, columns=LABEL_TABLE_COLUMNS, data=rows, step=trainer.global_step)


def pr_curve_rows(probs: np.ndarray, target: np.ndarray, label_names: list[str], points: int = 21) -> list[list]:
    """[label, precision, recall] rows of each label's precision-recall curve, for W&B's PR chart.

    The same curve as `wandb.plot.pr_curve` (which needs scikit-learn and pandas): precision made
    non-increasing in recall (the best precision at this recall or more), read at `points` recalls from 0 to 1.
    """
    rows = []
    recalls = np.linspace(0, 1, points)
    for j, name in enumerate(label_names):
        gold = target[:, j].astype(bool)
        if not gold.any():
            continue
        order = np.argsort(-probs[:, j], kind="stable")
        tp = np.cumsum(gold[order])
        precision = tp / np.arange(1, len(order) + 1)
        recall = tp / gold.sum()
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        at = np.minimum(np.searchsorted(recall, recalls, side="left"), len(recall) - 1)
        rows += [[name, round(float(p), 4), round(float(r), 4)] for p, r in zip(envelope[at], recalls)]
    return rows


def log_report_to_wandb(logger: WandbLogger, run, figures: list[tuple]) -> None:
    """The report of `run` (report.Run) in the W&B run of `logger`: `report/<figure>` images (figures: [(png path, title)]),
    `val/label_f1` (bar chart of the best checkpoint's per-label F1, at its tuned thresholds when saved) and `val/pr_curves` (one PR curve per label, best epoch)."""
    import wandb

    payload = {f"report/{os.path.splitext(os.path.basename(str(path)))[0]}": wandb.Image(str(path), caption=title) for path, title in figures}
    f1, at = (run.label_f1_tuned, "tuned thresholds") if run.label_f1_tuned else (run.label_f1, "threshold 0.5")
    if f1:
        table = wandb.Table(columns=["label", "f1"], data=[[name, float(v)] for name, v in f1.items()])
        payload["val/label_f1"] = wandb.plot.bar(table, "label", "f1", title=f"Per-label validation F1 of the best checkpoint ({at})")
    if run.val_probs is not None:
        vp = run.val_probs
        table = wandb.Table(columns=["class", "precision", "recall"], data=pr_curve_rows(vp["probs"], vp["target"], vp["label_names"]))
        payload["val/pr_curves"] = wandb.plot_table(
            "wandb/area-under-curve/v0",
            table,
            {"x": "recall", "y": "precision", "class": "class"},
            {"title": f"Validation precision-recall per label (epoch {vp['epoch']})", "x-axis-title": "Recall", "y-axis-title": "Precision"},
        )
    if payload:
        logger.experiment.log(payload)
