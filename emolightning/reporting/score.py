"""`emolightning score PRED GOLD`: the official SemEval-2018 E-c metrics of a prediction file.

    emolightning score predictions.csv test.csv [--json] [--ckpt_path RUN] [--data.id_column msg_id ...]

Both files are tables that the data module reads (.csv, .txt/.tsv, .jsonl, .json, .parquet: every
format `emolightning predict` writes), with the data module's column options and the same
auto-detection. The columns come, first to last, from the `--data.*` options; from the checkpoint
of `--ckpt_path` (its data options and label names); from the prediction file's own header (predict
writes the input's ID and text columns first, so when the gold file has both, they are the ID and
text of both files); else each file's are detected as the data module detects them. Rows are matched
by ID, so their order does not matter; label columns are matched by name, and the `p_<label>`
probability columns of `emolightning predict` are ignored. Texts are not compared (an empty one is
no error). Prints sample-averaged Jaccard (a row with no gold and no predicted label scores 1),
micro-F1, macro-F1 and each label's F1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.formats import clip, read_header
from ..data.tables import chosen_columns, label_difference, read_table
from ..errors import DataError
from ..metrics import official_scores


@dataclass
class Columns:
    """The data module's column options (None: detected, as the data module does)."""

    text_column: str | None = None
    id_column: str | None = None
    label_columns: list[str] | None = None
    labels_column: str | None = None
    label_names: list[str] | None = None


def checkpoint_columns(ckpt_path: str) -> Columns:
    """The column options a checkpoint (or a run folder's best one) was trained with, and its labels as the label columns."""
    from ..models.checkpoints import check_checkpoint, checkpoint_path, hyperparameters, label_names

    checkpoint = check_checkpoint(checkpoint_path(ckpt_path))
    data = hyperparameters(checkpoint)[1]
    names = label_names(checkpoint)
    labels_column = data.get("labels_column")
    return Columns(
        data.get("text_column"),
        data.get("id_column"),
        None if labels_column else (data.get("label_columns") or names),
        labels_column,
        names if labels_column else None,
    )


def merged(given: Columns, fallback: Columns) -> Columns:
    """`given`'s options, each unset one taken from `fallback`; the label options travel together (columns, or a list column and its names)."""
    labels = given if given.label_columns or given.labels_column else fallback
    return Columns(
        given.text_column if given.text_column is not None else fallback.text_column,
        given.id_column if given.id_column is not None else fallback.id_column,
        labels.label_columns,
        labels.labels_column,
        given.label_names or labels.label_names,
    )


def predict_layout(pred_path: str, gold_path: str) -> Columns:
    """The ID and text columns as `emolightning predict` writes them (its first two, the input's own names), when the gold file has both; else unset."""
    pred, gold = read_header(pred_path), read_header(gold_path)
    if len(pred) > 2 and pred[0] != pred[1] and pred[0] in gold and pred[1] in gold:
        return Columns(text_column=pred[1], id_column=pred[0])
    return Columns()


def aligned(pred_path: str, gold_path: str, columns: Columns | None = None):
    """(preds, gold, label names): (N, L) 0/1 matrices with the rows in the gold file's order."""
    columns = columns or Columns()
    if columns.text_column is None and columns.id_column is None:
        columns = merged(columns, predict_layout(pred_path, gold_path))
    gold = read_table(
        gold_path,
        columns.text_column,
        columns.id_column,
        columns.label_columns,
        labels_column=columns.labels_column,
        label_names=columns.label_names,
        allow_empty_texts=True,
    )
    if gold.labels is None:
        raise DataError(
            f"The gold file {gold_path} has no labels (NONE in every label column): it is the unlabelled test file. Score against the gold labels (e.g. 2018-E-c-En-test-gold.txt)."
        )
    header = read_header(pred_path)
    text, row_id = chosen_columns(pred_path, header, columns.text_column, columns.id_column)
    found = [c for c in header if c not in (text, row_id) and not str(c).startswith("p_")]
    if (difference := label_difference(found, gold.label_names)) is not None:
        raise DataError(
            f"The label columns of {pred_path} {clip(found, 300)} do not match those of {gold_path} {clip(gold.label_names, 300)}{difference}. "
            "Predict with a model trained on the gold file's labels, or fix the header; `--data.text_column`, `--data.id_column` and "
            "`--data.label_columns` (or `--ckpt_path`) name the columns."
        )
    pred = read_table(pred_path, text, row_id, label_columns=gold.label_names, allow_empty_texts=True)
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
            f"{pred_path} and {gold_path} hold different IDs: {'; '.join(parts)}. Predict the same file the gold labels belong to (IDs are matched, "
            "the order is free), or name the ID column with `--data.id_column`."
        )
    preds = pred.labels[[at[row_id] for row_id in gold.ids]]
    return preds, gold.labels, gold.label_names


def score_files(pred_path: str, gold_path: str, columns: Columns | None = None, ckpt_path: str | None = None) -> dict[str, float]:
    """The scores of `pred_path` against `gold_path`; `columns` (options given) win over those of the checkpoint `ckpt_path`."""
    columns = columns or Columns()
    if ckpt_path:
        columns = merged(columns, checkpoint_columns(ckpt_path))
    preds, gold, names = aligned(pred_path, gold_path, columns)
    scores = official_scores(torch.from_numpy(preds.astype(np.uint8)), torch.from_numpy(gold.astype(np.uint8)), names)
    return {"n": len(gold), **scores}


def format_scores(scores: dict) -> str:
    width = max(len(k) for k in scores)
    lines = [f"{'metric':<{width}}  score", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {v}" if k == "n" else f"{k:<{width}}  {v:.4f}" for k, v in scores.items()]
    return "\n".join(lines)
