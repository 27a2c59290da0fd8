"""SLURM on a CPU: the real scripts/slurm/train.sbatch with a fake `srun` (2 gloo ranks, SLURM's
variables set as srun sets them) and `scontrol`, a requeue signal mid-epoch, and the requeued job."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_cluster import free_port

from helpers import REPO, emolightning

TESTS = Path(__file__).resolve().parents[1]

FAKE_SRUN = """\
#!{python}
# srun: one task per SLURM_NTASKS, with SLURM's per-task variables; signals forwarded to the tasks
import os, signal, subprocess, sys
tasks = [subprocess.Popen(sys.argv[1:], env={{**os.environ, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r), "SLURM_NODEID": "0", "SBATCH_PID": str(os.getppid())}})
         for r in range(int(os.environ["SLURM_NTASKS"]))]
def forward(signum, frame):
    for task in tasks:
        task.send_signal(signum)
signal.signal(signal.SIGUSR1, forward)
signal.signal(signal.SIGTERM, forward)
codes = [task.wait() for task in tasks]
sys.exit(max(abs(c) for c in codes))
"""


def slurm_env(job: str, ntasks: int, restarts: int = 0) -> dict:
    return {
        "SLURM_JOB_ID": job,
        "SLURM_JOB_NAME": "emolightning",
        "SLURM_NTASKS": str(ntasks),
        "SLURM_NTASKS_PER_NODE": str(ntasks),
        "SLURM_NNODES": "1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NODELIST": "localhost",
        "SLURM_CPUS_PER_TASK": "1",
        "SLURM_RESTART_COUNT": str(restarts),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }


@pytest.fixture
def fake_slurm(tmp_path) -> tuple[Path, Path]:
    """A bin folder with srun, scontrol (logs its arguments) and an `emolightning` that runs this checkout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "scontrol.log"
    (bin_dir / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {log}\n')
    (bin_dir / "emolightning").write_text(f'#!/bin/bash\nexec {sys.executable} -m emolightning "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir, log


def sbatch(bin_dir: Path, runs: Path, env: dict, *args: str) -> subprocess.Popen:
    full = {
        **os.environ,
        **env,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "RUN_DIR": str(runs / env["SLURM_JOB_ID"]),
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
    }
    return subprocess.Popen(
        ["bash", str(REPO / "scripts/slurm/train.sbatch"), *args], cwd=REPO, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def records(path_pattern: str, rank: int) -> list[tuple[int, str, float]]:
    path = Path(path_pattern.format(rank=rank))
    return [(int(s), rows, float(loss)) for s, rows, loss in (line.split("\t") for line in path.read_text().splitlines())] if path.exists() else []


@pytest.mark.slow
def test_requeue_signal_then_requeued_job_resumes_exactly_from_its_own_last_ckpt(fake_slurm, tiny_encoder, ec_dir, tmp_path):
    bin_dir, scontrol_log = fake_slurm
    runs = tmp_path / "runs"

    def args(record: str, *extra: str) -> list[str]:
        # 96 rows, 2 ranks x batch 4: 12 optimizer steps per epoch, 2 epochs; dropout on (each rank draws its own masks)
        return [
            "configs/quickstart.yaml",
            "--model.init_args.encoder",
            tiny_encoder,
            "--model.init_args.lr",
            "5e-3",
            "--data.data_dir",
            ec_dir,
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--data.batch_size",
            "4",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "2",
            "--trainer.num_nodes",
            "1",
            "--trainer.precision",
            "32-true",
            "--trainer.max_epochs",
            "2",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--last_checkpoint.every_n_train_steps",
            "0",  # the signal's save is the only one mid-epoch
            "--trainer.callbacks+=" + json.dumps({"class_path": "fault_injection.RecordSteps", "init_args": {"path": record}}),
            *extra,
        ]

    def finish(proc: subprocess.Popen) -> str:
        out = proc.communicate(timeout=600)[0]
        return out

    # the uninterrupted job first: its last.ckpt is the newest in runs/ when job 2002 is requeued
    plain = str(tmp_path / "plain.{rank}")
    proc = sbatch(bin_dir, runs, slurm_env("1001", 2), *args(plain, "--last_checkpoint.keep_after_fit", "true"))
    out = finish(proc)
    assert proc.returncode == 0, out[-4000:]

    broken = str(tmp_path / "broken.{rank}")
    signal_at = json.dumps({"class_path": "fault_injection.SignalBatchScriptAtStep", "init_args": {"step": 5}})
    proc = sbatch(bin_dir, runs, slurm_env("2002", 2), *args(broken, "--trainer.callbacks+=" + signal_at))
    out = finish(proc)
    assert proc.returncode == 143, out[-4000:]
    assert "time limit near" in out and "stopped by SIGUSR1" in out and "requeueing job 2002" in out
    assert scontrol_log.read_text().splitlines() == ["requeue 2002"]
    stopped_at = [s for s, _, _ in records(broken, 0)][-1]
    assert stopped_at >= 5 and [s for s, _, _ in records(broken, 1)][-1] == stopped_at  # both ranks stopped at the same step

    # the requeued job: same id, SLURM_RESTART_COUNT 1; the script passes --ckpt_path last
    proc = sbatch(bin_dir, runs, slurm_env("2002", 2, restarts=1), *args(broken))
    out = finish(proc)
    assert proc.returncode == 0, out[-4000:]
    own = runs / "2002" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert f"--ckpt_path last: resuming from {own}" in out and "1001" not in out.split("resuming from")[1].splitlines()[0]
    for rank in (0, 1):
        uninterrupted, interrupted = records(plain, rank), records(broken, rank)
        assert len(uninterrupted) == 24
        # every step once, the same rows, the same losses (each rank's own dropout masks), on both ranks
        assert [(s, rows) for s, rows, _ in interrupted] == [(s, rows) for s, rows, _ in uninterrupted]
        assert max(abs(a[2] - b[2]) for a, b in zip(interrupted, uninterrupted)) <= 1e-6, rank


@pytest.mark.slow
def test_a_new_slurm_job_refuses_another_jobs_hpc_checkpoint(trained_run, tmp_path):
    root = tmp_path / "shared"
    root.mkdir()
    shutil.copy(trained_run["last"], root / "hpc_ckpt_1.ckpt")  # left by an old job with Lightning's auto-requeue: a full checkpoint
    env = {**slurm_env("3003", 1), "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    common = ["fit", "--config", str(trained_run["config"]), "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "1", "--trainer.logger", "false"]
    proc = emolightning(*common, env=env, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Restored all states" not in proc.stderr + proc.stdout
    assert f"trainer.default_root_dir '{root}' holds hpc_ckpt_1.ckpt from an earlier SLURM job" in proc.stderr and "Traceback" not in proc.stderr
    # a requeued job may resume it (Lightning's own requeue path), and so may a deliberate --ckpt_path hpc
    requeued = emolightning(*common, env={**env, "SLURM_RESTART_COUNT": "1"}, check=False)
    assert requeued.returncode == 0 and f"Restored all states from the checkpoint at {root / 'hpc_ckpt_1.ckpt'}" in requeued.stderr + requeued.stdout
