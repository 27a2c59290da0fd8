"""The real `emolightning` command, in subprocesses, on a tiny random BERT and fixture data."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml"))


def emolightning(*args: str, cwd=REPO, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "emolightning", *args], cwd=cwd, capture_output=True, text=True, env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"emolightning {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def tiny_args(tiny_encoder: str, data_dir: str, root: Path, *extra: str) -> list[str]:
    return [
        "--config", "configs/quickstart.yaml",
        "--model.init_args.encoder", tiny_encoder,
        "--data.data_dir", data_dir,
        "--data.cache_dir", str(root / "cache"),
        "--trainer.default_root_dir", str(root / "run"),
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]


def print_config(*configs: str, capsys) -> str:
    """`emolightning fit --config ... --print_config`, in-process (parsing only, nothing loaded)."""
    from emolightning.cli import run_cli

    args = ["fit"] + [x for c in configs for x in ("--config", str(REPO / c))] + ["--print_config"]
    with pytest.raises(SystemExit) as done:
        run_cli(args)
    assert done.value.code in (0, None)
    return capsys.readouterr().out


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
    # the tokenizer is linked from model.encoder, not repeated in a config
    assert f"tokenizer: {tiny_encoder}" in (run_dir / "hparams.yaml").read_text()
    best = glob.glob(str(run_dir / "checkpoints" / "best-*.ckpt"))
    assert len(best) == 1 and (run_dir / "checkpoints" / "last.ckpt").exists()

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
