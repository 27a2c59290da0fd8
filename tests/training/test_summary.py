"""summary.py: the closing block of `fit` gets whether the data names a test split from its caller."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from emolightning.data.datamodule import EmotionDataModule
from emolightning.training.summary import closing_block, has_test_split


def finished_fit(tmp_path) -> SimpleNamespace:
    best = tmp_path / "run" / "checkpoints" / "best-1-8.ckpt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"")
    checkpoint = SimpleNamespace(best_model_path=str(best), best_model_score=torch.tensor(0.5), monitor="val/jaccard")
    return SimpleNamespace(checkpoint_callback=checkpoint, log_dir=str(tmp_path / "run"), default_root_dir=str(tmp_path))


def test_the_test_command_asks_for_a_file_only_when_the_data_names_no_test_split(tmp_path):
    history = [{"val/jaccard": 0.5, "val/f1_micro": 0.25, "epoch": 1}]
    with_split = closing_block(finished_fit(tmp_path), history, test_split=True)
    assert "val/jaccard 0.5000  val/f1_micro 0.2500 (epoch 1, threshold 0.5)" in with_split
    test_line = next(line for line in with_split.splitlines() if "emolightning test" in line)
    assert "--ckpt_path" in test_line and "TEST_FILE" not in test_line
    without = closing_block(finished_fit(tmp_path / "other"), history, test_split=False)
    assert next(line for line in without.splitlines() if "emolightning test" in line).endswith(" --data.test_file TEST_FILE")


def test_has_test_split_reads_the_data_module_it_is_given(tmp_path):
    named = EmotionDataModule(train_file=str(tmp_path / "train.csv"), val_file=str(tmp_path / "dev.csv"))
    assert not has_test_split(named)  # files named one by one, none for test
    assert has_test_split(EmotionDataModule(train_file=str(tmp_path / "train.csv"), test_file=str(tmp_path / "test.csv")))
