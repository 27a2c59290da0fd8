"""The official SemEval-2018 Task 1 E-c scores worked out again, apart from emolightning, to check the numbers it reports.

Written from the task's definition (Mohammad et al., 2018) and its official scorer, whose `evaluate_multilabel`
calls scikit-learn 0.19's `jaccard_similarity_score` and `f1_score(average=...)`; nothing here comes from
emolightning/metrics.py, and it runs on plain Python lists, not on the torch tensors it checks:

- Jaccard: per tweet |gold & predicted| / |gold | predicted|, averaged over the tweets. A tweet with no gold and no
  predicted emotion scores 1 (`jaccard_similarity_score` sets the rows whose union is empty to 1.0).
- micro-F1: precision and recall over every (tweet, label) decision, F1 = 2PR / (P + R).
- per-label F1: the same on one label's column, with a precision or recall of 0/0 counted as 0 (scikit-learn's
  default), so a label never gold and never predicted scores 0; macro-F1 is the mean over every label.

A tweet is predicted to carry a label when its probability is at least the label's threshold (the rule of
`emolightning predict`). Probabilities read from a prediction file carry 6 decimals, so `decisions` refuses any
that lies within 1e-6 of its threshold, where the written value cannot tell the side.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

NEAR = 1e-6  # a written probability is its true value rounded to 6 decimals


def f1(tp: int, fp: int, fn: int) -> float:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def official_scores(gold: list[list[int]], predicted: list[list[int]], labels: list[str]) -> dict[str, float]:
    """{jaccard, f1_micro, f1_macro, f1/<label>} of 0/1 rows `predicted` against 0/1 rows `gold`, as the official scorer computes them."""
    assert len(gold) == len(predicted) and gold, "one predicted row per gold row"
    jaccard = 0.0
    for g, p in zip(gold, predicted):
        union = sum(1 for a, b in zip(g, p) if a or b)
        jaccard += 1.0 if union == 0 else sum(1 for a, b in zip(g, p) if a and b) / union
    counts = []
    for j in range(len(labels)):
        column = [(g[j], p[j]) for g, p in zip(gold, predicted)]
        counts.append((sum(1 for a, b in column if a and b), sum(1 for a, b in column if b and not a), sum(1 for a, b in column if a and not b)))
    per_label = [f1(*c) for c in counts]
    scores = {
        "jaccard": jaccard / len(gold),
        "f1_micro": f1(sum(c[0] for c in counts), sum(c[1] for c in counts), sum(c[2] for c in counts)),
        "f1_macro": sum(per_label) / len(per_label),
    }
    scores.update({f"f1/{name}": value for name, value in zip(labels, per_label)})
    return scores


def decisions(probs: list[list[float]], thresholds: list[float]) -> list[list[int]]:
    """0/1 rows: probability >= the label's threshold; a probability within NEAR of its threshold fails the test (pick other data)."""
    near = [(i, j, p, t) for i, row in enumerate(probs) for j, (p, t) in enumerate(zip(row, thresholds)) if abs(p - t) <= NEAR]
    assert not near, f"probabilities too close to their threshold to tell the decision from a 6-decimal file: {near}"
    return [[int(p >= t) for p, t in zip(row, thresholds)] for row in probs]


def stage_scores(stage: str, gold: list[list[int]], probs: list[list[float]], labels: list[str], tuned: list[float], fixed: float = 0.5) -> dict[str, float]:
    """What `emolightning test`/`validate` must report for a split: `stage/*` at `fixed` for every label, `stage/tuned/*` at the thresholds `tuned`."""
    at_fixed = official_scores(gold, decisions(probs, [fixed] * len(labels)), labels)
    at_tuned = official_scores(gold, decisions(probs, tuned), labels)
    expected = {f"{stage}/{k}": v for k, v in at_fixed.items()}
    expected.update({f"{stage}/tuned/{k}": at_tuned[k] for k in ("jaccard", "f1_micro", "f1_macro")})
    return expected


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of an E-c style file (tab-separated, or comma-separated for .csv) as dicts keyed by its header."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="," if str(path).endswith(".csv") else "\t", quoting=csv.QUOTE_MINIMAL))


def gold_and_probabilities(gold_file: Path, probabilities_file: Path, labels: list[str], id_column: str = "ID") -> tuple[list[list[int]], list[list[float]]]:
    """The gold 0/1 rows of `gold_file` and, row for row (matched by ID), the `p_<label>` columns `predict --probabilities true` wrote."""
    gold = {row[id_column]: [int(row[name]) for name in labels] for row in read_rows(gold_file)}
    written = {row[id_column]: [float(row[f"p_{name}"]) for name in labels] for row in read_rows(probabilities_file)}
    assert sorted(written) == sorted(gold), "the prediction file holds one row per gold row"
    ids = sorted(gold)
    return [gold[i] for i in ids], [written[i] for i in ids]


def printed_scores(output: str, stage: str) -> dict[str, float]:
    """`stage/...` values in the metrics table Lightning prints after validate/test (rich or plain), at full precision."""
    table = {}
    for line in output.splitlines():
        match = re.fullmatch(rf"[\s│|]*({stage}/[\w/]+)[\s│|]+([-+0-9.eE]+)[\s│|]*", line)
        if match:
            table[match.group(1)] = float(match.group(2))
    return table


def printed_summary(output: str, stage: str) -> dict[str, float]:
    """The 4-decimal scores of emolightning's `[stage epoch N] n=... threshold 0.5: ... | tuned: ...` line, as `stage/...` keys."""
    line = re.search(rf"\[{stage} epoch \d+\] n=.*", output).group(0)
    fixed, tuned = line.split("|")
    found = {}
    for prefix, part in ((f"{stage}/", fixed), (f"{stage}/tuned/", tuned)):
        for name in ("jaccard", "f1_micro", "f1_macro"):
            found[prefix + name] = float(re.search(rf"\b{name} ([0-9.]+)", part).group(1))
    return found


def summary_only(scores: dict[str, float]) -> dict[str, float]:
    """The scores the one-line summary `[stage epoch N] ...` prints: Jaccard and the two F1 means, at 0.5 and tuned (no per-label F1)."""
    return {k: v for k, v in scores.items() if "/f1/" not in k}


def assert_scores(reported: dict[str, float], expected: dict[str, float], abs_tol: float, what: str) -> None:
    """Every expected key is reported, each within `abs_tol` (float32 sums: 1e-6; 4 printed decimals: 5e-5)."""
    missing = sorted(set(expected) - set(reported))
    assert not missing, f"{what} lacks {missing}"
    wrong = {k: (float(reported[k]), v) for k, v in expected.items() if abs(float(reported[k]) - v) > abs_tol}
    assert not wrong, f"{what}: (reported, expected) {wrong}"


def gold_table(gold_file: Path, labels: list[str], text_column: str = "Tweet") -> tuple[list[str], list[list[int]]]:
    """The texts and gold 0/1 rows of a labelled file, in file order (the order `test` and `validate` index a split by)."""
    rows = read_rows(gold_file)
    return [row[text_column] for row in rows], [[int(row[name]) for name in labels] for row in rows]


def checkpoint_thresholds(checkpoint) -> list[float]:
    """The per-label thresholds a checkpoint stores (the `thresholds` buffer tuned on dev), which `test/tuned/*` must use."""
    import torch

    return torch.load(checkpoint, weights_only=True)["state_dict"]["thresholds"].tolist()


def model_probabilities(checkpoint, texts: list[str]) -> list[list[float]]:
    """The fp32 probabilities of a checkpoint's model, one text at a time with its own tokenizer: no batching and no padding,
    another path to the same numbers than `test`'s batches (the model is emolightning's; only the scoring here is independent)."""
    import torch

    from emolightning import EmotionClassifier
    from emolightning.pretrained.encoders import load_tokenizer

    model = EmotionClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval().float()
    tokenizer = load_tokenizer(model.hparams.encoder)
    with torch.no_grad():
        return [torch.sigmoid(model(**{k: v for k, v in tokenizer([t], return_tensors="pt").items() if k != "token_type_ids"}))[0].tolist() for t in texts]
