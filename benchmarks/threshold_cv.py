"""How much do tuned thresholds help on tweets they were NOT tuned on? Cross-validation on dev.

Thresholds tuned during fit are tuned on the dev split itself, so their dev scores are optimistic.
This script predicts the dev split once with a checkpoint, then for `--splits` random halvings
tunes thresholds (emolightning's own `tune_thresholds`: a global grid, then per label, labels with
fewer than `--min_positives` positives keep the global one) on one half and scores the other,
both ways round. It reports the official metrics at 0.5, at the tuned global threshold only and at
the tuned per-label thresholds, each the mean over the held-out halves.

    python benchmarks/threshold_cv.py --data_dir ../shared/data/semeval2018-ec --ckpt best.ckpt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from recipes import dev_probs  # noqa: E402  (this folder is on sys.path when a script of it runs)

from emolightning.metrics import held_out_scores  # noqa: E402

KEYS = ("jaccard", "f1_micro", "f1_macro")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--splits", type=int, default=10, help="random halvings of dev (each scored both ways)")
    p.add_argument("--min_positives", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    probs, target, labels = dev_probs(args.ckpt, args.data_dir)
    # the same halvings as the recipes benchmark (metrics.held_out_scores); the rows this script has always printed
    scores = held_out_scores(probs, target, labels, halvings=args.splits, min_positives=args.min_positives, seed=args.seed)
    rows = {"0.5": scores["fixed"], "global": scores["global"], "per-label": scores["per_label"]}
    print(f"dev n={len(target)}, {args.splits} halvings x 2: thresholds tuned on one half, scored on the other (mean)\n")
    print("| thresholds | jaccard | f1_micro | f1_macro |\n|---|---:|---:|---:|")
    result = {}
    for name, means in rows.items():
        result[name] = {k: round(means[k], 4) for k in KEYS}
        print(f"| {name} | " + " | ".join(f"{result[name][k]:.4f}" for k in KEYS) + " |")
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
