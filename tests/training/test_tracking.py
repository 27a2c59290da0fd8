"""tracking.py in-process: what configs/logger/wandb.yaml instantiates, and the per-label table rows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from emolightning.cli.main import EmotionCLI, run_cli
from emolightning.outputs import EpochOutputs
from emolightning.training.best_checkpoint import BestCheckpoint
from emolightning.training.tracking import LABEL_TABLE_COLUMNS, LabelTable, SaveConfigToLogger

from helpers import REPO, print_config, tiny_options

MODEL_CONFIGS = sorted(str(p.relative_to(REPO)) for d in ("semeval", "distill") for p in (REPO / "configs" / d).glob("*.yaml")) + ["configs/quickstart.yaml"]


def instantiate(monkeypatch, *args: str) -> EmotionCLI:
    """`emolightning fit ARGS` up to the instantiated Trainer, without fitting."""
    monkeypatch.setattr(EmotionCLI, "_run_subcommand", lambda self, subcommand: None)
    return run_cli(["fit", *args])


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_wandb_config_composes_after_every_model_config(config, capsys):
    out = print_config(config, "configs/logger/wandb.yaml", capsys=capsys)
    assert "class_path: lightning.pytorch.loggers.WandbLogger" in out and "project: emolightning" in out
    assert "class_path: emolightning.training.tracking.LabelTable" in out


def test_wandb_config_keeps_the_cli_callbacks(tiny_encoder, ec_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cli = instantiate(
        monkeypatch, "--config", "configs/quickstart.yaml", "--config", "configs/logger/wandb.yaml", *tiny_options(tiny_encoder, ec_dir, tmp_path)
    )
    kinds = [type(cb) for cb in cli.trainer.callbacks]
    # trainer_defaults' LearningRateMonitor, the `checkpoint` BestCheckpoint, the config's LabelTable, the config saver
    for kind in (LearningRateMonitor, BestCheckpoint, LabelTable, SaveConfigToLogger):
        assert kinds.count(kind) == 1, kinds
    assert cli.trainer.checkpoint_callback.monitor == "val/jaccard"
    logger = cli.trainer.logger
    assert isinstance(logger, WandbLogger) and logger.name == "emolightning"
    assert logger.save_dir == str(tmp_path / "run")  # save_dir: null -> trainer.default_root_dir
    assert logger._log_model is False


def test_a_callbacks_config_before_wandb_keeps_its_callbacks(tiny_encoder, ec_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    early = tmp_path / "early.yaml"
    early.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.EarlyStopping\n      init_args: {monitor: val/jaccard, mode: max}\n"
    )
    cli = instantiate(
        monkeypatch,
        "--config",
        "configs/quickstart.yaml",
        "--config",
        str(early),
        "--config",
        "configs/logger/wandb.yaml",
        *tiny_options(tiny_encoder, ec_dir, tmp_path),
    )
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    for name in ("EarlyStopping", "LabelTable", "LearningRateMonitor", "BestCheckpoint"):
        assert name in names, names


def test_default_logger_stays_local(tiny_encoder, ec_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cli = instantiate(monkeypatch, "--config", "configs/quickstart.yaml", *tiny_options(tiny_encoder, ec_dir, tmp_path))
    assert isinstance(cli.trainer.logger, CSVLogger)
    assert not any(isinstance(cb, LabelTable) for cb in cli.trainer.callbacks)


class FakeWandb(WandbLogger):
    def __init__(self):
        super().__init__(project="test", save_dir=".")
        self.tables = []

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
        self.tables.append((key, columns, data, step))


def fake_run(loggers, rank_zero=True, sanity=False):
    labels = torch.tensor([[1, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.float)
    trainer = SimpleNamespace(
        sanity_checking=sanity,
        is_global_zero=rank_zero,
        loggers=loggers,
        global_step=7,
        callback_metrics={"val/f1/anger": torch.tensor(0.5), "val/f1/joy": torch.tensor(0.0), "val/f1/fear": torch.tensor(0.8)},
    )
    # all the table needs comes from the module's validation outputs (outputs.Classifier): no data module
    names = ["anger", "joy", "fear"]
    val = EpochOutputs("val", torch.rand(4, 3), labels, torch.tensor([0.3, 0.5, 0.65]), names)
    module = SimpleNamespace(label_names=names, epoch_outputs=lambda stage: val if stage == "val" else None)
    return trainer, module


def test_label_table_rows_and_when_it_logs():
    wandb, csv = FakeWandb(), CSVLogger(".")
    LabelTable().on_validation_end(*fake_run([csv, wandb]))
    ((key, columns, data, step),) = wandb.tables
    assert key == "val/labels" and columns == LABEL_TABLE_COLUMNS == ["label", "threshold", "f1", "positives"] and step == 7
    # positives: column sums of the 4 x 3 gold matrix above
    assert data == [["anger", 0.3, 0.5, 3], ["joy", 0.5, 0.0, 0], ["fear", 0.65, pytest.approx(0.8), 3]]

    quiet = FakeWandb()
    LabelTable().on_validation_end(*fake_run([quiet], rank_zero=False))
    LabelTable().on_validation_end(*fake_run([quiet], sanity=True))
    assert quiet.tables == []
    LabelTable().on_validation_end(*fake_run([csv]))  # no W&B logger: nothing to do, no error
    trainer, _ = fake_run([quiet])
    LabelTable().on_validation_end(trainer, SimpleNamespace(label_names=["anger"]))  # a module without epoch outputs: no table, no error
    LabelTable().on_validation_end(trainer, SimpleNamespace(label_names=["anger"], epoch_outputs=lambda stage: None))  # none scored yet
    assert quiet.tables == []


def test_csv_stays_the_default_logger_when_tensorboard_is_installed(tiny_encoder, ec_dir, tmp_path, monkeypatch):
    # Lightning's own default (logger unset) is TensorBoard whenever tensorboard is importable
    monkeypatch.setattr("lightning.pytorch.trainer.connectors.logger_connector.logger_connector._TENSORBOARD_AVAILABLE", True)
    monkeypatch.setattr("lightning.fabric.loggers.tensorboard._TENSORBOARD_AVAILABLE", True)
    monkeypatch.chdir(REPO)
    cli = instantiate(monkeypatch, "--config", "configs/quickstart.yaml", *tiny_options(tiny_encoder, ec_dir, tmp_path))
    (logger,) = cli.trainer.loggers
    assert type(logger) is CSVLogger and logger.save_dir == str(tmp_path / "run")


def test_tensorboard_config_keeps_the_csv_logs_first(tiny_encoder, ec_dir, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import TensorBoardLogger

    monkeypatch.setattr("lightning.fabric.loggers.tensorboard._TENSORBOARD_AVAILABLE", True)  # nothing is written here
    monkeypatch.chdir(REPO)
    cli = instantiate(
        monkeypatch, "--config", "configs/quickstart.yaml", "--config", "configs/logger/tensorboard.yaml", *tiny_options(tiny_encoder, ec_dir, tmp_path)
    )
    csv_logger, tensorboard = cli.trainer.loggers
    assert type(csv_logger) is CSVLogger and type(tensorboard) is TensorBoardLogger
    # save_dir "" in the config: trainer.default_root_dir, for both; each logger in its own folder
    assert csv_logger.save_dir == tensorboard.save_dir == str(tmp_path / "run")
    assert csv_logger.name == "lightning_logs" and tensorboard.name == "tensorboard"
