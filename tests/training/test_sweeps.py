"""W&B sweeps and offline W&B runs through the real `emolightning` command.

Each sweep in sweeps/ is run the way `wandb agent` runs it: its `command` expanded by wandb's own
builders (`create_sweep_command` for ${envvar:...}, `create_sweep_command_args` for ${args}), the
agent's environment (WANDB_SWEEP_ID, WANDB_RUN_ID, WANDB_SWEEP_PARAM_PATH), and values sampled here
from each parameter's distribution. Only a tiny model and fixture data are appended, in offline mode.
"""

from __future__ import annotations

import copy
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import LABELS, make_rows
from helpers import REPO, emolightning, tiny_options
from wandb_files import offline_runs, read_offline_run

SWEEPS = sorted(p.name for p in (REPO / "sweeps").glob("*.yaml"))
DISTRIBUTIONS = {"uniform", "log_uniform_values", "int_uniform", "q_uniform", "q_log_uniform_values", "categorical", "constant"}
SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false"]


def load_sweep(name: str) -> dict:
    return yaml.safe_load((REPO / "sweeps" / name).read_text())


def sample(spec: dict, rng: random.Random):
    """One value of a W&B sweep parameter, drawn from its distribution (seeded)."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    lo, hi = spec["min"], spec["max"]
    assert lo < hi, spec
    dist = spec.get("distribution", "int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform")
    if dist == "uniform":
        return rng.uniform(lo, hi)
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist == "q_uniform":
        q = spec.get("q", 1)
        return round(rng.uniform(lo, hi) / q) * q
    if dist == "q_log_uniform_values":
        q = spec.get("q", 1)
        return round(math.exp(rng.uniform(math.log(lo), math.log(hi))) / q) * q
    raise AssertionError(f"distribution {dist!r} is not handled here: {spec}")


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The argv `wandb agent` runs for one sweep run (as in wandb/wandb_agent.py Agent._command_run)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    run = {"args": {key: {"value": value} for key, value in values.items()}, "program": sweep.get("program")}
    command = sweep_utils.create_sweep_command(copy.deepcopy(sweep.get("command")))
    sweep_vars = sweep_utils.create_sweep_command_args(run)
    # the agent: interpreter ["python"] through /usr/bin/env; here the interpreter running the tests
    sweep_vars.update(interpreter=[sys.executable], program=[run["program"]], env=["/usr/bin/env"])
    argv = []
    for chunk in map(str, command):
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += sweep_vars.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


def run_agent_command(sweep: dict, values: dict, extra: list[str], workdir: Path) -> tuple[list[str], subprocess.CompletedProcess]:
    from wandb.sdk.lib import config_util

    param_path = workdir / "sweep-params.yaml"
    config_util.save_config_file_from_dict(str(param_path), {k: {"value": v} for k, v in values.items()})
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "WANDB_SWEEP_ID": "testsweep",
        "WANDB_RUN_ID": "sweeprun",
        "WANDB_SWEEP_PARAM_PATH": str(param_path),
    }
    argv = agent_command(sweep, values) + extra
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    return argv, proc


def sampled_values(name: str, sweep: dict) -> dict:
    rng = random.Random(name)
    return {key: sample(spec, rng) for key, spec in sweep["parameters"].items()}


@pytest.fixture(scope="module")
def tiny_teacher(tiny_encoder, tmp_path_factory) -> str:
    """An emolightning checkpoint of a tiny (untrained) classifier, as `fit` writes one."""
    import lightning
    import torch

    from emolightning import EmotionClassifier

    model = EmotionClassifier(tiny_encoder, LABELS, lr=1e-3)
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "pytorch-lightning_version": lightning.__version__}, path)
    return str(path)


def tiny_overrides(name: str, tiny_encoder: str, ec_dir: str, root: Path, request, monkeypatch) -> list[str]:
    common = [*tiny_options(tiny_encoder, ec_dir, root), "--data.max_length", "64", *SHORT]
    if name == "temperature.yaml":
        # the sweep reads the teacher from the agent's environment: ${envvar:EMOLIGHTNING_TEACHER}
        monkeypatch.setenv("EMOLIGHTNING_TEACHER", request.getfixturevalue("tiny_teacher"))
        return common + ["--model.init_args.student_layers", "[0, 1]"]
    if name == "lr.yaml":
        return common
    raise AssertionError(f"sweeps/{name} has no tiny overrides in this test: add them")


# ---- the sweep files ---------------------------------------------------------------------
@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_file_is_complete(name):
    sweep = load_sweep(name)
    assert sweep["method"] in ("bayes", "random", "grid")
    assert sweep["metric"] == {"name": "val/jaccard", "goal": "maximize"}
    assert sweep["early_terminate"]["type"] == "hyperband" and sweep["early_terminate"]["min_iter"] >= 1
    assert sweep["project"] == "emolightning"  # the project of configs/logger/wandb.yaml: the runs must join the sweep's
    command = sweep["command"]
    assert "${args}" in command and "configs/logger/wandb.yaml" in command
    for key, spec in sweep["parameters"].items():
        assert key.startswith(("model.", "data.", "trainer.")), key
        assert spec.get("distribution", "uniform") in DISTRIBUTIONS, spec
    # the agent's ${args}: --key=value, one per parameter, after every --config
    argv = agent_command(sweep, sampled_values(name, sweep))
    flags = [a for a in argv if a.startswith("--") and "=" in a and not a.startswith("--model.init_args.teacher=")]
    assert [f.split("=")[0][2:] for f in flags] == list(sweep["parameters"])
    assert argv.index(flags[0]) > max(i for i, a in enumerate(argv) if a == "--config")


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_parameters_are_cli_keys(name, capsys, monkeypatch):
    """Parsing only (in-process): every sampled `--key=value` is accepted and lands in the config."""
    from emolightning.cli.main import run_cli

    monkeypatch.chdir(REPO)  # the sweep's config paths are relative to the repository, like the agent's cwd
    sweep = load_sweep(name)
    values = sampled_values(name, sweep)
    argv = agent_command(sweep, values)
    fit = argv[argv.index("fit") :]
    with pytest.raises(SystemExit) as done:
        run_cli([*fit, "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    for key, value in values.items():
        node = printed
        for part in key.split("."):
            node = node[part]
        assert node == pytest.approx(value), key


# ---- the sweep commands, run --------------------------------------------------------------
def check_sweep_run(name: str, values: dict, argv: list[str], proc: subprocess.CompletedProcess, root: Path) -> None:
    assert proc.returncode == 0, f"{' '.join(argv)}\nexited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    (run_dir,) = offline_runs(root / "run")
    run = read_offline_run(run_dir)
    metric = load_sweep(name)["metric"]["name"]
    assert any(metric in row for row in run.history), f"the sweep's metric {metric} was never logged"
    for key, value in values.items():
        # what the agent handed W&B (flat key) and what the CLI parsed (the logged config) agree
        assert run.run_config[key] == pytest.approx(value)
        node = run.config
        for part in key.split("."):
            node = node[part]
        assert node == pytest.approx(value), key


@pytest.mark.slow  # several processes or a full fit: CI runs the slow set too
@pytest.mark.parametrize("name", SWEEPS)  # every sweep file, in CI: ~20 s each on 2 cores
def test_sweep_command_runs(name, tiny_encoder, ec_dir, tmp_path, request, monkeypatch):
    sweep = load_sweep(name)
    values = sampled_values(name, sweep)
    extra = tiny_overrides(name, tiny_encoder, ec_dir, tmp_path, request, monkeypatch)
    argv, proc = run_agent_command(sweep, values, extra, tmp_path)
    check_sweep_run(name, values, argv, proc, tmp_path)


def test_a_wrong_parameter_name_is_refused_by_the_parser(capsys, monkeypatch):
    from emolightning.cli.main import run_cli

    monkeypatch.chdir(REPO)
    sweep = load_sweep("lr.yaml")
    argv = agent_command(sweep, {"model.init_args.learning_rate": 1e-4})
    with pytest.raises(SystemExit) as done:
        run_cli([*argv[argv.index("fit") :], "--print_config"])
    assert done.value.code == 2
    assert "learning_rate" in capsys.readouterr().err


def test_a_wrong_parameter_name_fails_the_sweep_run(tiny_encoder, ec_dir, tmp_path, request, monkeypatch):
    sweep = load_sweep("lr.yaml")
    (spec,) = sweep["parameters"].values()
    sweep["parameters"] = {"model.init_args.learning_rate": spec}
    values = sampled_values("lr.yaml", sweep)
    argv, proc = run_agent_command(sweep, values, tiny_overrides("lr.yaml", tiny_encoder, ec_dir, tmp_path, request, monkeypatch), tmp_path)
    assert proc.returncode != 0
    assert "learning_rate" in proc.stderr
    assert not offline_runs(tmp_path / "run")


# ---- configs/logger/wandb.yaml, offline --------------------------------------------------
def wandb_args(tiny_encoder: str, ec_dir: str, root: Path, *extra: str) -> list[str]:
    """A short tiny fit with configs/logger/wandb.yaml."""
    return ["--config", "configs/quickstart.yaml", "--config", "configs/logger/wandb.yaml", *tiny_options(tiny_encoder, ec_dir, root), *SHORT, *extra]


def wandb_fit(tiny_encoder: str, ec_dir: str, root: Path, *extra: str, env: dict | None = None, check: bool = True):
    return emolightning("fit", *wandb_args(tiny_encoder, ec_dir, root, *extra), env=env, check=check)


def without_wandb_login(home: Path) -> dict:
    """The environment of a machine where nobody ran `wandb login`: online mode, no key anywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "HOME": str(home), "WANDB_CONFIG_DIR": str(home / "wandb-config"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_offline_wandb_run_holds_config_metrics_and_label_table(tiny_encoder, ec_dir, tmp_path):
    import json

    wandb_fit(tiny_encoder, ec_dir, tmp_path, "--model.init_args.lr", "0.00123")
    (first,) = offline_runs(tmp_path / "run")
    run = read_offline_run(first)
    run_id = first.name.rsplit("-", 1)[-1]

    # the full resolved CLI config, nested as in config.yaml, in the run's config
    assert run.config["model"]["init_args"]["lr"] == pytest.approx(0.00123)
    assert run.config["model"]["init_args"]["encoder"] == tiny_encoder
    assert run.config["trainer"]["logger"]["init_args"]["save_dir"] == str(tmp_path / "run")  # filled in from default_root_dir
    assert run.config["checkpoint"]["monitor"] == "val/jaccard"
    assert yaml.safe_load((run.files / "lightning_config.yaml").read_text())["model"]["init_args"]["lr"] == pytest.approx(0.00123)
    # metrics: one validation epoch
    (val,) = [row for row in run.history if "val/jaccard" in row]
    assert 0.0 <= val["val/jaccard"] <= 1.0 and "val/f1/anger" in val
    # the per-label table: thresholds, F1 equal to the logged val/f1/<label>, gold positives of the dev split
    (table_file,) = (run.files / "media" / "table" / "val").glob("labels_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["label", "threshold", "f1", "positives"]
    dev_positives = [sum(gold[i] for _, _, gold in make_rows(41, 1, "dev")) for i in range(len(LABELS))]
    assert [row[0] for row in table["data"]] == LABELS
    assert [row[3] for row in table["data"]] == dev_positives
    for label, threshold, f1, _ in table["data"]:
        assert 0.05 <= threshold <= 0.95
        assert f1 == pytest.approx(val[f"val/f1/{label}"])
    # config.yaml and checkpoints: per run, not in the shared save_dir; no CSV logs
    run_home = tmp_path / "run" / "emolightning" / run_id
    assert list((run_home / "checkpoints").glob("best-*.ckpt"))
    assert yaml.safe_load((run_home / "config.yaml").read_text())["model"]["init_args"]["lr"] == pytest.approx(0.00123)
    assert not (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "run" / "lightning_logs").exists()


@pytest.mark.slow
def test_runs_into_the_same_dirs_do_not_collide(tiny_encoder, ec_dir, tmp_path):
    """Sweep runs share trainer.default_root_dir; a rerun of one W&B run id shares its config dir too."""
    for lr in ("0.00123", "0.00234"):
        wandb_fit(tiny_encoder, ec_dir, tmp_path, "--model.init_args.lr", lr)
    runs = offline_runs(tmp_path / "run")
    assert len(runs) == 2
    configs = {run.name.rsplit("-", 1)[-1]: tmp_path / "run" / "emolightning" / run.name.rsplit("-", 1)[-1] / "config.yaml" for run in runs}
    assert sorted(yaml.safe_load(c.read_text())["model"]["init_args"]["lr"] for c in configs.values()) == [0.00123, 0.00234]
    # the same run id again: its config.yaml exists and is overwritten (save_config_kwargs overwrite=True), not an error
    run_id, config = next(iter(configs.items()))
    wandb_fit(tiny_encoder, ec_dir, tmp_path, "--model.init_args.lr", "0.00456", "--trainer.logger.init_args.id", run_id)
    assert len(offline_runs(tmp_path / "run")) == 3
    assert yaml.safe_load(config.read_text())["model"]["init_args"]["lr"] == pytest.approx(0.00456)


@pytest.mark.slow
def test_without_a_wandb_login_the_error_names_the_fixes(tiny_encoder, ec_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "emolightning", "fit", *wandb_args(tiny_encoder, ec_dir, tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=without_wandb_login(tmp_path),
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "wandb login" in proc.stderr and "WANDB_MODE=offline" in proc.stderr


@pytest.mark.slow
def test_wandb_disabled_still_trains(tiny_encoder, ec_dir, tmp_path):
    wandb_fit(tiny_encoder, ec_dir, tmp_path, env={"WANDB_MODE": "disabled"})
    assert list((tmp_path / "run" / "emolightning").glob("*/checkpoints/best-*.ckpt"))
    assert not offline_runs(tmp_path / "run")


@pytest.mark.slow
def test_ddp_makes_one_wandb_run(tiny_encoder, ec_dir, tmp_path):
    """2 CPU processes (gloo): WandbLogger starts its run on global rank 0 only."""
    proc = wandb_fit(
        tiny_encoder, ec_dir, tmp_path, "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2", "--data.batch_size", "4"
    )
    assert "GLOBAL_RANK: 1" in proc.stdout + proc.stderr
    (run_dir,) = offline_runs(tmp_path / "run")
    assert len(list((tmp_path / "run" / "emolightning").iterdir())) == 1
    run = read_offline_run(run_dir)
    assert any("val/jaccard" in row for row in run.history) and str(run.config["trainer"]["devices"]) == "2"
    assert list((run.files / "media" / "table" / "val").glob("labels_*.table.json"))
