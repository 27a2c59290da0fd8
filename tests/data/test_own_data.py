"""A new user's own data: a CSV with `id,text,<labels>` columns trains, tests and predicts with no column option,
from the commands that fit prints alone, and the checkpoint stands alone once the training files are gone."""

from __future__ import annotations

import csv
import re
import shlex
from pathlib import Path

import pytest

from emolightning.data.datamodule import EmotionDataModule
from emolightning.data.tables import read_table
from emolightning.errors import DataError

from conftest import LABELS, make_rows
from ec_reference import assert_scores, checkpoint_thresholds, gold_table, model_probabilities, printed_scores, stage_scores
from helpers import REPO, emolightning


def run(*args: str, cwd: Path):
    """`emolightning ARGS` in `cwd` (the user's folder, so that printed relative paths resolve), importing this checkout."""
    return emolightning(*args, cwd=cwd, env={"PYTHONPATH": str(REPO)})


def write_csv(path: Path, rows, labelled: bool = True) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", *(LABELS if labelled else [])])
        for row_id, text, gold in rows:
            writer.writerow([row_id, text, *(gold if labelled else [])])
    return path


def next_commands(stdout: str) -> list[list[str]]:
    """The `emolightning ...` command lines under fit's `Next:`, split as a shell would."""
    block = stdout.split("Next:", 1)[1]
    return [shlex.split(line.strip())[1:] for line in block.splitlines() if line.strip().startswith("emolightning ")]


@pytest.mark.slow
def test_own_csv_trains_tests_and_predicts_from_the_printed_commands(tiny_encoder, tmp_path):
    train = write_csv(tmp_path / "train.csv", make_rows(40, 1, "r"))
    dev = write_csv(tmp_path / "dev.csv", make_rows(16, 2, "d"))
    test = write_csv(tmp_path / "test.csv", make_rows(16, 3, "t"))
    write_csv(tmp_path / "texts.csv", make_rows(9, 4, "p"), labelled=False)
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--trainer.max_epochs", "1"]
    # the quickstart config sets data_dir: builtin:demo; the user's files must replace it for every split
    fit = run(
        "fit",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--model.init_args.encoder",
        tiny_encoder,
        "--data.cache_dir",
        "cache",
        "--trainer.default_root_dir",
        "run",
        *quiet,
        "--data.train_file",
        "train.csv",
        "--data.val_file",
        "dev.csv",
        "--data.test_file",
        "test.csv",
        cwd=tmp_path,
    )
    assert "text column 'text', ID column 'id'" in fit.stdout + fit.stderr
    test_cmd, predict_cmd = next_commands(fit.stdout)
    assert test_cmd[0] == "test" and "TEST_FILE" not in test_cmd
    tested = run(*test_cmd, "--trainer.precision", "32-true", cwd=tmp_path)  # fp32: `auto` may be bf16 here
    assert "test.csv" in tested.stdout + tested.stderr and "demo" not in tested.stdout + tested.stderr
    ckpt = test_cmd[test_cmd.index("--ckpt_path") + 1]
    # the official scores of the model's probabilities against test.csv, at 0.5 and at the checkpoint's thresholds (ec_reference.py)
    texts, gold = gold_table(test, LABELS, text_column="text")
    expected = stage_scores("test", gold, model_probabilities(tmp_path / ckpt, texts), LABELS, checkpoint_thresholds(tmp_path / ckpt))
    assert_scores(printed_scores(tested.stdout, "test"), expected, 1e-6, "the metrics test prints")

    for path in (train, dev):  # the checkpoint is enough from here on
        path.unlink()
    predict_cmd = [arg if arg != "FILE" else "texts.csv" for arg in predict_cmd]
    run(*predict_cmd, cwd=tmp_path)
    header, *rows = (tmp_path / "predictions.txt").read_text(encoding="utf-8").splitlines()
    assert header.split("\t") == ["id", "text", *LABELS] and len(rows) == 9 and rows[0].startswith("p-0000\t")

    # no config at all: the checkpoint holds the model, labels, tokenizer and text options
    run("predict", "--ckpt_path", ckpt, "--data.predict_file", "texts.csv", "--output", "alone.txt", "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert (tmp_path / "alone.txt").read_text(encoding="utf-8") == (tmp_path / "predictions.txt").read_text(encoding="utf-8")
    alone = run(
        "test", "--ckpt_path", ckpt, "--data.test_file", str(test), "--trainer.enable_progress_bar", "false", "--trainer.precision", "32-true", cwd=tmp_path
    )
    assert_scores(printed_scores(alone.stdout, "test"), expected, 1e-6, "the metrics test prints without a config")


def test_named_files_replace_the_inherited_data_dir(tmp_path, tiny_encoder, cache_dir):
    train = write_csv(tmp_path / "train.csv", make_rows(8, 1, "r"))
    data = EmotionDataModule(data_dir="builtin:demo", train_file=str(train), tokenizer=tiny_encoder, cache_dir=cache_dir)
    assert data.split_source("test") is None  # not the demo's test file
    with pytest.raises(DataError, match=r"No test split.*`data.train_file`.*--data.test_file FILE"):
        data.load_table("test")
    assert EmotionDataModule(data_dir="builtin:demo").split_source("test").endswith("demo-test-gold.txt")


def test_common_text_and_id_column_names_are_recognised(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("ID,Sentence,joy,anger\nr000,so happy,1,0\nr001,so cross,0,1\n", encoding="utf-8")
    table = read_table(str(path))
    assert table.ids == ["r000", "r001"] and table.texts == ["so happy", "so cross"] and table.label_names == ["joy", "anger"]
    lower = tmp_path / "lower.tsv"
    lower.write_text("id\ttweet\tjoy\nr000\thi\t1\n", encoding="utf-8")
    assert read_table(str(lower)).ids == ["r000"]


@pytest.mark.parametrize(
    "header, option",
    [("id,text,sentence,joy", "data.text_column"), ("body_text,joy", "data.text_column"), ("id,tweet_id,text,joy", "data.id_column")],
)
def test_an_unclear_column_names_its_option(tmp_path, header, option):
    path = tmp_path / "unclear.csv"
    path.write_text(header + "\n" + ",".join(["r0"] * (header.count(",")) + ["1"]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(option)):
        read_table(str(path))


def test_a_non_label_column_error_names_the_id_option(tmp_path):
    path = tmp_path / "code.csv"
    path.write_text("ID,text,code,joy\n1,hi,r000,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"label column 'code' holds 'r000'.*`data.id_column`"):
        read_table(str(path))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predict_writes_a_row_for_every_input_row_empty_texts_included(trained_run, tiny_encoder, tmp_path, suffix):
    """An empty or blank text in a table is predicted (as the model sees an empty input), in its place, not a stop."""
    import pandas as pd
    import torch

    from emolightning.cli.main import run_cli
    from emolightning.models.classifier import EmotionClassifier
    from emolightning.pretrained.encoders import load_tokenizer

    from helpers import predict_args

    texts = ["so happy today", "", "   ", "crying at home"]
    source = tmp_path / f"new{suffix}"
    if suffix == ".csv":
        source.write_text("msg_id,message\n" + "".join(f'm{i},"{t}"\n' for i, t in enumerate(texts)), encoding="utf-8")
    else:
        source.write_text("".join(f'{{"msg_id": "m{i}", "message": "{t}"}}\n' for i, t in enumerate(texts)), encoding="utf-8")
    out = tmp_path / "predictions.csv"
    run_cli(predict_args(trained_run, tmp_path, "--data.predict_file", str(source), "--output", str(out), "--probabilities", "true"))
    frame = pd.read_csv(out, dtype={"msg_id": str, "message": str}, keep_default_na=False)
    assert list(frame["msg_id"]) == ["m0", "m1", "m2", "m3"] and list(frame["message"]) == texts
    model = EmotionClassifier.load_from_checkpoint(trained_run["ckpt"], map_location="cpu").eval()
    tokenizer = load_tokenizer(tiny_encoder)
    with torch.no_grad():
        alone = [torch.sigmoid(model(**{k: v for k, v in tokenizer([t], return_tensors="pt").items() if k != "token_type_ids"}))[0] for t in texts]
    written = torch.tensor(frame[[f"p_{name}" for name in LABELS]].to_numpy(), dtype=torch.float32)
    assert torch.allclose(written, torch.stack(alone), atol=1e-5)
