"""The real `emolightning` command, in subprocesses, on a tiny random BERT and fixture data."""

from __future__ import annotations

import glob
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from emolightning.hardware import this_machine_precision

from conftest import LABELS
from ec_reference import assert_scores, gold_and_probabilities, printed_scores, printed_summary, stage_scores, summary_only
from helpers import REPO, emolightning, predict_args, print_config, tiny_args

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

    # fp32 (`auto` may be bf16 here), so that test scores the probabilities predict writes at 6 decimals
    test = emolightning("test", "--config", str(saved_config), "--ckpt_path", best[0], "--trainer.precision", "32-true")
    gold_file = Path(ec_dir, "2018-E-c-En-test-gold.txt")
    probs_file = tmp_path / "test-probs.txt"
    emolightning(
        *predict_args({"config": saved_config, "ckpt": best[0]}, tmp_path, "--data.predict_file", str(gold_file), "--output", str(probs_file)),
        "--probabilities",
        "true",
    )
    expected = stage_scores(
        "test", *gold_and_probabilities(gold_file, probs_file, LABELS), LABELS, torch.load(best[0], weights_only=True)["state_dict"]["thresholds"].tolist()
    )
    printed = test.stdout + test.stderr
    assert_scores(printed_scores(printed, "test"), expected, 1e-6, "the printed test metrics")
    assert_scores(printed_summary(printed, "test"), summary_only(expected), 5.1e-5, "the [test epoch 0] line")
    assert_scores(json.loads((run_dir / "checkpoints" / "test_scores.json").read_text())["scores"], expected, 1e-6, "test_scores.json")


def spread_thresholds(*probabilities: list[list[float]]) -> list[float]:
    """Per label, a cut inside the middle half of its probabilities, as far as can be from every written one: each label predicts
    some tweets and not others (the tuned cuts of a 2-step run predict nothing), and none lies where 6 decimals cannot tell the side."""
    cuts = []
    for j in range(len(probabilities[0][0])):
        values = sorted(row[j] for probs in probabilities for row in probs)
        middle = values[len(values) // 4 : 3 * len(values) // 4 + 1]
        gaps = [(b - a, (a + b) / 2) for a, b in zip(middle, middle[1:])]
        cuts.append(max(gaps)[1])
    return cuts


def test_test_and_validate_report_the_official_scores_of_the_probabilities_predict_writes(trained_run, ec_dir, tmp_path, capfd, caplog):
    """`test` and `validate` of a checkpoint print and return the Jaccard and F1s that an independent scorer (ec_reference.py) computes
    from the probabilities `predict --probabilities` writes for the same split and its gold file, at 0.5 and at the checkpoint's thresholds."""
    from emolightning.cli.main import run_cli

    splits = {"test": Path(ec_dir, "2018-E-c-En-test-gold.txt"), "val": Path(ec_dir, "2018-E-c-En-dev.txt")}
    ckpt = tmp_path / "checkpoints" / "best.ckpt"  # a copy: test writes test_scores.json beside it, and other tests share trained_run
    ckpt.parent.mkdir()
    shutil.copy(trained_run["ckpt"], ckpt)
    written = {}
    for stage, gold_file in splits.items():
        out = tmp_path / f"{stage}-probs.txt"
        run_cli([*predict_args(trained_run, tmp_path, "--data.predict_file", str(gold_file), "--output", str(out)), "--probabilities", "true"])
        written[stage] = gold_and_probabilities(gold_file, out, LABELS)
    # thresholds of the checkpoint set to cuts that each predict some tweets, different per label
    cuts = spread_thresholds(written["test"][1], written["val"][1])
    saved = torch.load(ckpt, weights_only=True)
    saved["state_dict"]["thresholds"] = torch.tensor(cuts)
    torch.save(saved, ckpt)

    common = ["--config", str(trained_run["config"]), "--ckpt_path", str(ckpt), "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false"]
    expected = {stage: stage_scores(stage, *written[stage], LABELS, cuts) for stage in splits}
    for stage in splits:  # the cuts matter: they change the scores, and the tuned macro-F1 is neither 0 nor 1
        assert expected[stage][f"{stage}/tuned/jaccard"] != expected[stage][f"{stage}/jaccard"] and 0 < expected[stage][f"{stage}/tuned/f1_macro"] < 1
    # test through the real command: what it prints, and test_scores.json beside the checkpoint (its callback_metrics)
    test = emolightning("test", *common, "--trainer.default_root_dir", str(tmp_path / "test"))
    assert_scores(printed_scores(test.stdout + test.stderr, "test"), expected["test"], 1e-6, "the metrics test prints")
    assert_scores(printed_summary(test.stdout + test.stderr, "test"), summary_only(expected["test"]), 5.1e-5, "the [test epoch 0] line")
    assert_scores(json.loads((ckpt.parent / "test_scores.json").read_text())["scores"], expected["test"], 1e-6, "test_scores.json")
    # validate in-process (one process start less): what it prints and its callback_metrics
    capfd.readouterr()
    with caplog.at_level(logging.INFO):  # the summary line is logged; the command's entry point shows INFO, run_cli alone does not
        cli = run_cli(["validate", *common, "--trainer.default_root_dir", str(tmp_path / "validate")])
    assert_scores(printed_scores("".join(capfd.readouterr()), "val"), expected["val"], 1e-6, "the metrics validate prints")
    assert_scores(printed_summary(caplog.text, "val"), summary_only(expected["val"]), 5.1e-5, "the [val epoch 0] line")
    assert_scores({k: float(v) for k, v in cli.trainer.callback_metrics.items()}, expected["val"], 1e-6, "validate's callback_metrics")


def test_bad_data_is_one_paragraph_not_a_traceback(tiny_encoder, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "2018-E-c-En-train.txt").write_text("ID\tTweet\tjoy\n1\tso happy\t1\n2\tvery sad\t7\n")
    proc = emolightning("fit", *tiny_args(tiny_encoder, str(bad), tmp_path), check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "2018-E-c-En-train.txt, line 3" in proc.stderr and "0 or 1" in proc.stderr
