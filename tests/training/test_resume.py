"""Interrupted runs: `kill -9` mid-epoch, resume with `--ckpt_path last`, end where the uninterrupted run ends."""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from emolightning.data.batching import LengthGroupedSampler, ResumableDataLoader
from emolightning.errors import ConfigError
from emolightning.training.resume import AtomicCheckpointIO, find_last_checkpoint, resolve_resume, rng_states, set_rng_states

from helpers import REPO, callback_option, env_with_tests_on_path, tiny_args


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "emolightning", *args]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **env_with_tests_on_path()}


def fit_args(tiny_encoder: str, ec_dir: str, root: Path, steps_file: Path) -> list[str]:
    # 96 train rows / batch 4 = 24 steps per epoch, 2 epochs; last.ckpt every 5 steps
    return [
        "fit",
        *tiny_args(
            tiny_encoder,
            ec_dir,
            root,
            "--model.init_args.lr",
            "5e-3",
            "--model.init_args.head_lr",
            "5e-2",
            "--data.batch_size",
            "4",
            "--trainer.max_epochs",
            "2",
            "--last_checkpoint.every_n_train_steps",
            "5",
            "--last_checkpoint.keep_after_fit",
            "true",  # the completed runs' last.ckpt are compared
            callback_option("RecordSteps", path=str(steps_file)),
        ),
    ]


def final_val(metrics_csv: Path) -> dict[str, float]:
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get("val/jaccard")]
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val/") and v}


def steps(path: Path) -> list[tuple[int, str, float]]:
    return [(int(s), rows, float(loss)) for s, rows, loss in (line.split("\t") for line in path.read_text().splitlines())]


def test_kill_9_mid_epoch_then_resume_ends_exactly_where_the_uninterrupted_run_ends(tiny_encoder, ec_dir, tmp_path):
    plain, broken = tmp_path / "plain", tmp_path / "broken"
    # the uninterrupted run and the run that is killed, side by side
    started = time.time()
    runs = {
        "plain": subprocess.Popen(
            command(*fit_args(tiny_encoder, ec_dir, plain, tmp_path / "plain.steps")),
            cwd=REPO,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
        # SIGKILL right after optimizer step 33, i.e. batch 8 of epoch 1; the last checkpoint is from step 30
        "killed": subprocess.Popen(
            command(*fit_args(tiny_encoder, ec_dir, broken, tmp_path / "broken.steps"), callback_option("KillAtStep", step=33)),
            cwd=REPO,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
    }
    logs = {k: p.communicate(timeout=600)[0] for k, p in runs.items()}
    assert runs["plain"].returncode == 0, logs["plain"][-3000:]
    assert runs["killed"].returncode == -9, logs["killed"][-3000:]

    run_dir = broken / "run" / "lightning_logs" / "version_0"
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 30 and saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 6, "global_batch": 4}]
    assert [s for s, _, _ in steps(tmp_path / "broken.steps")] == list(range(1, 34))  # steps 31-33 are lost

    # resume: the saved config and --ckpt_path last, nothing else
    resumed = subprocess.run(
        command("fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last"), cwd=REPO, env=env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {last}" in resumed.stderr + resumed.stdout
    print(f"3 runs: {time.time() - started:.0f} s")

    # the resumed run trained exactly the batches the uninterrupted run trained after step 30, none twice
    after_kill = steps(tmp_path / "broken.steps")[33:]
    uninterrupted = steps(tmp_path / "plain.steps")
    assert [(s, rows) for s, rows, _ in after_kill] == [(s, rows) for s, rows, _ in uninterrupted[30:]]
    assert max(abs(a[2] - b[2]) for a, b in zip(after_kill, uninterrupted[30:])) <= 1e-6  # same dropout masks
    # ... and ended with the same weights, optimizer state and validation scores (measured: identical, 0.0)
    mine = torch.load(last, weights_only=True)
    theirs = torch.load(plain / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert mine["global_step"] == theirs["global_step"] == 48
    weights = max((mine["state_dict"][k].float() - v.float()).abs().max().item() for k, v in theirs["state_dict"].items())
    adam_mine, adam_theirs = mine["optimizer_states"][0]["state"], theirs["optimizer_states"][0]["state"]
    adam = max((adam_mine[i][m] - adam_theirs[i][m]).abs().max().item() for i in adam_theirs for m in ("exp_avg", "exp_avg_sq"))
    val_mine = final_val(broken / "run" / "lightning_logs" / "version_1" / "metrics.csv")  # the resumed run logs as version_1
    val_theirs = final_val(plain / "run" / "lightning_logs" / "version_0" / "metrics.csv")
    assert set(val_mine) == set(val_theirs) and "val/loss" in val_mine
    scores = max(abs(val_mine[k] - v) for k, v in val_theirs.items())
    print(f"resumed vs uninterrupted, max abs difference: weights {weights:g}, AdamW moments {adam:g}, val/* {scores:g} (val/loss {val_mine['val/loss']:.6f})")
    assert weights <= 1e-6 and adam <= 1e-9
    for key, value in val_theirs.items():
        assert val_mine[key] == pytest.approx(value, abs=1e-6 if key == "val/loss" else 1e-4), key
    # its checkpoints went on in the old folder (so `checkpoint` kept its best score), not in version_1
    assert not (broken / "run" / "lightning_logs" / "version_1" / "checkpoints").exists()


def epoch_rows(loader) -> list[list[int]]:
    return [batch["index"].tolist() for batch in loader]


@pytest.mark.parametrize("by_length", [True, False])
def test_resumable_loader_skips_the_batches_already_trained_on(by_length):
    from emolightning.data.batching import Collator, TokenizedSplit

    split = TokenizedSplit([torch.ones(n, dtype=torch.int32) for n in [3, 9, 4, 8, 5, 7, 6, 2, 10, 11, 12]], torch.zeros(11, 2))

    def loader():
        sampler = LengthGroupedSampler(split.lengths, batch_size=2, seed=3, num_replicas=1, rank=0, by_length=by_length)
        return ResumableDataLoader(split, batch_size=2, sampler=sampler, collate_fn=Collator(0))

    first = loader()
    first.sampler.set_epoch(1)
    full = epoch_rows(first)
    assert len(full) == 6 and first.state_dict() == {"epoch": 1, "batches": 6, "global_batch": 2}
    interrupted = loader()
    interrupted.sampler.set_epoch(1)
    it = iter(interrupted)
    done = [next(it)["index"].tolist() for _ in range(4)]
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "batches": 4, "global_batch": 2} and done == full[:4]

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    assert epoch_rows(resumed) == full[4:]  # neither repeated nor skipped
    assert resumed.state_dict() == {"epoch": 1, "batches": 6, "global_batch": 2}
    resumed.sampler.set_epoch(2)
    assert len(epoch_rows(resumed)) == 6  # the next epoch is whole
    other_epoch = loader()
    other_epoch.load_state_dict({"epoch": 0, "batches": 6, "global_batch": 2})  # saved at the end of epoch 0
    other_epoch.sampler.set_epoch(1)
    assert epoch_rows(other_epoch) == full


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    torch.rand(5), random.random(), np.random.rand()
    path = tmp_path / "rng.pt"
    torch.save(rng_states(), path)
    expected = torch.rand(3), random.random(), np.random.rand(2)
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    set_rng_states(torch.load(path, weights_only=True))
    again = torch.rand(3), random.random(), np.random.rand(2)
    assert torch.equal(expected[0], again[0]) and expected[1] == again[1] and np.array_equal(expected[2], again[2])


def test_a_kill_during_a_save_never_leaves_half_a_checkpoint(tmp_path, monkeypatch):
    from lightning.fabric.utilities.cloud_io import _atomic_save

    old = {"step": 1, "weights": torch.arange(1000.0)}
    new = {"step": 2, "weights": torch.arange(1000.0) * 2}

    class Killed(BaseException):  # stands in for SIGKILL: nothing after it runs
        pass

    def dies_half_way(src, dst, *args, **kwargs):
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read()[:100])
        raise Killed

    # Lightning's save: fsspec writes a temporary file in /tmp, then shutil.move. When /tmp is
    # another filesystem (simulated: rename fails with EXDEV), move copies into the final name
    def cross_device(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    lightning_ckpt = tmp_path / "lightning" / "last.ckpt"
    lightning_ckpt.parent.mkdir()
    (tmp_path / "systmp").mkdir()
    torch.save(old, lightning_ckpt)
    with monkeypatch.context() as m:
        m.setattr(tempfile, "tempdir", str(tmp_path / "systmp"))  # where mkstemp puts fsspec's temporary file
        m.setattr(os, "rename", cross_device)
        m.setattr(shutil, "copyfile", dies_half_way)
        with pytest.raises(Killed):
            _atomic_save(new, lightning_ckpt)
    with pytest.raises(Exception):  # noqa: B017 - what a truncated file raises depends on where it was cut (RuntimeError, EOFError, UnpicklingError)
        torch.load(lightning_ckpt, weights_only=True)  # the final name holds a truncated file

    # AtomicCheckpointIO: the temporary file is in the checkpoint's folder, renamed when complete
    ours = tmp_path / "ours" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(old, ours)
    real_save = torch.save

    def save_dies_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(torch, "save", save_dies_half_way)
        with pytest.raises(Killed):
            AtomicCheckpointIO().save_checkpoint(new, ours)
    assert torch.load(ours, weights_only=True)["step"] == 1  # the previous checkpoint, whole
    assert sorted(p.name for p in ours.parent.iterdir()) == ["last.ckpt"]
    AtomicCheckpointIO().save_checkpoint(new, ours)
    assert torch.load(ours, weights_only=True)["step"] == 2
    assert find_last_checkpoint([str(ours.parent)]) == str(ours)


def test_ckpt_path_last_finds_the_newest_last_checkpoint_of_the_run(tmp_path):
    from jsonargparse import Namespace

    root = tmp_path / "run"
    for version, age in (("version_0", 100), ("version_1", 10), ("version_2", None)):
        folder = root / "lightning_logs" / version / "checkpoints"
        folder.mkdir(parents=True)
        if age is not None:
            (folder / "last.ckpt").write_bytes(b"x")
            os.utime(folder / "last.ckpt", (time.time() - age, time.time() - age))
    (root / "lightning_logs" / "version_0" / "checkpoints" / ".last.ckpt.host.1.tmp").write_bytes(b"half")

    def config(ckpt):
        return Namespace(
            ckpt_path=ckpt,
            trainer=Namespace(default_root_dir=str(root), logger=None),
            checkpoint=Namespace(dirpath=None),
            last_checkpoint=Namespace(dirpath=None),
        )

    fit = config("last")
    resolve_resume("fit", fit)
    newest = root / "lightning_logs" / "version_1" / "checkpoints"
    assert fit.ckpt_path == str(newest / "last.ckpt")
    assert fit.checkpoint.dirpath == fit.last_checkpoint.dirpath == str(newest)
    nothing = config("last")
    nothing.trainer.default_root_dir = str(tmp_path / "elsewhere")
    resolve_resume("fit", nothing)  # Lightning then warns and trains from scratch
    assert nothing.ckpt_path == "last" and nothing.checkpoint.dirpath is None
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_resume("test", config(str(tmp_path / "missing.ckpt")))


def test_sigterm_saves_last_ckpt_and_exits_143_and_the_resume_goes_on_from_the_next_batch(tiny_encoder, ec_dir, tmp_path, capsys):
    from emolightning.cli.main import main

    record = tmp_path / "steps"
    args = fit_args(tiny_encoder, ec_dir, tmp_path, record)
    args[args.index("--trainer.max_epochs") + 1] = "1"
    args[args.index("--data.batch_size") + 1] = "8"  # 12 batches
    args[args.index("--last_checkpoint.every_n_train_steps") + 1] = "0"  # no step-wise saves: SIGTERM's is the only one
    with pytest.raises(SystemExit) as done:
        main([*args, callback_option("SigtermAtStep", step=7)])
    assert done.value.code == 143 and "stopped by SIGTERM" in capsys.readouterr().err
    run_dir = tmp_path / "run" / "lightning_logs" / "version_0"
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 7 and saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 7, "global_batch": 8}]

    main(["fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last"])
    done_steps = steps(record)
    assert [s for s, _, _ in done_steps] == list(range(1, 13))  # steps 8-12 after the resume, none twice
    rows = [i for _, batch, _ in done_steps for i in json.loads(batch)]
    assert sorted(rows) == list(range(96))  # every training row once in the epoch


def test_ckpt_path_a_run_folder_is_its_best_checkpoint_to_evaluate_and_its_last_to_resume(tmp_path):
    from jsonargparse import Namespace

    checkpoints = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("best-3-92.ckpt", "last.ckpt"):
        (checkpoints / name).write_bytes(b"x")

    def config(subcommand, ckpt):
        config = Namespace(ckpt_path=str(ckpt), trainer=Namespace(default_root_dir=str(tmp_path / "elsewhere"), logger=None))
        if subcommand == "fit":
            config.checkpoint, config.last_checkpoint = Namespace(dirpath=None), Namespace(dirpath=None)
        return config

    for subcommand in ("validate", "test", "predict"):
        for folder in (tmp_path / "run", checkpoints.parent, checkpoints):  # the root, the version folder fit printed, its checkpoints/
            evaluate = config(subcommand, folder)
            resolve_resume(subcommand, evaluate)
            assert evaluate.ckpt_path == str(checkpoints / "best-3-92.ckpt"), (subcommand, folder)
    fit = config("fit", checkpoints.parent)
    resolve_resume("fit", fit)
    assert fit.ckpt_path == str(checkpoints / "last.ckpt") and fit.checkpoint.dirpath == str(checkpoints)

    (checkpoints / "last.ckpt").unlink()  # a completed fit removes it
    with pytest.raises(ConfigError) as caught:
        resolve_resume("fit", config("fit", checkpoints.parent))
    message = str(caught.value)
    assert f"'{checkpoints.parent}'" in message and "holds none" in message and "--ckpt_path last" in message and "\n" not in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no best checkpoint"):
        resolve_resume("test", config("test", tmp_path / "empty"))


def test_a_resume_takes_up_the_best_checkpoint_tracking_of_a_run_in_a_relative_folder(tmp_path, monkeypatch):
    """`fit --trainer.default_root_dir runs/mine` saves its checkpoint folder relative; the resume names it absolute (resolve_resume)."""
    from emolightning.training.best_checkpoint import BestCheckpoint

    monkeypatch.chdir(tmp_path)
    relative = os.path.join("runs", "mine", "lightning_logs", "version_0", "checkpoints")
    os.makedirs(relative)
    saved = BestCheckpoint(dirpath=None, monitor="val/jaccard", mode="max", filename="best-{epoch}-{step}")
    saved.dirpath = relative  # as ModelCheckpoint resolves it from the logger's relative save_dir
    old_best = os.path.join(relative, "best-0-15.ckpt")
    saved.best_k_models, saved.best_model_path, saved.kth_best_model_path = {old_best: torch.tensor(0.4)}, old_best, old_best
    saved.best_model_score = saved.kth_value = torch.tensor(0.4)
    state = saved.state_dict()

    resumed = BestCheckpoint(dirpath=str(tmp_path / relative), monitor="val/jaccard", mode="max", filename="best-{epoch}-{step}")
    resumed.load_state_dict(state)
    absolute = str(tmp_path / relative / "best-0-15.ckpt")
    # the old best is tracked, so Lightning replaces it (and keeps it when the resumed run does no better)
    assert resumed.best_k_models == {absolute: torch.tensor(0.4)} and resumed.kth_best_model_path == resumed.best_model_path == absolute
    assert resumed.best_model_score == 0.4

    elsewhere = BestCheckpoint(dirpath=str(tmp_path / "other"), monitor="val/jaccard", mode="max", filename="best-{epoch}-{step}")
    with pytest.warns(UserWarning, match="dirpath has changed"):
        elsewhere.load_state_dict(state)  # another folder: its files are not this run's to replace
    assert elsewhere.best_k_models == {}


@pytest.mark.slow  # a killed fit, its resume and a test: ~3 min on 2 shared cores
def test_a_run_resumed_after_kill_9_holds_one_best_checkpoint_that_test_finds_from_the_run_folder(tiny_encoder, ec_dir, tmp_path):
    """As a user runs it: a run folder relative to the working directory, `kill -9` after the first best checkpoint, `--ckpt_path last`."""
    run_env = {**env(), "PYTHONPATH": os.pathsep.join([str(REPO), env()["PYTHONPATH"]])}  # this checkout's emolightning, from tmp_path
    args = fit_args(tiny_encoder, ec_dir, Path("."), tmp_path / "steps")  # run/ and cache/ relative to the working directory
    killed = subprocess.run(command(*args, callback_option("KillAtStep", step=30)), cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    run = Path("run") / "lightning_logs" / "version_0"
    assert [p.name for p in (tmp_path / run / "checkpoints").glob("best-*.ckpt")] == ["best-0-24.ckpt"]  # epoch 0's, then killed in epoch 1

    resumed = subprocess.run(
        command("fit", "--config", str(run / "config.yaml"), "--ckpt_path", "last"), cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    bests = sorted(p.name for p in (tmp_path / run / "checkpoints").glob("best-*.ckpt"))
    assert len(bests) == 1, bests  # a better epoch 1 replaced epoch 0's; an equal one left it

    # the README's commands take the run folder, which stands for that one best checkpoint
    tested = subprocess.run(
        command("test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run), "--trainer.enable_progress_bar", "false"),
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "test/jaccard" in tested.stdout + tested.stderr
    scores = json.loads((tmp_path / run / "checkpoints" / "test_scores.json").read_text())
    assert scores["checkpoint"] == bests[0], scores
