"""`emolightning report` and what runs record for it (record.py), on two tiny runs made through the real CLI."""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from emolightning.cli.main import main as cli_main
from emolightning.training.record import RunClock, is_new_best, load_val_probs
from emolightning.training.tracking import pr_curve_rows

from conftest import LABELS
from helpers import REPO, tiny_args

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ["val_curves.png", "train_loss.png", "label_f1.png", "thresholds.png", "quality_vs_time.png"]


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "emolightning", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-5000:]
    return out


@pytest.fixture(scope="module")
def two_runs(tiny_encoder, ec_dir, tmp_path_factory) -> dict:
    """Run A: 3 epochs, then tested; run B: the first encoder layer only, 2 epochs. Both fits at once (2 cores)."""
    root = tmp_path_factory.mktemp("report")
    common = ("--trainer.log_every_n_steps", "1", "--model.init_args.lr", "3e-3")
    fit_a = start("fit", *tiny_args(tiny_encoder, ec_dir, root / "A", "--trainer.max_epochs", "3", *common))
    fit_b = start("fit", *tiny_args(tiny_encoder, ec_dir, root / "B", "--trainer.max_epochs", "2", "--model.init_args.encoder_layers", "[0]", *common))
    out_a = finish(fit_a)
    run_a = root / "A" / "run" / "lightning_logs" / "version_0"
    (best,) = (run_a / "checkpoints").glob("best-*.ckpt")
    tested = start("test", "--config", str(run_a / "config.yaml"), "--ckpt_path", str(best), "--trainer.enable_progress_bar", "false")
    out_b = finish(fit_b)
    out_test = finish(tested)
    return {"A": run_a, "B": root / "B" / "run" / "lightning_logs" / "version_0", "out": {"A": out_a, "B": out_b, "test": out_test}, "root": root}


def metrics(path: Path) -> list[dict]:
    """metrics.csv read here on its own (not with report.read_metrics), numbers only."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def report_csv(path: Path) -> dict:
    with open(path, newline="") as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def tiny_bert_parameters(tiny_encoder: str, layers: list[int] | None) -> int:
    """The tiny BERT's parameters without its pooler (and without the layers left out), plus the 32 -> 11 head."""
    from transformers import BertModel

    encoder = BertModel.from_pretrained(tiny_encoder)
    kept = [(n, p) for n, p in encoder.named_parameters() if not n.startswith("pooler.")]
    if layers is not None:
        kept = [(n, p) for n, p in kept if not n.startswith("encoder.layer.") or int(n.split(".")[2]) in layers]
    return sum(p.numel() for _, p in kept) + 32 * 11 + 11


def test_report_of_two_runs_matches_their_metrics_and_draws_every_figure(two_runs, tiny_encoder, tmp_path, capsys):
    # fit wrote its own single-run report and named it
    for name in ("A", "B"):
        assert (two_runs[name] / "report" / "report.html").is_file()
        assert f"report: {two_runs[name] / 'report' / 'report.html'}" in two_runs["out"][name]

    out = tmp_path / "out"
    cli_main(["report", str(two_runs["A"].parents[1]), str(two_runs["B"]), "--output", str(out)])  # a root folder and a version folder
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    sidecar = json.loads((out / "report.json").read_text())
    labels = [r["label"] for r in sidecar["runs"]]
    assert labels == ["A/run", "B/run"], labels  # the A root's `test` run (version_1) is not a run of its own
    table = report_csv(out / "report.csv")

    for label, name, epochs, layers in ((labels[0], "A", 3, None), (labels[1], "B", 2, [0])):
        row, rows = table[label], metrics(two_runs[name] / "metrics.csv")
        val = [r for r in rows if "val/jaccard" in r]
        best = max(val, key=lambda r: r["val/jaccard"])  # max() keeps the first of equal values, as ModelCheckpoint does
        assert int(row["best_epoch"]) == int(best["epoch"]) and int(row["epochs"]) == epochs == len(val)
        for key in ("jaccard", "f1_micro", "f1_macro"):
            assert float(row[f"val_{key}"]) == best[f"val/{key}"]
            assert float(row[f"val_tuned_{key}"]) == best[f"val/tuned/{key}"]
        times = [r["train/epoch_time_s"] for r in rows if "train/epoch_time_s" in r]
        speeds = [r["train/samples_per_sec"] for r in rows if "train/samples_per_sec" in r]
        assert len(times) == epochs and float(row["train_time_s"]) == pytest.approx(sum(times))
        assert float(row["samples_per_sec"]) == pytest.approx(sum(speeds) / epochs)
        # 96 training examples per epoch, trained in less than the epoch's time (which includes validation)
        assert all(s > 96 / t for s, t in zip(speeds, times))
        assert int(row["params"]) == tiny_bert_parameters(tiny_encoder, layers)
        assert row["model"] == Path(tiny_encoder).name + ("" if layers is None else " (layers 0)")

        # val_probs.npz belongs to the best epoch: its scores are that row's, its thresholds the best checkpoint's
        vp = load_val_probs(str(two_runs[name] / "checkpoints" / "val_probs.npz"))
        (ckpt,) = (two_runs[name] / "checkpoints").glob("best-*.ckpt")
        assert vp["epoch"] == int(best["epoch"]) and ckpt.name.startswith(f"best-{vp['epoch']}-{vp['step']}")
        assert torch.equal(torch.from_numpy(vp["thresholds"]), torch.load(ckpt, weights_only=True)["state_dict"]["thresholds"])
        assert vp["label_names"] == LABELS and vp["probs"].shape == vp["target"].shape == (41, 11)
        from emolightning.metrics import official_scores

        tuned = official_scores(torch.from_numpy(vp["probs"] >= vp["thresholds"]), torch.from_numpy(vp["target"]), LABELS)
        assert tuned["jaccard"] == pytest.approx(best["val/tuned/jaccard"], abs=1e-6)

    # A was tested (`test` of its best checkpoint, which opens no log folder: its scores go beside the checkpoint); B was not: "–"
    assert not (two_runs["A"].parent / "version_1").exists()
    tested = json.loads((two_runs["A"] / "checkpoints" / "test_scores.json").read_text())
    assert tested["checkpoint"].startswith("best-")
    for key in ("jaccard", "f1_micro", "f1_macro"):
        assert float(table[labels[0]][f"test_tuned_{key}"]) == tested["scores"][f"test/tuned/{key}"]
        printed_row = next(line for line in two_runs["out"]["test"].splitlines() if f"test/tuned/{key} " in line)
        assert float(printed_row.split("│")[2]) == pytest.approx(tested["scores"][f"test/tuned/{key}"], abs=1e-6)  # what `test` printed
        assert table[labels[1]][f"test_tuned_{key}"] == ""
    markdown = (out / "report.md").read_text().splitlines()
    row_b = next(line for line in markdown if line.startswith(f"| {labels[1]} "))
    assert row_b.rstrip(" |").endswith("– | – | –")

    # every figure: a PNG that decodes, not blank, with both runs in its legend
    import matplotlib.image

    assert [f["file"] for f in sidecar["figures"]] == FIGURES
    html = (out / "report.html").read_text()
    for figure in sidecar["figures"]:
        data = (out / figure["file"]).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000
        pixels = matplotlib.image.imread(out / figure["file"])
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200 and pixels.std() > 0.01
        assert figure["legend"] == labels and figure["left_out"] == {}, figure
        assert "data:image/png;base64," + base64.b64encode(data).decode()[:100] in html
    assert html.count("data:image/png;base64,") == len(FIGURES) and 'src="http' not in html and labels[1] in html


def test_report_errors_are_one_paragraph(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as done:
        cli_main(["report", str(tmp_path / "nope"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith("emolightning: error: The run directory") and str(tmp_path / "nope") in err and "Traceback" not in err
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(SystemExit) as done:
        cli_main(["report", str(tmp_path / "empty"), "--output", str(tmp_path / "out")])
    assert done.value.code == 2 and "holds no run of `emolightning fit`" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as done:
        cli_main(["report", str(tmp_path / "empty"), "--output", str(tmp_path / "out")])
    assert done.value.code == 2 and "pip install 'emolightning[report]'" in capsys.readouterr().err


def test_run_clock_numbers(monkeypatch):
    clock = iter([5.0, 10.0, 14.0, 16.0, 19.0])  # train start, epoch start, validation start/end, epoch end
    monkeypatch.setattr("emolightning.training.record.time.perf_counter", lambda: next(clock))
    logged = {}
    module = SimpleNamespace(log=lambda key, value, **kw: logged.update({key: value, f"{key} reduce": kw["reduce_fx"], "sync": kw["sync_dist"]}))
    trainer = SimpleNamespace(world_size=2)
    cb = RunClock()
    cb.on_train_start(trainer, module)
    cb.on_train_epoch_start(trainer, module)
    for n in (16, 16, 4):
        cb.on_train_batch_end(trainer, module, None, {"input_ids": torch.zeros(n, 3), "labels": torch.zeros(n, 11)}, 0)
    cb.on_validation_start(trainer, module)
    cb.on_validation_end(trainer, module)
    cb.on_train_epoch_end(trainer, module)
    # epoch 19 - 10 = 9 s, of which 16 - 14 = 2 s validation; 36 examples per rank x 2 ranks in 7 s; 19 - 5 = 14 s since the start
    assert logged["train/epoch_time_s"] == 9.0 and logged["train/samples_per_sec"] == pytest.approx(72 / 7) and logged["train/elapsed_s"] == 14.0
    # synced over ranks: the slowest one's times and throughput
    assert (
        logged["sync"] and logged["train/epoch_time_s reduce"] == logged["train/elapsed_s reduce"] == "max" and logged["train/samples_per_sec reduce"] == "min"
    )


def test_new_best_is_strict_like_model_checkpoint():
    assert is_new_best(0.3, None, "max") and is_new_best(0.31, 0.3, "max") and not is_new_best(0.3, 0.3, "max")
    assert is_new_best(0.2, 0.3, "min") and not is_new_best(0.4, 0.3, "min") and not is_new_best(float("nan"), None, "max")


def test_pr_curve_rows_by_hand():
    # sorted by probability the gold is 1, 0, 1, 0: precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1;
    # the best precision at recall >= r is 1 for r in {0, 1/2} and 2/3 for r = 1
    probs, target = np.array([[0.9], [0.8], [0.3], [0.1]]), np.array([[1], [0], [1], [0]])
    assert pr_curve_rows(probs, target, ["joy"], points=3) == [["joy", 1.0, 0.0], ["joy", 1.0, 0.5], ["joy", 0.6667, 1.0]]
    assert pr_curve_rows(probs, np.zeros_like(target), ["joy"]) == []  # no positives: no curve


def test_the_report_goes_to_a_wandb_run(two_runs, tmp_path):
    """A W&B run's folder (<save_dir>/<project>/<id>: config.yaml and checkpoints, no metrics.csv): the table from
    val_probs.npz, and the figures, the per-label F1 bar chart and the PR curves in the (offline) W&B run."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import WandbLogger

    from emolightning.reporting.report import report_after_fit

    from wandb_files import offline_runs, read_offline_run

    run_dir = tmp_path / "emolightning" / "abc123"
    shutil.copytree(two_runs["A"], run_dir, ignore=shutil.ignore_patterns("report", "metrics.csv", "hparams.yaml", "last.ckpt"))
    logger = WandbLogger(project="emolightning", save_dir=str(tmp_path), offline=True)
    trainer = SimpleNamespace(
        checkpoint_callbacks=[ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), monitor="val/jaccard")], default_root_dir=str(tmp_path), loggers=[logger]
    )
    try:
        report_after_fit(trainer)
        logger.experiment.finish()
    finally:
        # W&B started its service in this (pytest) process and exported WANDB_SERVICE: later subprocess
        # tests would join that service, where two runs of one ID (test_sweeps' "sweeprun") collide
        import wandb

        wandb.teardown()
        os.environ.pop("WANDB_SERVICE", None)
    row = report_csv(run_dir / "report" / "report.csv")["abc123"]
    best = max((r for r in metrics(two_runs["A"] / "metrics.csv") if "val/jaccard" in r), key=lambda r: r["val/jaccard"])
    assert float(row["val_tuned_jaccard"]) == pytest.approx(best["val/tuned/jaccard"], abs=1e-6) and int(row["best_epoch"]) == int(best["epoch"])

    (run,) = offline_runs(tmp_path)
    for _ in range(60):  # the W&B service may still be writing the run file
        record = read_offline_run(run)
        if record.history:
            break
        time.sleep(0.5)
    (logged,) = record.history
    assert {"report/thresholds._type", "report/label_f1._type", "val/label_f1_table._type", "val/pr_curves_table._type"} <= set(logged)
    charts = {k.rsplit(".", 1)[-1]: json.loads(v) if isinstance(v, str) else v for k, v in record.config.items() if k.startswith("_wandb.visualize.")}
    assert charts["val/label_f1"]["panel_config"]["panelDefId"] == "wandb/bar/v0"
    assert charts["val/pr_curves"]["panel_config"]["panelDefId"] == "wandb/area-under-curve/v0"
    (table,) = (run / "files" / "media" / "table" / "val").glob("pr_curves_table_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"] == ["class", "precision", "recall"] and {r[0] for r in data["data"]} <= set(LABELS)


def test_best_validation_outputs_written_once_per_new_best_in_fit_only(tiny_encoder, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from emolightning.models.classifier import EmotionClassifier
    from emolightning.outputs import EpochOutputs
    from emolightning.training.record import BestValidationOutputs

    model = EmotionClassifier(tiny_encoder, ["joy", "fear"], lr=1e-3)
    model.thresholds.copy_(torch.tensor([0.3, 0.6]))
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path), monitor="val/jaccard", mode="max")

    def validation_end(epoch: int, jaccard: float, best: float | None, fn: str = "fit", fast_dev_run: bool = False) -> None:
        # what the module hands over at the end of its validation epoch (outputs.Classifier)
        model.val_outputs = EpochOutputs("val", torch.full((3, 2), epoch / 10), torch.eye(3, 2), model.thresholds.clone(), model.label_names)
        checkpoint.best_model_score = None if best is None else torch.tensor(best)
        trainer = SimpleNamespace(
            sanity_checking=False,
            fast_dev_run=fast_dev_run,
            is_global_zero=True,
            state=SimpleNamespace(fn=fn),
            checkpoint_callbacks=[checkpoint],
            callback_metrics={"val/jaccard": torch.tensor(jaccard)},
            current_epoch=epoch,
            global_step=10 * epoch,
        )
        BestValidationOutputs().on_validation_end(trainer, model)

    npz = tmp_path / "val_probs.npz"
    validation_end(0, 0.4, None, fn="validate")  # `validate`: no best epoch, nothing written
    assert not npz.exists()
    validation_end(0, 0.4, None, fast_dev_run=True)  # a fast_dev_run keeps no checkpoint: nothing beside it
    assert not npz.exists()
    validation_end(0, 0.4, None)
    validation_end(1, 0.5, 0.4)  # better: rewritten
    validation_end(2, 0.5, 0.5)  # equal, as ModelCheckpoint counts it: not a new best
    saved = load_val_probs(str(npz))
    assert saved["epoch"] == 1 and saved["step"] == 10 and saved["label_names"] == ["joy", "fear"]
    assert np.allclose(saved["probs"], 0.1) and saved["target"].tolist() == [[1, 0], [0, 1], [0, 0]]
    assert np.allclose(saved["thresholds"], [0.3, 0.6])
    assert list(tmp_path.iterdir()) == [npz]  # no temporary file left


def test_validate_and_test_runs_are_not_reported_as_runs(two_runs, tmp_path):
    from emolightning.reporting.report import find_runs

    root = tmp_path / "root" / "lightning_logs"
    shutil.copytree(two_runs["A"], root / "version_0", ignore=shutil.ignore_patterns("report"))
    (root / "version_1").mkdir()  # a `test` run with a logger: config.yaml naming the checkpoint, test/* metrics
    (root / "version_1" / "config.yaml").write_text(f"ckpt_path: {next((root / 'version_0' / 'checkpoints').glob('best-*.ckpt'))}\n")
    (root / "version_1" / "metrics.csv").write_text("epoch,step,test/tuned/jaccard,test/tuned/f1_micro,test/tuned/f1_macro\n0,0,0.25,0.5,0.125\n")
    (root / "version_2").mkdir()
    (root / "version_2" / "metrics.csv").write_text("epoch,step,val/jaccard,val/loss\n0,0,0.5,0.6\n")  # a `validate` run
    assert find_runs(str(tmp_path / "root")) == [root / "version_0"]
