"""From a trained checkpoint to a scored submission and an exported model, on real data.

1. Writes the dev split as the official *unlabelled* test file is distributed (labels `NONE`).
2. `emolightning predict` on it -> a submission file.
3. Scores that file against the dev gold with an independent scorer written here from the task's
   definition (plain Python, nothing from emolightning), and with `emolightning score`; both must agree.
4. `emolightning export`, then the logits of plain transformers (`AutoModelForSequenceClassification`,
   `trust_remote_code=True`) on every dev tweet against emolightning's own: max abs difference.

    python benchmarks/submission_check.py --data_dir ../shared/data/semeval2018-ec \
        --ckpt RUN/checkpoints/best-*.ckpt --config RUN/config.yaml
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def read_official(path: str) -> tuple[list[str], dict[str, list[int]]]:
    """Label names and {ID: 0/1 labels} of an official E-c file."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[0][2:], {r[0]: [int(x) for x in r[2:]] for r in rows[1:]}


def independent_scores(pred_path: str, gold_path: str) -> dict[str, float]:
    """Sample-averaged Jaccard (empty gold and empty prediction = 1), micro-F1, macro-F1."""
    labels, gold = read_official(gold_path)
    pred_labels, pred = read_official(pred_path)
    assert pred_labels == labels and set(pred) == set(gold), "IDs or label columns differ"
    jaccard, tp, fp, fn = 0.0, [0] * len(labels), [0] * len(labels), [0] * len(labels)
    for tweet_id, g in gold.items():
        p = pred[tweet_id]
        inter = sum(a and b for a, b in zip(p, g))
        union = sum(a or b for a, b in zip(p, g))
        jaccard += 1.0 if union == 0 else inter / union
        for j, (a, b) in enumerate(zip(p, g)):
            tp[j] += a and b
            fp[j] += a and not b
            fn[j] += b and not a
    f1 = lambda t, p_, n: 2 * t / (2 * t + p_ + n) if t + p_ + n else 0.0  # noqa: E731
    return {"jaccard": jaccard / len(gold), "f1_micro": f1(sum(tp), sum(fp), sum(fn)), "f1_macro": sum(f1(*c) for c in zip(tp, fp, fn)) / len(labels)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--config", required=True, help="the run's saved config.yaml")
    args = p.parse_args()
    gold = glob.glob(os.path.join(args.data_dir, "*-dev.txt"))[0]
    with tempfile.TemporaryDirectory() as work:
        unlabelled = os.path.join(work, "2018-E-c-En-test.txt")
        with open(gold, encoding="utf-8") as src, open(unlabelled, "w", encoding="utf-8") as dst:
            header = src.readline()
            dst.write(header)
            n_labels = len(header.rstrip("\n").split("\t")) - 2
            for line in src:
                dst.write("\t".join(line.rstrip("\n").split("\t")[:2] + ["NONE"] * n_labels) + "\n")
        pred = os.path.join(work, "E-C_en_pred.txt")
        emo = [sys.executable, "-m", "emolightning"]
        subprocess.run(
            [
                *emo,
                "predict",
                "--config",
                args.config,
                "--ckpt_path",
                args.ckpt,
                "--data.predict_file",
                unlabelled,
                "--output",
                pred,
                "--trainer.logger",
                "false",
                "--trainer.enable_progress_bar",
                "false",
                "--trainer.default_root_dir",
                work,
            ],
            check=True,
            cwd=REPO,
            capture_output=True,
        )
        ours = independent_scores(pred, gold)
        theirs = json.loads(subprocess.run([*emo, "score", pred, gold, "--json"], check=True, cwd=REPO, capture_output=True, text=True).stdout)
        print("independent scorer :", json.dumps({k: round(v, 4) for k, v in ours.items()}))
        print("emolightning score :", json.dumps({k: round(theirs[k], 4) for k in ours}))
        assert all(abs(ours[k] - theirs[k]) < 1e-6 for k in ours), "the two scorers disagree"  # float32 vs float64

        export = os.path.join(work, "export")
        subprocess.run([*emo, "export", "--ckpt_path", args.ckpt, "--output", export], check=True, cwd=REPO, capture_output=True)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        sys.path.insert(0, str(REPO))
        from emolightning import EmotionClassifier
        from emolightning.data.tables import read_table

        texts = read_table(gold).texts
        tok = AutoTokenizer.from_pretrained(export)
        hf = AutoModelForSequenceClassification.from_pretrained(export, trust_remote_code=True).eval()
        emo_model = EmotionClassifier.load_from_checkpoint(args.ckpt, map_location="cpu").eval()
        worst = 0.0
        with torch.inference_mode():
            for i in range(0, len(texts), 64):
                enc = tok(texts[i : i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt")
                a = hf(**enc).logits
                b = emo_model(enc["input_ids"], enc["attention_mask"])
                worst = max(worst, (a - b).abs().max().item())
        print(f"export logits parity on {len(texts)} dev tweets: max abs difference {worst:.2e} (limit 1e-4)")
        assert worst <= 1e-4


if __name__ == "__main__":
    main()
