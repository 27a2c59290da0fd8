"""A first contact that explains itself: short option errors, --version, a help that names every command,
no output a user cannot act on, and a fit that ends by saying where everything went."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from emolightning.cli.main import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(args)
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def assert_one_paragraph(err: str, max_lines: int = 4) -> None:
    lines = err.strip().splitlines()
    assert lines[0].startswith("emolightning: error: ") and len(lines) <= max_lines, err[-3000:]
    assert "usage:" not in err and "Traceback" not in err and "Subtypes" not in err and all(line.strip() for line in lines)


def test_an_abbreviated_option_is_refused_with_the_full_name(capsys):
    code, out, err = run_main(["fit", "--config", QUICKSTART, "--trainer.max_epoch", "1", "--print_config"], capsys)
    assert code == 2 and "max_epochs: 1" not in out
    assert_one_paragraph(err)
    assert "--trainer.max_epoch 1" in err and "Did you mean `trainer.max_epochs`" in err


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--model.init_args.learning_rate", "1"], ["Option 'learning_rate' is not accepted", "`model.init_args.lr`"]),
        (["--trainer.max_epochs", "abc"], ["trainer.max_epochs", "int"]),
        (["--data.batch_size", "1.5"], ["data.batch_size", "1.5"]),
    ],
)
def test_option_errors_are_one_paragraph_without_the_usage_dump(capsys, extra, words):
    code, _, err = run_main(["fit", "--config", QUICKSTART, *extra], capsys)
    assert code == 2
    assert_one_paragraph(err)
    assert all(w in err for w in words), err


def test_config_file_errors_name_the_file(tmp_path, capsys, monkeypatch):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("trainer:\n  max_epochz: 2\n")
    code, _, err = run_main(["fit", "--config", QUICKSTART, "--config", str(unknown)], capsys)
    assert code == 2 and "trainer.max_epochz" in err and "Did you mean `trainer.max_epochs`" in err
    assert_one_paragraph(err)
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: [\n  max_epochs: 2\n")
    argv = ["fit", "--config", QUICKSTART, "--config", str(broken)]
    monkeypatch.setattr(sys, "argv", ["emolightning", *argv])
    code, _, err = run_main(argv, capsys)
    assert code == 2 and f"{broken}, line " in err
    assert_one_paragraph(err)


def test_version(capsys):
    from emolightning import __version__

    code, out, _ = run_main(["--version"], capsys)
    assert code == 0 and out.strip() == f"emolightning {__version__}"


def test_help_of_python_m_names_the_program_and_every_command():
    proc = subprocess.run([sys.executable, "-m", "emolightning", "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: emolightning ")
    assert "{fit,validate,test,predict,score,export,report,ensemble,serve}" in proc.stdout
    assert "emolightning score PRED GOLD" in " ".join(proc.stdout.split())
    # each command's description is a whole sentence (LightningCLI took the first line of a docstring, cut mid-sentence)
    listing = proc.stdout[proc.stdout.index("(required)") + len("(required)") :]
    descriptions = dict(re.findall(r"^    (\w+) +(.*?)(?=^    \w|\Z)", listing, flags=re.M | re.S))
    assert set(descriptions) == {"fit", "validate", "test", "predict", "score", "export", "report", "ensemble", "serve"}, listing
    assert all(" ".join(text.split()).endswith(".") for text in descriptions.values()), descriptions


NOISE = [
    "tensorboardX",
    "litlogger",
    "LeafSpec",
    "Loading weights",
    "FLOPs",
    "v_num",
    "TPU available",
    "dirpath has changed",
    "Couldn't infer the batch indices",
    "[rank: ",  # one process: Lightning's rank prefix says nothing (DDP keeps it, test_ddp.py)
    "smaller than the logging interval",
    "0.00it/s",  # Lightning's rate until rich has two updates of a bar
]


def test_fit_ends_with_the_closing_block_and_test_predict_leave_the_run_folder_alone(tiny_encoder, ec_dir, tmp_path):
    import shlex

    from conftest import LABELS
    from ec_reference import assert_scores, checkpoint_thresholds, gold_table, model_probabilities, printed_scores, stage_scores
    from helpers import emolightning, tiny_args

    args = tiny_args(tiny_encoder, ec_dir, tmp_path, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--model.init_args.lr", "1e-3")
    args[args.index("--trainer.enable_progress_bar") + 1] = "true"  # v_num would show on the bar
    fit = emolightning("fit", *args)
    printed = fit.stdout + fit.stderr
    assert not [word for word in NOISE if word in printed], printed[-4000:]
    block = fit.stdout[fit.stdout.index("Run folder:") :].strip().splitlines()
    run = tmp_path / "run" / "lightning_logs" / "version_0"
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    assert block[0] == f"Run folder:      {run} (config.yaml, metrics.csv, checkpoints)" and block[1] == f"Best checkpoint: {best}"
    assert block[2].startswith("  val/jaccard ") and "threshold 0.5" in block[2] and block[3].startswith("  val/tuned/jaccard ")
    # 2 epochs of 2 batches at the quickstart's log_every_n_steps 10: each epoch still logs its training loss
    with open(run / "metrics.csv", newline="") as f:
        assert sorted(row["epoch"] for row in csv.DictReader(f) if row["train/loss"]) == ["0", "1"]
    test_line, predict_line = block[-2].strip(), block[-1].strip()
    assert test_line == f"emolightning test --config {run / 'config.yaml'} --ckpt_path {best}"
    texts = tmp_path / "texts.txt"
    texts.write_text("so delighted\nscared\n", encoding="utf-8")
    # the printed test command, in fp32 (`auto` may be bf16 here): it prints the official scores of the model's probabilities
    # against the gold file, at 0.5 and at the checkpoint's thresholds (the independent scorer of ec_reference.py)
    test = emolightning(*shlex.split(test_line)[1:], "--trainer.precision", "32-true")
    test_texts, gold = gold_table(Path(ec_dir, "2018-E-c-En-test-gold.txt"), LABELS)
    expected = stage_scores("test", gold, model_probabilities(best, test_texts), LABELS, checkpoint_thresholds(best))
    assert_scores(printed_scores(test.stdout + test.stderr, "test"), expected, 1e-6, "the metrics test prints")
    predict = emolightning(
        *shlex.split(predict_line.replace("FILE", str(texts)).replace("predictions.txt", str(tmp_path / "pred.txt")))[1:],
        "--trainer.enable_progress_bar",
        "true",
    )
    rate = re.search(r"Predicting .* 1/1 .* (\d+\.\d\d)it/s", predict.stdout)
    assert rate and float(rate.group(1)) > 0, predict.stdout[-2000:]  # one batch: a real rate (Lightning's read 0.00it/s)
    assert not [word for word in NOISE if word in test.stdout + test.stderr + predict.stdout + predict.stderr]
    assert (tmp_path / "pred.txt").read_text().count("\n") == 3
    # test and predict opened no version_1: the next fit lands where the README says
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"] and sorted(p.name for p in (tmp_path / "run").iterdir()) == ["lightning_logs"]
    verbose = emolightning(*shlex.split(test_line)[1:], env={"EMOLIGHTNING_VERBOSE": "1"})
    assert "TPU available" in verbose.stdout + verbose.stderr


def test_the_tokenizer_warning_about_long_texts_is_hidden_unless_verbose(tiny_encoder, monkeypatch):
    import logging

    from transformers import AutoTokenizer

    from emolightning.cli import quiet

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("transformers.tokenization_utils_base")
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "filters", [])  # as before any silence_libraries() of this process; restored after the test
    try:
        AutoTokenizer.from_pretrained(tiny_encoder, model_max_length=8)(["very " * 20])
        assert any("longer than the specified maximum sequence length" in m for m in seen)
        seen.clear()
        monkeypatch.setattr(quiet, "_silenced", False)
        quiet.silence_libraries()
        AutoTokenizer.from_pretrained(tiny_encoder, model_max_length=8)(["very " * 20])
        assert seen == []
    finally:
        logger.removeHandler(handler)


def bad_inputs(tmp_path: Path) -> dict:
    """name -> (extra options, words the message must hold): each a case seen printing a traceback or pages of text."""
    big_header = tmp_path / "big.tsv"
    big_header.write_text("ID\tWords" + "\tx" * 20000 + "\n1\thi" + "\t0" * 20000 + "\n", encoding="utf-8")
    columns = tmp_path / "columns.json"
    columns.write_text(json.dumps({"Tweet": {str(i): "so happy " * 20 for i in range(3000)}, "joy": {str(i): 1 for i in range(3000)}}), encoding="utf-8")
    multiline = tmp_path / "multi.csv"
    multiline.write_text('ID,Tweet,joy\n1,"a\nlong\ntext",1\n2,"unclosed,1\n3,fine,0\n', encoding="utf-8")
    return {
        "hub_offline": ([], ["Could not load the Hub dataset", "`data.data_dir`", "builtin:demo"]),
        "huge_header": (["--data.train_file", str(big_header)], ["big.tsv, line 1", "no text column 'Tweet'", "data.text_column"]),
        "json_columns": (["--data.train_file", str(columns)], ["columns.json", "orient='records'"]),
        "unclosed_quote": (["--data.train_file", str(multiline)], ["multi.csv, line 5", "double quote"]),
    }


@pytest.mark.parametrize("case", ["hub_offline", "huge_header", "json_columns", "unclosed_quote"])
def test_every_data_error_is_a_short_paragraph_with_exit_2(case, tiny_encoder, tmp_path, capsys, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'SemEvalWorkshop/sem_eval_2018_task_1' on the Hub (LocalEntryNotFoundError)\n" + "details\n" * 50)

    monkeypatch.setattr(datasets, "load_dataset", offline)
    extra, words = bad_inputs(tmp_path)[case]
    code, _, err = run_main(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "semeval" / "minilm-l6.yaml"),
            "--model.init_args.encoder",
            tiny_encoder,
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            *extra,
        ],
        capsys,
    )
    assert code == 2
    assert_one_paragraph(err, max_lines=2)
    assert len(err) < 1700 and all(w in err for w in words), err[-2000:]
