"""`emolightning score`: official metrics of a prediction file, checked against hand-computed numbers."""

from __future__ import annotations

import json
import re

import pytest

from emolightning.cli.main import main
from emolightning.errors import DataError
from emolightning.reporting.score import score_files

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
