"""`emolightning score PRED GOLD`: the official SemEval-2018 E-c metrics of a prediction file.

    emolightning score predictions.txt 2018-E-c-En-test-gold.txt [--json]

Both files are in the official format (ID, Tweet, one 0/1 column per label; any table that
tables.read_table reads). Rows are matched by ID, so their order does not matter; the label columns
are matched by name, and `p_<label>` probability columns of `emolightning predict` are ignored.
Prints sample-averaged Jaccard (a row with no gold and no predicted label scores 1), micro-F1,
macro-F1 and each label's F1.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.formats import clip, read_header
from ..data.tables import label_difference, read_table
from ..errors import DataError
from ..metrics import official_scores


def label_columns(path: str, text_column: str, id_column: str) -> list[str]:
    return [c for c in read_header(path) if c not in (text_column, id_column) and not c.startswith("p_")]


def aligned(pred_path: str, gold_path: str, text_column: str = "Tweet", id_column: str = "ID"):
    """(preds, gold, label names): (N, L) 0/1 matrices with the rows in the gold file's order."""
    gold = read_table(gold_path, text_column, id_column)
    if gold.labels is None:
        raise DataError(
            f"The gold file {gold_path} has no labels (NONE in every label column): it is the unlabelled test file. Score against the gold labels (e.g. 2018-E-c-En-test-gold.txt)."
        )
    columns = label_columns(pred_path, text_column, id_column)
    if (difference := label_difference(columns, gold.label_names)) is not None:
        raise DataError(
            f"The label columns of {pred_path} {clip(columns, 300)} do not match those of {gold_path} {clip(gold.label_names, 300)}{difference}. "
            "Predict with a model trained on the gold file's labels, or fix the header."
        )
    pred = read_table(pred_path, text_column, id_column, label_columns=gold.label_names)
    if pred.labels is None:
        raise DataError(
            f"The prediction file {pred_path} has no labels (NONE in every label column). Write it with `emolightning predict`, which fills in 0/1 labels."
        )
    at = {row_id: i for i, row_id in enumerate(pred.ids)}
    missing = [row_id for row_id in gold.ids if row_id not in at]
    extra = sorted(set(at) - set(gold.ids))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} ID(s) of the gold file are not in the predictions (e.g. '{missing[0]}')")
        if extra:
            parts.append(f"{len(extra)} ID(s) in the predictions are not in the gold file (e.g. '{extra[0]}')")
        raise DataError(
            f"{pred_path} and {gold_path} hold different IDs: {'; '.join(parts)}. Predict the same file the gold labels belong to (IDs are matched, the order is free)."
        )
    preds = pred.labels[[at[row_id] for row_id in gold.ids]]
    return preds, gold.labels, gold.label_names


def score_files(pred_path: str, gold_path: str) -> dict[str, float]:
    preds, gold, names = aligned(pred_path, gold_path)
    scores = official_scores(torch.from_numpy(preds.astype(np.uint8)), torch.from_numpy(gold.astype(np.uint8)), names)
    return {"n": len(gold), **scores}


def format_scores(scores: dict) -> str:
    width = max(len(k) for k in scores)
    lines = [f"{'metric':<{width}}  score", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {v}" if k == "n" else f"{k:<{width}}  {v:.4f}" for k, v in scores.items()]
    return "\n".join(lines)
