"""Bad input and numerical faults: one paragraph naming the file/line/option, exit code 2, no traceback.

Most cases call `emolightning.cli.main.main` in-process (an import costs ~8 s per subprocess); two go
through the real command in subprocesses, to check the exit code and that no traceback escapes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emolightning.cli.main import main

from conftest import LABELS, make_rows, write_official
from helpers import REPO, callback_option, tiny_args

HEADER = "ID\tTweet\tjoy\tsadness\n"


def run_main(args: list[str], capsys) -> tuple[int, str]:
    """`emolightning ARGS` in-process: (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(args)
    return done.value.code, capsys.readouterr().err


def data_dir(tmp_path: Path, name: str, train: bytes | str, dev: bool = True) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "2018-E-c-En-train.txt").write_bytes(train.encode() if isinstance(train, str) else train)
    if dev:
        (folder / "2018-E-c-En-dev.txt").write_text(HEADER + "d1\tso happy\t1\t0\nd2\tso sad\t0\t1\n")
    return str(folder)


BAD_DATA = {
    # name: (train file, dev file present, words the message must hold)
    "missing_split": (HEADER + "1\tso happy\t1\t0\n", False, ["No validation split", "data.val_file", "2018-E-c-En-dev.txt"]),
    "wrong_header": ("ID\tWords\tjoy\tsadness\n1\tso happy\t1\t0\n", True, ["2018-E-c-En-train.txt, line 1", "no text column 'Tweet'", "data.text_column"]),
    "column_count": (HEADER + "1\tso happy\t1\t0\n2\tso\tsad\t0\t1\n", True, ["2018-E-c-En-train.txt, line 3", "5 fields where the header has 4"]),
    "label_not_01": (HEADER + "1\tso happy\t1\t0\n2\tso sad\t0\t2\n", True, ["2018-E-c-En-train.txt, line 3", "'sadness' holds '2'", "0 or 1"]),
    "duplicate_id": (HEADER + "1\tso happy\t1\t0\n1\tso sad\t0\t1\n", True, ["2018-E-c-En-train.txt, line 3", "ID '1' already appears on line 2"]),
    "empty_text": (HEADER + "1\tso happy\t1\t0\n2\t \t0\t1\n", True, ["2018-E-c-En-train.txt, line 3", "the text is empty"]),
    "not_utf8": ((HEADER + "1\tso happy\t1\t0\n").encode() + b"2\tcaf\xe9 time\t0\t1\n", True, ["2018-E-c-En-train.txt, line 3", "not UTF-8", "iconv"]),
}


def test_bad_data_in_process(tiny_encoder, tmp_path, capsys):
    for name, (train, dev, expected) in BAD_DATA.items():
        folder = data_dir(tmp_path, name, train, dev)
        code, err = run_main(["fit", *tiny_args(tiny_encoder, folder, tmp_path)], capsys)
        assert code == 2, name
        assert "Traceback" not in err, name
        for words in expected:
            assert words in err, (name, words, err[-1500:])
        assert "(Set EMOLIGHTNING_TRACEBACK=1" in err


def test_bad_options_and_checkpoints_in_process(tiny_encoder, ec_dir, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    # an encoder that is neither local nor reachable: huggingface_hub read HF_HUB_OFFLINE at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    args = tiny_args(tiny_encoder, ec_dir, tmp_path)
    code, err = run_main(["fit", *args, "--model.init_args.encoder", "no-such-org/no-such-encoder"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "'no-such-org/no-such-encoder'" in err and "no network" in err and "local directory" in err and "model.encoder" in err

    # option keys that do not exist: jsonargparse's message, plus the closest valid key
    config = tmp_path / "typo.yaml"
    config.write_text("trainer:\n  max_epochz: 3\n")
    typos = {
        ("--trainer.max_epochz", "1"): "trainer.max_epochs",
        ("--data.batch_sise", "4"): "data.batch_size",
        ("--config", str(config)): "trainer.max_epochs",
        ("--model.init_args.learnin_rate", "1e-3"): "model.init_args.lr",
        ("--model.init_args.head_lrr", "1e-3"): "model.init_args.head_lr",
        ("--max_epochs", "3"): "trainer.max_epochs",
    }
    for typo, meant in typos.items():
        code, err = run_main(["fit", *args, *typo], capsys)
        assert code == 2 and "Traceback" not in err, typo
        assert f"Did you mean `{meant}` (`--{meant}` on the command line)" in err, (typo, err[-800:])
    code, err = run_main(["fitt"], capsys)
    assert code == 2 and "Did you mean `emolightning fit`?" in err
    # the flat recipe options of 0.1 name where they went, not a look-alike key
    moved = {
        ("--model.init_args.pooling", "mean"): "`--model.init_args.head MeanPooling`",
        ("--model.init_args.rdrop_weight", "1"): "`--model.init_args.loss RDrop --model.init_args.loss.weight 1`",
        ("--model.init_args.threshold_strategy", "shrunk"): "`--model.init_args.thresholds.strategy shrunk`",
    }
    for old, where in moved.items():
        code, err = run_main(["fit", *args, *old], capsys)
        assert code == 2 and f"`{old[0][2:]}` is no longer an option of its own" in err and where in err and "Did you mean" not in err, (old, err[-800:])

    # a checkpoint path that does not exist
    missing = str(tmp_path / "nope.ckpt")
    code, err = run_main(["fit", *args, "--ckpt_path", missing], capsys)
    assert code == 2 and f"The checkpoint '{missing}' (option --ckpt_path) does not exist" in err

    # a checkpoint trained on other labels than the data's
    from emolightning.models.classifier import EmotionClassifier

    model = EmotionClassifier(tiny_encoder, ["joy", "sadness"], lr=1e-3)
    ckpt = tmp_path / "two-labels.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "pytorch-lightning_version": "2.6.6"}, ckpt)
    code, err = run_main(["test", *args, "--ckpt_path", str(ckpt)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "trained on the labels ['joy', 'sadness']" in err and f"the data has {LABELS}" in err and "data.label_columns" in err


def hub_splits(**splits: list) -> object:
    """A DatasetDict shaped like the Hub's SemEval E-c (ID, Tweet, one 0/1 column per label), built in memory."""
    import datasets

    def split(rows):
        return datasets.Dataset.from_dict(
            {"ID": [r[0] for r in rows], "Tweet": [r[1] for r in rows], **{n: [r[2][j] for r in rows] for j, n in enumerate(LABELS)}}
        )

    return datasets.DatasetDict({name: split(rows) for name, rows in splits.items()})


def test_hub_dataset_without_a_test_split_fits_and_says_what_to_do_elsewhere(tiny_encoder, tmp_path, capsys, monkeypatch):
    import datasets

    layout = {"train": hub_splits(train=make_rows(16, 0, "h"), validation=make_rows(8, 1, "v"))}
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: layout["train"])
    args = tiny_args(tiny_encoder, "null", tmp_path, "--trainer.max_epochs", "1", "--data.batch_size", "8")
    # fit needs no test split, as with a data directory without its test-gold file (it stopped on KeyError: 'test')
    main(["fit", *args])
    best = next((tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").glob("*.npz")) == ["train", "validation"]

    missing = "The Hub dataset 'SemEvalWorkshop/sem_eval_2018_task_1' (config 'subtask5.english'; options `data.hub_dataset`, `data.hub_config`)"
    code, err = run_main(["test", *args, "--ckpt_path", str(best)], capsys)
    assert code == 2 and "Traceback" not in err and "KeyError" not in err
    assert f"{missing} has no 'test' split: its splits are ['train', 'validation']." in err and "`data.test_file`" in err
    code, err = run_main(["predict", *args, "--ckpt_path", str(best), "--output", str(tmp_path / "out.txt")], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{missing} has no 'test' split" in err and "Set `data.predict_split` to one of them" in err
    assert not (tmp_path / "out.txt").exists()

    # another layout: 'dev' where emolightning reads 'validation'
    layout["train"] = hub_splits(train=make_rows(16, 0, "h"), dev=make_rows(8, 1, "v"))
    code, err = run_main(["fit", *tiny_args(tiny_encoder, "null", tmp_path / "dev")], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"{missing} has no 'validation' split: its splits are ['dev', 'train']." in err and "`data.val_file`" in err


def test_long_texts_are_truncated_counted_and_reported(tiny_encoder, tmp_path, monkeypatch):
    from emolightning.data import datamodule as data_module

    rows = make_rows(6, 0, "t")
    long_text = " ".join(["news"] * 40)  # 40 WordPiece tokens + [CLS] + [SEP]
    rows[1], rows[4] = (rows[1][0], long_text, rows[1][2]), (rows[4][0], long_text + " city", rows[4][2])
    folder = tmp_path / "long"
    folder.mkdir()
    write_official(folder / "2018-E-c-En-train.txt", rows)
    write_official(folder / "2018-E-c-En-dev.txt", make_rows(3, 1, "d"))
    said = []
    monkeypatch.setattr(data_module, "rank_zero_info", said.append)
    dm = data_module.EmotionDataModule(data_dir=str(folder), tokenizer=tiny_encoder, max_length=24, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")  # not an error
    train = dm.splits["train"]
    assert [len(ids) for ids in train.input_ids][1] == 24 and len(train.input_ids[4]) == 24
    assert train.input_ids[1][-1].item() == 3 and train.input_ids[4][-1].item() == 3  # [SEP] kept
    assert all(len(ids) <= 17 for i, ids in enumerate(train.input_ids) if i not in (1, 4))  # <= 15 words + 2
    assert [m for m in said if "truncated" in m] == [
        f"{folder / '2018-E-c-En-train.txt'}: 2 of 6 texts are longer than max_length=24 tokens and were truncated."
    ]


def test_nan_loss_stops_with_step_batch_and_last_good_checkpoint(tiny_encoder, ec_dir, tmp_path, capsys):
    args = tiny_args(
        tiny_encoder,
        ec_dir,
        tmp_path,
        "--trainer.max_epochs",
        "1",
        "--data.batch_size",
        "8",
        "--last_checkpoint.every_n_train_steps",
        "5",
        callback_option("InjectNaN", step=7),
    )
    code, err = run_main(["fit", *args], capsys)
    assert code == 2 and "Traceback" not in err
    last = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    # 96 rows / batch 8 = 12 batches; the 8th (batch 7, after 7 optimizer steps) gets a NaN weight
    assert "Training stopped at the training step after global step 7 (epoch 0, batch 7 of 12 in the epoch): the training loss is nan." in err
    assert "The batch held the rows with IDs train-" in err and "2018-E-c-En-train.txt" in err
    assert f"the last good checkpoint is {last} (global step 5)" in err
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 5 and all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # nothing after the bad step, no best yet


def tiny_fit(precision_plugin=None, inf_grad_at: int = 1):
    """3 optimizer steps of a 4->1 linear model; at step `inf_grad_at` one gradient becomes inf (the loss stays finite)."""
    import lightning as L

    from emolightning.training.nan_guard import FiniteLossGuard

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(self.layer.weight.detach().clone())
            return self.layer(batch[0]).pow(2).mean()

        def on_after_backward(self):
            if self.global_step == inf_grad_at:
                self.layer.weight.grad[0, 0] = float("inf")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(3, 4)), batch_size=1)
    module = Module()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        callbacks=[FiniteLossGuard()],
        plugins=[precision_plugin] if precision_plugin else None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    return module


def test_inf_gradient_stops_in_full_precision_but_not_under_a_grad_scaler():
    from lightning.pytorch.plugins.precision import MixedPrecision

    from emolightning.errors import TrainingError

    with pytest.raises(TrainingError, match=r"after global step 1 .*the gradient norm is inf \(the loss was finite\)"):
        tiny_fit()
    # fp16 with a GradScaler (Lightning allows 16-mixed on GPUs only; the plugin itself runs on CPU):
    # the scaler skips the step with the inf gradient and halves its scale; training goes on
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    module = tiny_fit(MixedPrecision("16-mixed", "cpu", scaler=scaler))
    assert len(module.seen) == 3
    assert torch.equal(module.seen[1], module.seen[2])  # step 1 was skipped: the weights did not move
    assert not torch.equal(module.seen[0], module.seen[1])  # step 0 was taken
    assert scaler.get_scale() == 2.0**7


def test_real_command_exits_2_without_traceback(tiny_encoder, tmp_path):
    """Two bad invocations of the installed command, run side by side."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    missing = str(tmp_path / "no-such-dir")
    commands = {
        "missing_dir": ["fit", *tiny_args(tiny_encoder, missing, tmp_path)],
        "typo": ["fit", *tiny_args(tiny_encoder, missing, tmp_path), "--trainer.max_epochz", "1"],
    }
    procs = {
        k: subprocess.Popen([sys.executable, "-m", "emolightning", *v], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k, v in commands.items()
    }
    out = {k: p.communicate(timeout=300) for k, p in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 2, (name, out[name][1][-2000:])
        assert "Traceback" not in out[name][1], name
    err = out["missing_dir"][1]
    assert f"The data directory '{missing}' (option `data.data_dir`) does not exist" in err
    assert "error: unrecognized arguments: --trainer.max_epochz 1" in out["typo"][1]
    assert "Did you mean `trainer.max_epochs`" in out["typo"][1]
