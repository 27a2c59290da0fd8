"""What the commands print: no library line the user cannot act on, and a progress bar that counts epochs as `max_epochs` does."""

from __future__ import annotations

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.demos.boring_classes import BoringModel

from emolightning.cli.quiet import TidyRichProgressBar, TidyTQDMProgressBar

from helpers import emolightning, tiny_options

pytest.importorskip("rich")


class TrainDescriptions(Callback):
    """The training bar's description at the end of each epoch."""

    def __init__(self):
        self.seen = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        bar = trainer.progress_bar_callback
        if isinstance(bar, TidyRichProgressBar):
            self.seen.append(bar.progress.tasks[bar.train_progress_bar_id].description.strip())
        else:
            self.seen.append(bar.train_progress_bar.desc.strip().rstrip(":"))  # tqdm appends ": "


@pytest.mark.parametrize("bar", [TidyRichProgressBar, TidyTQDMProgressBar])
def test_the_progress_bar_counts_epochs_from_one_to_max_epochs(bar, tmp_path):
    seen = TrainDescriptions()
    trainer = Trainer(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[bar(), seen],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(BoringModel())
    assert [d.removeprefix("[]") for d in seen.seen] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]


@pytest.mark.slow  # two real fits in subprocesses: about a minute on 2 shared cores
def test_fit_and_its_resume_print_no_checkpoint_notes_and_count_epochs_to_max_epochs(tiny_encoder, ec_dir, tmp_path):
    options = [
        "--config",
        "configs/quickstart.yaml",
        *tiny_options(tiny_encoder, ec_dir, tmp_path),
        "--trainer.limit_train_batches",
        "2",
        "--trainer.enable_model_summary",
        "false",
        "--last_checkpoint.keep_after_fit",
        "true",
    ]
    fit = emolightning("fit", *options, "--trainer.max_epochs", "2")
    printed = fit.stdout + fit.stderr
    assert "weights_only" not in printed, printed[-3000:]  # Lightning's note on each last.ckpt
    assert "Epoch 2/2" in printed and "Epoch 1/1" not in printed
    last = next(tmp_path.glob("run/lightning_logs/version_0/checkpoints/last.ckpt"))
    resumed = emolightning("fit", *options, "--trainer.max_epochs", "3", "--ckpt_path", str(last))
    printed = resumed.stdout + resumed.stderr
    assert "exists and is not empty" not in printed and "weights_only" not in printed, printed[-3000:]
    assert "Epoch 3/3" in printed and "Epoch 2/2" not in printed
