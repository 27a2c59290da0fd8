"""What a fit leaves on disk: a best checkpoint without optimizer state, last.ckpt only while it runs (or when asked), nothing after fast_dev_run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from emolightning.cli.main import main
from emolightning.training.resume import checkpoint_bytes

from helpers import tiny_args


def fit(tiny_encoder: str, ec_dir: str, root: Path, *extra: str) -> None:
    main(
        [
            "fit",
            *tiny_args(tiny_encoder, ec_dir, root, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--model.init_args.lr", "1e-3", *extra),
        ]
    )


@pytest.fixture(scope="module")
def kept_run(tiny_encoder, ec_dir, tmp_path_factory) -> Path:
    """The checkpoints folder of a completed fit that keeps its last.ckpt."""
    root = tmp_path_factory.mktemp("kept")
    fit(tiny_encoder, ec_dir, root, "--last_checkpoint.keep_after_fit", "true")
    return next((root / "run" / "lightning_logs").glob("version_*")) / "checkpoints"


def test_the_best_checkpoint_holds_the_weights_without_the_optimizer_state(kept_run):
    (best,) = kept_run.glob("best-*.ckpt")
    last = kept_run / "last.ckpt"
    best_ckpt, last_ckpt = torch.load(best, weights_only=True), torch.load(last, weights_only=True)
    assert "optimizer_states" not in best_ckpt and "lr_schedulers" not in best_ckpt
    assert len(last_ckpt["optimizer_states"]) == 1 and last_ckpt["lr_schedulers"]  # a resume's state stays in last.ckpt
    # what test, predict, export and the model card read is all there
    for key in ("state_dict", "hyper_parameters", "datamodule_hyper_parameters", "epoch", "global_step"):
        assert key in best_ckpt, key
    (monitored,) = [s for k, s in best_ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert monitored["monitor"] == "val/jaccard" and monitored["best_model_score"] is not None
    assert best_ckpt["hyper_parameters"]["label_names"] and "thresholds" in best_ckpt["state_dict"]
    # AdamW keeps two moments per weight: the tensors of last.ckpt are about 3x the weights', the best one's about 1x
    weights = checkpoint_bytes(best_ckpt["state_dict"])
    assert checkpoint_bytes(best_ckpt) - weights < 16_000  # the random generators' states (ExactResume), ~10 KB whatever the model
    assert checkpoint_bytes(last_ckpt) > 2.9 * weights
    ratio = best.stat().st_size / last.stat().st_size
    print(f"best {best.stat().st_size} B, last {last.stat().st_size} B, ratio {ratio:.2f} (weights {weights} B)")
    assert 1 / 3 - 0.05 < ratio < 0.5  # file overheads (zip entries, pickled metadata) push it a bit above 1/3 for a tiny model


def test_fit_refuses_to_resume_from_a_best_checkpoint(kept_run, tmp_path, capsys):
    (best,) = kept_run.glob("best-*.ckpt")
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(kept_run.parent / "config.yaml"), "--ckpt_path", str(best), "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err
    assert f"'{best}'" in err and "--ckpt_path last" in err and "--last_checkpoint.keep_after_fit true" in err


def test_a_completed_fit_removes_last_ckpt(tiny_encoder, ec_dir, tmp_path, capsys):
    fit(tiny_encoder, ec_dir, tmp_path)
    out = capsys.readouterr().out
    folder = next((tmp_path / "run" / "lightning_logs").glob("version_*")) / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert len([n for n in names if n.startswith("best-")]) == 1 and "last.ckpt" not in names, names
    assert "last.ckpt" not in out  # the closing block names no file that is gone


def test_fast_dev_run_writes_no_checkpoint_and_no_report(tiny_encoder, ec_dir, tmp_path, capsys):
    main(["fit", *tiny_args(tiny_encoder, ec_dir, tmp_path, "--trainer.fast_dev_run", "true")])
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and "cache" not in p.parts)
    assert written == []  # no .ckpt, val_probs.npz, config.yaml, metrics or report/
    assert "nothing was saved" in capsys.readouterr().out


def test_predict_export_and_ensemble_take_the_run_folder_for_its_best_checkpoint(trained_run, ec_dir, tmp_path, capsys):
    """`--ckpt_path $RUN` (the version folder `fit` printed) and `ensemble 'RUNS*'`: no glob of best-*.ckpt for the shell to expand."""
    run, best = trained_run["config"].parent, trained_run["ckpt"]
    main(["export", "--ckpt_path", str(run), "--output", str(tmp_path / "from_folder")])
    main(["export", "--ckpt_path", str(best), "--output", str(tmp_path / "from_file")])
    assert f"Exported {best} to" in capsys.readouterr().out
    assert (tmp_path / "from_folder" / "model.safetensors").read_bytes() == (tmp_path / "from_file" / "model.safetensors").read_bytes()

    text = tmp_path / "new.txt"
    text.write_text("a happy text\nand a sad one\n")
    out = tmp_path / "pred.txt"
    # standalone (no --config): the model comes from the folder's best checkpoint
    main(["predict", "--ckpt_path", str(run), "--data.predict_file", str(text), "--output", str(out), "--trainer.default_root_dir", str(tmp_path)])
    assert len(out.read_text().splitlines()) == 3  # header and two rows

    manifest = tmp_path / "ensemble.json"
    main(["ensemble", str(run.parent / "version_*"), "--data_dir", ec_dir, "--out", str(manifest), "--device", "cpu"])
    (member,) = json.loads(manifest.read_text())["members"]
    assert Path(tmp_path, member["checkpoint"]).resolve() == best.resolve()
