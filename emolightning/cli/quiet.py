"""What the libraries print that a user of emolightning cannot act on, kept off the terminal.

Silenced: Lightning's tensorboardX notice and litlogger tip, the TPU/HPU lines, its note that it
loads the train loader to count steps, torch's LeafSpec deprecation warning, transformers'
"Loading weights" bars, the tokenizer's warning that a text is "longer than the specified maximum
sequence length" (emolightning truncates such texts itself and counts them in one log line),
its warning
that a resumed fit's checkpoint folder "exists and is not empty" (it is the run's own), the
FLOPs column and "Total FLOPs: 0" of the model summary (no example input is given, so it is always
0) and `v_num` on the progress bar (the run's folder is printed at the end of `fit`) and, in test/predict, notes about the checkpoint callback's folder
and batch indices that concern Lightning's internals. Everything
else stays. `--verbose` on the command line, or EMOLIGHTNING_VERBOSE=1, keeps it all.

Three fixes apply with `--verbose` too, since they change what is shown, not what is hidden: the
progress bar counts epochs from 1 (`Epoch 4/4` is the last of `max_epochs: 4`; Lightning's reads `Epoch 3/3`), its rate is a real one (Lightning's reads 0.00it/s until rich has two updates, so all
through a one-batch test or predict), and an epoch of fewer batches than `trainer.log_every_n_steps`
logs every epoch (Lightning would log nothing from a short run, and warn about it).
"""

from __future__ import annotations

import logging
import os
import re
import warnings

from lightning.pytorch.callbacks import Callback, ModelSummary, ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_summary import get_human_readable_count

try:
    from rich.progress import ProgressColumn
    from rich.text import Text

    RICH = True
except ImportError:  # no rich: Lightning shows its TQDM bar instead, and ProcessingRate is never used
    ProgressColumn, RICH = object, False

WARNINGS = [
    r"Starting from v1\.9\.0, `tensorboardX` has been removed",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"The dirpath has changed from",  # test/predict log nowhere (cli/main.py), so the checkpoint callback's folder differs
    r"Couldn't infer the batch indices fetched from your dataloader",  # predict's stream yields whole batches
]
INFO_LINES = re.compile(
    r"💡 Tip: |(TPU|HPU) available: |Loading `train_dataloader` to estimate number of stepping batches|Trainer already configured with model summary callbacks"
)
# on `fit --ckpt_path`: the run's own checkpoint folder, which the resumed run goes on writing into
RESUME_WARNINGS = [r"Checkpoint directory .* exists and is not empty"]
TOKENIZER_LINES = re.compile(r"longer than the specified maximum sequence length")
_silenced = False


def verbose_requested(args: list[str]) -> tuple[bool, list[str]]:
    """(verbose?, `args` without `--verbose`): the flag may stand anywhere on the command line."""
    if "--verbose" in args:
        os.environ["EMOLIGHTNING_VERBOSE"] = "1"  # DDP workers re-run the command without the flag
    return os.environ.get("EMOLIGHTNING_VERBOSE", "") not in ("", "0"), [a for a in args if a != "--verbose"]


class _DropLines(logging.Filter):
    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(str(record.getMessage()))


def silence_libraries() -> None:
    """Install the filters (once per process; a forked DataLoader worker inherits them)."""
    global _silenced
    _silenced = True
    for message in WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning.pytorch.trainer.connectors.callback_connector"):
        logging.getLogger(name).addFilter(_DropLines(INFO_LINES))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.get_logger("transformers.tokenization_utils_base").addFilter(_DropLines(TOKENIZER_LINES))


def resuming() -> None:
    """Hide what Lightning says of a resumed fit's checkpoint folder, unless verbose: it is the run's own, and not empty (RESUME_WARNINGS)."""
    if _silenced:
        for message in RESUME_WARNINGS:
            warnings.filterwarnings("ignore", message=message)


class CompactModelSummary(ModelSummary):
    """Lightning's model summary without the FLOPs column and total, which are 0 without an example input."""

    @staticmethod
    def summarize(
        summary_data, total_parameters: int, trainable_parameters: int, model_size: float, total_training_modes, total_flops: int = 0, **kwargs
    ) -> None:
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        rows = [[name for name, _ in columns]] + [[str(values[i]) for _, values in columns] for i in range(len(columns[0][1]))]
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        count = get_human_readable_count
        lines.append(
            f"{count(trainable_parameters).strip()} trainable params, {count(total_parameters - trainable_parameters).strip()} non-trainable, {model_size:.1f} MB"
        )
        rank_zero_info("\n".join(lines))


def tidy_callbacks(trainer_config) -> None:
    """Add to the trainer's configured callbacks, before the Trainer is built: `LoggingInterval`, and where the config gives
    none of its own, the progress bar Lightning would add, with a real rate (and, unless verbose, no `v_num`), and (unless
    verbose) the compact model summary. Lightning adds its defaults only where the callbacks hold none."""
    callbacks = trainer_config.get("callbacks")
    callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, list) else [callbacks]
    callbacks.append(LoggingInterval())
    if not trainer_config.get("barebones"):  # barebones refuses a progress bar and a summary
        if trainer_config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(TidyRichProgressBar() if RICH else TidyTQDMProgressBar())
        if _silenced and trainer_config.get("enable_model_summary") is not False and not any(isinstance(c, ModelSummary) for c in callbacks):
            callbacks.append(CompactModelSummary())
    trainer_config["callbacks"] = callbacks


def without_version(metrics: dict) -> dict:
    """A progress bar's metrics without `v_num` (unless verbose): the run's folder is printed at the end of `fit`."""
    if _silenced:
        metrics.pop("v_num", None)
    return metrics


def epoch_description(trainer) -> str:
    """`Epoch 1/4` for the first of 4 epochs: counted from 1, as `max_epochs` counts (Lightning's bars show `Epoch 0/3`)."""
    limit = trainer.max_epochs
    return f"Epoch {trainer.current_epoch + 1}" + (f"/{limit}" if limit is not None and limit > 0 else "")


class TidyRichProgressBar(RichProgressBar):
    """Lightning's rich progress bar, with the epoch counted from 1, `ProcessingRate` for its rate column and (unless verbose) no `v_num`."""

    def configure_columns(self, trainer) -> list:
        columns = super().configure_columns(trainer)
        return [ProcessingRate(self.theme.processing_speed) if type(c).__name__ == "ProcessingSpeedColumn" else c for c in columns]

    def describe_epoch(self, trainer) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            description = f"{epoch_description(trainer):{len(self.validation_description)}}"  # padded as Lightning pads it
            self.progress.update(self.train_progress_bar_id, description=f"[{self.theme.description}]{description}" if self.theme.description else description)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.describe_epoch(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        described = self.train_progress_bar_id is not None
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not described:  # a resumed mid-epoch run creates its bar here
            self.describe_epoch(trainer)

    def get_metrics(self, trainer, pl_module) -> dict:
        return without_version(super().get_metrics(trainer, pl_module))


class TidyTQDMProgressBar(TQDMProgressBar):
    """Lightning's TQDM progress bar (without rich) with the epoch counted from 1 and (unless verbose) no `v_num`."""

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(epoch_description(trainer))

    def get_metrics(self, trainer, pl_module) -> dict:
        return without_version(super().get_metrics(trainer, pl_module))


class ProcessingRate(ProgressColumn):
    """Batches a second: rich's estimate, or, while rich has too few updates for one, the mean since the bar began
    (in place of Lightning's `0.00it/s`); nothing before the first batch."""

    def __init__(self, style):
        self.style = style
        super().__init__()

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.completed and task.elapsed:
            speed = task.completed / task.elapsed
        return Text("" if speed is None else f"{speed:.2f}it/s", style=self.style)


def epoch_batches(loader_batches: int, limit: int | float) -> int:
    """The batches a training epoch runs: `trainer.limit_train_batches` (a count, or a fraction) applied to the loader's, as Lightning does."""
    return min(loader_batches, limit) if isinstance(limit, int) else int(loader_batches * limit)


class LoggingInterval(Callback):
    """Cuts `trainer.log_every_n_steps` to the batches of an epoch when an epoch has fewer, so that every epoch logs its training
    metrics: a 1-epoch run of 3 batches at the default 50 would log none (and Lightning warns that it does not)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or trainer.datamodule is None or trainer.fast_dev_run:
            return
        try:  # the datamodule is set up (Lightning calls its setup first); under DDP the loader's length is this process's
            batches = epoch_batches(len(trainer.datamodule.train_dataloader()), trainer.limit_train_batches)
        except TypeError:  # a loader without a length: Lightning does not warn either
            return
        if 0 < batches < trainer.log_every_n_steps:
            trainer.log_every_n_steps = batches
