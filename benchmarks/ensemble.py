"""Does averaging seeds pay? Single-seed mean ± std against the ensemble of the same runs, on dev, with honest thresholds.

Reads the dev predictions that benchmarks/recipes.py keeps in each run directory (dev_probs.pt:
probabilities, gold labels, label names), so nothing is retrained or re-predicted. For every
threshold strategy it prints the members' mean ± standard deviation and the ensemble's scores (the
members' probabilities averaged, optionally weighted), each with held-out thresholds: chosen on one
random half of dev, scored on the other, both ways, 10 halvings (metrics.held_out_scores).

    python benchmarks/ensemble.py --runs runs/recipes/baseline/seed{1..5}

A run without dev_probs.pt is scored first with `python benchmarks/recipes.py --recipes ... --seeds ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from emolightning.metrics import THRESHOLD_STRATEGIES, held_out_scores  # noqa: E402
from emolightning.models.averaging import average_probabilities  # noqa: E402

KEYS = ("jaccard", "f1_micro", "f1_macro")


def load_runs(runs: list[str]) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """Each run's (N, L) dev probabilities, the shared gold labels and label names; refuses runs predicted on other data."""
    probs, target, labels = [], None, None
    for run in runs:
        path = os.path.join(run, "dev_probs.pt")
        if not os.path.exists(path):
            raise SystemExit(f"{path} does not exist: score the run with benchmarks/recipes.py first (it writes dev_probs.pt).")
        saved = torch.load(path)
        if target is None:
            target, labels = saved["target"], list(saved["labels"])
        elif list(saved["labels"]) != labels or not torch.equal(saved["target"], target):
            raise SystemExit(f"{path}: other labels or other gold rows than {runs[0]}: an ensemble needs predictions of the same dev split.")
        probs.append(saved["probs"].float())
    return probs, target, labels


def cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="run directories of benchmarks/recipes.py (each with dev_probs.pt)")
    p.add_argument("--weights", nargs="+", type=float, help="one weight per run for the ensemble (default: equal)")
    p.add_argument("--halvings", type=int, default=10)
    args = p.parse_args()

    probs, target, labels = load_runs(args.runs)
    singles = [held_out_scores(x, target, labels, halvings=args.halvings) for x in probs]
    ensemble = held_out_scores(average_probabilities(probs, args.weights), target, labels, halvings=args.halvings)
    print(
        f"dev n={len(target)}, {len(probs)} runs; thresholds held out: chosen on one half of dev, scored on the other ({args.halvings} halvings x 2); in points\n"
    )
    print("| thresholds | model | Jaccard | micro-F1 | macro-F1 |\n|---|---|---:|---:|---:|")
    for strategy in THRESHOLD_STRATEGIES:
        name = "fixed (0.5)" if strategy == "fixed" else strategy
        print(f"| {name} | single seed, mean ± std of {len(probs)} | " + " | ".join(cell([100 * s[strategy][k] for s in singles]) for k in KEYS) + " |")
        print(f"| {name} | ensemble of {len(probs)} | " + " | ".join(f"{100 * ensemble[strategy][k]:.2f}" for k in KEYS) + " |")
    result = {
        "runs": args.runs,
        "single_mean": {w: {k: statistics.mean(s[w][k] for s in singles) for k in KEYS} for w in THRESHOLD_STRATEGIES},
        "ensemble": ensemble,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
