"""`emolightning predict`: official-format files, rows in input order, IDs and texts untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import LABELS, make_rows, write_official
from helpers import predict_args

HEADER = ["ID", "Tweet", *LABELS]


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # ends with a newline
    rows = [line.split("\t") for line in lines[:-1]]
    return rows[0], rows[1:]


def expected(ckpt: Path, tokenizer: str, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs, thresholds) of the checkpoint's model, one text at a time (no padding, no reordering)."""
    from emolightning.models.classifier import EmotionClassifier
    from emolightning.pretrained.encoders import load_tokenizer

    model = EmotionClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    tok = load_tokenizer(tokenizer)
    with torch.no_grad():
        probs = [torch.sigmoid(model(**{k: v for k, v in tok([t], return_tensors="pt").items() if k != "token_type_ids"}))[0] for t in texts]
    return torch.stack(probs), model.thresholds


def assert_labels(rows: list[list[str]], probs: torch.Tensor, thresholds: torch.Tensor) -> None:
    got = torch.tensor([[int(v) for v in row[2 : 2 + len(LABELS)]] for row in rows])
    want = (probs >= thresholds).int()
    # padding in a batch moves probabilities by ~1e-7: only decisions that close to a threshold may differ
    clear = (probs - thresholds).abs() > 1e-5
    assert torch.equal(got[clear], want[clear])


def predict_in_process(trained_run, tmp_path, *extra: str) -> None:
    """`emolightning predict` in this process (a subprocess costs ~8 s of imports)."""
    from emolightning.cli.main import run_cli

    run_cli(predict_args(trained_run, tmp_path, *extra))


def test_official_format_in_input_order_with_probabilities(trained_run, ec_dir, tiny_encoder, tmp_path):
    out = tmp_path / "sub" / "pred.txt"
    # small batches, served longest first: the file must still follow the input's order
    predict_in_process(trained_run, tmp_path, "--output", str(out), "--probabilities", "true", "--data.eval_batch_size", "8")
    header, rows = read_rows(out)
    assert header == HEADER + [f"p_{name}" for name in LABELS]
    _, gold = read_rows(Path(ec_dir) / "2018-E-c-En-test-gold.txt")
    assert [r[:2] for r in rows] == [g[:2] for g in gold]  # IDs and texts, in the input's order
    assert all(len(r) == len(header) and set(r[2:13]) <= {"0", "1"} for r in rows)
    probs, thresholds = expected(trained_run["ckpt"], tiny_encoder, [g[1] for g in gold])
    assert torch.allclose(torch.tensor([[float(v) for v in r[13:]] for r in rows]), probs, atol=2e-6)
    assert_labels(rows, probs, thresholds)
    # the checkpoint's tuned thresholds are used, not 0.5
    assert not torch.allclose(thresholds, torch.full_like(thresholds, 0.5))
    assert list(out.parent.iterdir()) == [out]  # no temp file left behind


def test_unlabelled_official_test_file_default_output(trained_run, tiny_encoder, tmp_path):
    rows = make_rows(13, 5, "2018-En-")
    source = write_official(tmp_path / "2018-E-c-En-test.txt", rows, unlabelled=True)
    predict_in_process(trained_run, tmp_path, "--data.predict_file", str(source))
    header, written = read_rows(tmp_path / "root" / "predictions.txt")  # the default --output
    assert header == HEADER
    assert [r[:2] for r in written] == [[row_id, text] for row_id, text, _ in rows]
    assert_labels(written, *expected(trained_run["ckpt"], tiny_encoder, [text for _, text, _ in rows]))


def test_plain_text_file_one_text_per_line(trained_run, tiny_encoder, tmp_path):
    texts = ['he said "so delighted" today', "  scared of the news 😱", "", "crying at home,with my friend", "   ", "#gross\tgame"]
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "plain-pred.txt"
    predict_in_process(trained_run, tmp_path, "--data.predict_file", str(source), "--output", str(out))
    header, written = read_rows(out)
    assert header == ["id", "text", *LABELS]  # a file without a header names no columns: the output names them id and text
    # every line is a row and its ID is its line number: a blank line is predicted as an empty text, no ID shifts
    shown = [t.replace("\t", " ") for t in texts]
    assert [r[:2] for r in written] == [[str(i), t] for i, t in enumerate(shown, start=1)]
    assert_labels(written, *expected(trained_run["ckpt"], tiny_encoder, shown))


def test_predict_without_checkpoint_is_a_config_error(trained_run, tmp_path, capsys):
    from emolightning.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["predict", "--config", str(trained_run["config"]), "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "needs --ckpt_path" in err and "Traceback" not in err


def test_help_names_predict_options_and_the_other_commands(capsys):
    from emolightning.cli.main import main

    for argv in (["--help"], ["predict", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
    out = " ".join(capsys.readouterr().out.split())
    assert "emolightning score PRED GOLD" in out and "emolightning export" in out
    assert "--output" in out and "--probabilities" in out and "predictions.txt" in out


@pytest.mark.parametrize(
    "bad_row, words",
    [(b"late-1\tcaf\xe9 time", ["line 62", "not UTF-8"]), (b"p-0003\ta repeated id", ["line 62", "ID 'p-0003' already appears on line 5"])],
)
def test_a_bad_row_late_in_the_file_stops_predict_before_the_model_runs(trained_run, tmp_path, capsys, bad_row, words):
    from emolightning.cli.main import main

    source = write_official(tmp_path / "texts.txt", make_rows(60, 3, "p"), unlabelled=True)
    source.write_bytes(source.read_bytes() + bad_row + b"\tNONE" * len(LABELS) + b"\n")
    out = tmp_path / "out" / "pred.txt"
    out.parent.mkdir()
    out.write_text("the user's earlier predictions\n")
    with pytest.raises(SystemExit) as done:
        main(predict_args(trained_run, tmp_path, "--data.predict_file", str(source), "--output", str(out)))
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err and f"{source}, " in err
    assert all(w in err for w in words), err[-800:]
    assert out.read_text() == "the user's earlier predictions\n" and list(out.parent.iterdir()) == [out]


def test_predict_skips_the_weight_init_and_the_labelled_splits(trained_run, tmp_path, monkeypatch):
    """Every weight comes from the checkpoint, and predict streams its own input: a random init of the
    encoder and tokenising the train and dev splits were time that every predict paid for nothing."""
    from transformers import PreTrainedModel

    inits = []
    init_weights = PreTrainedModel.init_weights
    monkeypatch.setattr(PreTrainedModel, "init_weights", lambda self: inits.append(type(self).__name__) or init_weights(self))
    cache = tmp_path / "cache"
    predict_in_process(trained_run, tmp_path, "--data.cache_dir", str(cache), "--output", str(tmp_path / "pred.txt"))
    assert inits == []
    assert sorted(p.name for p in cache.glob("*.npz")) == []
    assert len(read_rows(tmp_path / "pred.txt")[1]) > 0


def test_default_predict_gives_the_fp32_probabilities_of_the_export_whatever_precision_the_run_trained_at(trained_run, tiny_encoder, tmp_path):
    """No `--backend`: predict runs fp32 (the exported model's numbers), even where the run's config records bf16-mixed, as a
    config written by `fit` on a CPU or GPU with native bf16 does. bf16 is a named option (tests/inference/test_inference.py)."""
    from emolightning.cli.main import run_cli

    rows = make_rows(12, 11, "default")
    source = write_official(tmp_path / "texts.txt", rows)
    out = tmp_path / "p.txt"
    args = predict_args(trained_run, tmp_path, "--data.predict_file", str(source), "--output", str(out), "--probabilities", "true")
    args[args.index("--trainer.precision") + 1] = "bf16-mixed"  # what the run's config.yaml says after a fit on such a machine
    del args[args.index("--backend") : args.index("--backend") + 2]  # the default
    run_cli(args)
    _, written = read_rows(out)
    probs, thresholds = expected(trained_run["ckpt"], tiny_encoder, [text for _, text, _ in rows])
    got = torch.tensor([[float(v) for v in r[2 + len(LABELS) :]] for r in written])
    assert (got - probs).abs().max() <= 1e-5  # bf16 moves them by ~1e-3
    assert_labels(written, probs, thresholds)


def test_a_missing_checkpoint_names_what_predict_takes_not_a_resume(trained_run, tmp_path, capsys):
    from emolightning.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(predict_args(trained_run, tmp_path)[:3] + ["--ckpt_path", str(tmp_path / "gone.ckpt"), "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err
    message = next(line for line in err.splitlines() if line.startswith("emolightning: error:"))
    assert "gone.ckpt" in message and "does not exist" in message and "best-*.ckpt" in message
    assert "resume" not in message and "--ckpt_path last" not in message
