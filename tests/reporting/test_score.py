"""`emolightning score`: official metrics of a prediction file, checked against hand-computed numbers."""

from __future__ import annotations

import json
import re

import pytest
import torch

from emolightning.cli.main import main
from emolightning.errors import DataError
from emolightning.reporting.score import Columns, score_files

GOLD = """ID\tTweet\ta\tb\tc
1\tfirst text\t1\t0\t0
2\tsecond text\t0\t1\t1
3\tthird text\t0\t0\t0
4\tfourth text\t1\t1\t0
5\tfifth text\t0\t0\t0
"""
# another row order, other label column order, and predict's p_<label> columns (ignored)
PRED = """ID\tTweet\tc\ta\tb\tp_a\tp_b\tp_c
3\tthird text\t1\t0\t0\t0.1\t0.2\t0.9
1\tfirst text\t0\t1\t1\t0.8\t0.7\t0.1
5\tfifth text\t0\t0\t0\t0.1\t0.1\t0.1
4\tfourth text\t0\t1\t0\t0.9\t0.3\t0.1
2\tsecond text\t1\t0\t0\t0.2\t0.4\t0.6
"""
# by hand. Jaccard per row: 1: {a,b} vs {a} -> 1/2; 2: {c} vs {b,c} -> 1/2; 3: {c} vs {} -> 0;
# 4: {a} vs {a,b} -> 1/2; 5: {} vs {} -> 1; mean 2.5/5.
# a: tp 2 -> F1 1; b: tp 0 fp 1 fn 2 -> 0; c: tp 1 fp 1 -> 2/3. macro 5/9; micro tp 3 fp 2 fn 2 -> 6/10.
EXPECTED = {"n": 5, "jaccard": 0.5, "f1_micro": 0.6, "f1_macro": 5 / 9, "f1/a": 1.0, "f1/b": 0.0, "f1/c": 2 / 3}


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_scores_match_hand_computed_numbers(tmp_path):
    scores = score_files(write(tmp_path, "pred.txt", PRED), write(tmp_path, "gold.txt", GOLD))
    assert scores.keys() == EXPECTED.keys()
    for key, value in EXPECTED.items():
        assert scores[key] == pytest.approx(value, abs=1e-6), key


def test_cli_prints_a_table_and_json(tmp_path, capsys):
    pred, gold = write(tmp_path, "pred.txt", PRED), write(tmp_path, "gold.txt", GOLD)
    main(["score", pred, gold])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["metric", "score"]
    printed = dict(line.split() for line in lines[2:])
    assert printed == {"n": "5", "jaccard": "0.5000", "f1_micro": "0.6000", "f1_macro": "0.5556", "f1/a": "1.0000", "f1/b": "0.0000", "f1/c": "0.6667"}
    assert len({re.match(r"\S+\s+", line).end() for line in lines}) == 1  # one aligned column
    main(["score", pred, gold, "--json"])
    scores = json.loads(capsys.readouterr().out)
    assert scores["f1_micro"] == pytest.approx(0.6) and scores["n"] == 5


@pytest.mark.parametrize(
    "pred, message",
    [
        (PRED.replace("5\tfifth text\t0\t0\t0\t0.1\t0.1\t0.1\n", ""), ["1 ID(s) of the gold file are not in the predictions", "'5'"]),
        (PRED + "9\textra text\t0\t0\t0\t0.1\t0.1\t0.1\n", ["1 ID(s) in the predictions are not in the gold file", "'9'"]),
        (PRED.replace("\tc\ta\tb\t", "\td\ta\tb\t"), ["do not match", "missing: ['c']", "extra: ['d']"]),
        ("\n".join(["ID\tTweet\ta\tb\tc"] + [f"{i}\tt\tNONE\tNONE\tNONE" for i in range(1, 6)]) + "\n", ["pred.txt has no labels", "emolightning predict"]),
    ],
    ids=["missing-id", "extra-id", "label-columns", "unlabelled-pred"],
)
def test_mismatches_are_one_paragraph_errors(tmp_path, pred, message):
    with pytest.raises(DataError) as err:
        score_files(write(tmp_path, "pred.txt", pred), write(tmp_path, "gold.txt", GOLD))
    for part in message:
        assert part in str(err.value)


def test_unlabelled_gold_file_is_refused_through_the_cli(tmp_path, capsys):
    gold = write(tmp_path, "2018-E-c-En-test.txt", "\n".join(["ID\tTweet\ta\tb\tc"] + [f"{i}\tt\tNONE\tNONE\tNONE" for i in range(1, 6)]) + "\n")
    with pytest.raises(SystemExit) as done:
        main(["score", write(tmp_path, "pred.txt", PRED), gold])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err
    assert err.startswith("emolightning: error: The gold file") and "test-gold" in err


@pytest.mark.parametrize("extra", [["d"], [f"label_{i:03d}" for i in range(60)]], ids=["one", "many"])
def test_score_and_the_split_check_name_a_label_difference_alike(tmp_path, extra):
    """One check (tables.label_difference) for both: the same `; missing: ...; extra: ...` (cut alike when long), then each its own advice."""
    import numpy as np

    from emolightning.data.tables import Table, aligned_labels

    header = "\t".join(["ID", "Tweet", *extra, "a", "b"])
    pred = "\n".join([header] + [f"{i}\tt" + "\t0" * (len(extra) + 2) for i in range(1, 6)]) + "\n"
    with pytest.raises(DataError) as from_score:
        score_files(write(tmp_path, "pred.txt", pred), write(tmp_path, "gold.txt", GOLD))
    table = Table(["1"], ["t"], np.zeros((1, len(extra) + 2), dtype=np.uint8), [*extra, "a", "b"], "dev.txt")
    with pytest.raises(DataError) as from_tables:
        aligned_labels(table, ["a", "b", "c"])
    difference = str(from_score.value).split(" ['a', 'b', 'c']", 1)[1].split(". Predict", 1)[0]
    assert difference.startswith("; missing: ['c']; extra: [")
    assert f"['a', 'b', 'c']{difference}. Every split needs the same label columns" in str(from_tables.value)
    assert len(str(from_score.value)) < 1200


# the user's own names: nothing here is an official name, and `msg_id` is no common ID name
OWN_GOLD = """msg_id,message,a,b,c
m1,first text,1,0,0
m2,"second, text",0,1,1
m3,third text,0,0,0
m4,fourth text,1,1,0
m5,,0,0,0
"""
OWN_PREDS = {"m1": [1, 1, 0], "m2": [0, 0, 1], "m3": [0, 0, 1], "m4": [1, 0, 0], "m5": [0, 0, 0]}  # EXPECTED's predictions, labels a, b, c


class Fixed:
    """A model whose predictions are OWN_PREDS, row by row, for PredictionFileWriter."""

    label_names = ["a", "b", "c"]


def written_by_predict(tmp_path, name: str, probabilities: bool) -> str:
    """OWN_GOLD's rows predicted as OWN_PREDS, written by the PredictionFileWriter that `emolightning predict` uses, in the format of `name`."""
    from types import SimpleNamespace

    from emolightning.inference.prediction_writer import PredictionFileWriter

    ids, texts = ["m1", "m2", "m3", "m4", "m5"], ["first text", "second, text", "third text", "fourth text", ""]
    layout = SimpleNamespace(columns=("msg_id", "message"), num_rows=5, max_length=64, num_chunks=1, rows_in_chunk=lambda chunk: 5)
    writer = PredictionFileWriter(str(tmp_path / name), probabilities, layout=lambda: layout)
    trainer = SimpleNamespace(global_rank=0, world_size=1, is_global_zero=True, strategy=SimpleNamespace(barrier=lambda name: None, broadcast=lambda x, src: x))
    writer.on_predict_epoch_start(trainer, Fixed())
    for part in ([4, 1], [0, 3, 2]):  # rows arrive in any order
        batch = {"ids": [ids[i] for i in part], "texts": [texts[i] for i in part], "chunk": 0}
        preds = torch.tensor([OWN_PREDS[ids[i]] for i in part], dtype=torch.uint8)
        writer.write_on_batch_end(trainer, Fixed(), {"index": torch.tensor(part), "preds": preds, "probs": preds.float() * 0.9}, None, batch, 0, 0)
    writer.on_predict_epoch_end(trainer, Fixed())
    return str(tmp_path / name)


@pytest.mark.parametrize("name", ["pred.csv", "pred.txt", "pred.tsv", "pred.jsonl", "pred.json"])
@pytest.mark.parametrize("probabilities", [False, True])
def test_score_reads_every_format_predict_writes_against_the_users_own_csv(tmp_path, name, probabilities, capsys):
    """No option: the ID and text columns come from the prediction file's header (predict writes them first); an empty text is no error."""
    pred = written_by_predict(tmp_path, name, probabilities)
    gold = write(tmp_path, "test.csv", OWN_GOLD)
    main(["score", pred, gold, "--json"])
    scores = json.loads(capsys.readouterr().out)
    assert scores.keys() == EXPECTED.keys()
    for key, value in EXPECTED.items():
        assert scores[key] == pytest.approx(value, abs=1e-6), key


def test_score_takes_the_data_modules_column_options(tmp_path, capsys):
    """Columns that nothing detects (`key`, `body`), named as fit names them; the prediction file in another row and column order."""
    gold = write(
        tmp_path, "gold.jsonl", "".join(f'{{"key": "{row[0]}", "body": "{row[1]}", "a": {row[2]}, "b": {row[3]}, "c": {row[4]}}}\n' for row in GOLD_ROWS)
    )
    pred = write(
        tmp_path, "pred.csv", "c,body,a,key,b\n" + "".join(f"{OWN_PREDS['m' + k][2]},t,{OWN_PREDS['m' + k][0]},{k},{OWN_PREDS['m' + k][1]}\n" for k in "53124")
    )
    with pytest.raises(SystemExit):  # without the options, the ID column is not found (and the error names data.id_column)
        main(["score", pred, gold])
    assert "data.id_column" in capsys.readouterr().err
    main(["score", pred, gold, "--data.text_column", "body", "--data.id_column", "key", "--json"])
    assert json.loads(capsys.readouterr().out)["jaccard"] == pytest.approx(EXPECTED["jaccard"])
    main(["score", pred, gold, "--data.text_column", "body", "--data.id_column", "key", "--data.label_columns", "[a, b, c]", "--json"])
    assert json.loads(capsys.readouterr().out)["f1_macro"] == pytest.approx(EXPECTED["f1_macro"])


GOLD_ROWS = [(str(i), f"text {i}", *labels) for i, labels in enumerate([(1, 0, 0), (0, 1, 1), (0, 0, 0), (1, 1, 0), (0, 0, 0)], start=1)]


def test_score_reads_the_columns_from_a_checkpoint(tmp_path, capsys):
    """A checkpoint written by fit holds the data module's column options and the model's labels: score uses them (a real .ckpt file, read as test reads it)."""
    gold = write(tmp_path, "gold.csv", "key,body,note,a,b,c\n" + "".join(f"{r[0]},{r[1]},x,{r[2]},{r[3]},{r[4]}\n" for r in GOLD_ROWS))
    pred = write(tmp_path, "pred.csv", "key,body,a,b,c\n" + "".join(f"{k},t,{','.join(map(str, OWN_PREDS['m' + k]))}\n" for k in "12345"))
    ckpt = tmp_path / "best.ckpt"
    hyper = {"encoder": "tiny", "label_names": ["a", "b", "c"]}
    torch.save({"state_dict": {}, "hyper_parameters": hyper, "datamodule_hyper_parameters": {"text_column": "body", "id_column": "key"}}, ckpt)
    main(["score", pred, gold, "--ckpt_path", str(ckpt), "--json"])  # `note` is no label of the model's: it is left out
    assert json.loads(capsys.readouterr().out)["jaccard"] == pytest.approx(EXPECTED["jaccard"])


def test_score_refuses_a_named_column_that_is_not_there(tmp_path):
    gold = write(tmp_path, "test.csv", OWN_GOLD)
    with pytest.raises(DataError, match=r"test.csv, line 1: there is no ID column 'id'.*'msg_id', 'message'"):
        score_files(gold, gold, Columns(id_column="id"))
