"""The real `emolightning` command, in subprocesses, on a tiny random BERT and fixture data."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from emolightning.hardware import this_machine_precision

from helpers import REPO, emolightning, print_config, tiny_args

CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("config", [c for c in CONFIGS if not c.startswith(("configs/trainer/", "configs/logger/"))])  # logger configs: test_tracking.py
def test_every_model_config_parses_alone_and_with_each_trainer_config(config, capsys):
    out = print_config(config, capsys=capsys)
    assert "class_path: emolightning." in out and "lr:" in out
    for trainer in [c for c in CONFIGS if c.startswith("configs/trainer/")]:
        composed = print_config(config, trainer, capsys=capsys)
        expected = (REPO / trainer).read_text().split("precision:")[-1].split()[0] if "precision:" in (REPO / trainer).read_text() else None
        if expected:
            assert f"precision: {expected}" in composed


def test_fit_then_test_through_the_cli(tiny_encoder, ec_dir, tmp_path):
    fit = emolightning("fit", *tiny_args(tiny_encoder, ec_dir, tmp_path, "--trainer.max_epochs", "2", "--model.init_args.lr", "1e-3"))
    assert "[val epoch 1]" in fit.stderr + fit.stdout
    run_dir = Path(glob.glob(str(tmp_path / "run" / "lightning_logs" / "version_*"))[0])
    saved_config = run_dir / "config.yaml"
    assert saved_config.exists()
    resolved = this_machine_precision("cpu")  # precision auto, resolved before the run and recorded in its config
    assert f"precision: {resolved}" in saved_config.read_text() and f"trainer.precision auto: {resolved}" in fit.stderr + fit.stdout
    # the tokenizer is linked from model.encoder, not repeated in a config
    assert f"tokenizer: {tiny_encoder}" in (run_dir / "hparams.yaml").read_text()
    best = glob.glob(str(run_dir / "checkpoints" / "best-*.ckpt"))
    assert len(best) == 1 and not (run_dir / "checkpoints" / "last.ckpt").exists()  # a completed fit keeps no resume state

    test = emolightning("test", "--config", str(saved_config), "--ckpt_path", best[0])
    printed = test.stdout + test.stderr
    for key in ("test/jaccard", "test/f1_micro", "test/f1_macro", "test/f1/anger", "test/tuned/jaccard"):
        assert key in printed


def test_bad_data_is_one_paragraph_not_a_traceback(tiny_encoder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "2018-E-c-En-train.txt").write_text("ID\tTweet\tjoy\n1\tso happy\t1\n2\tvery sad\t7\n")
    proc = emolightning("fit", *tiny_args(tiny_encoder, str(bad), tmp_path), check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "2018-E-c-En-train.txt, line 3" in proc.stderr and "0 or 1" in proc.stderr
