"""Inference speed of the MiniLM-L6 teacher vs its 3-layer student, on the dev tweets.

Speed does not depend on the weights, so this builds both from the bundled MiniLM (all 6
layers, and layers 0, 2, 4 as `configs/semeval/minilm-l3.yaml` does) and times forward passes
over the dev tweets, longest first, each batch padded to its longest (as evaluation batches them):
median of `--repeats` passes after a warm-up, per batch size.

    python benchmarks/student_speed.py --data_dir ../shared/data/semeval2018-ec
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from distill_compare import time_forward  # noqa: E402

from emolightning import EmotionClassifier, EmotionDataModule  # noqa: E402
from emolightning.pretrained.encoders import load_tokenizer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--encoder", default="sentence-transformers/all-MiniLM-L6-v2")
    p.add_argument("--batch_sizes", default="64,1")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dm = EmotionDataModule(data_dir=args.data_dir, tokenizer=args.encoder)
    dm.prepare_data()
    dm.setup("validate")
    ids = dm.splits["validation"].input_ids
    pad = load_tokenizer(args.encoder).pad_token_id
    models = {"teacher (6 layers)": None, "student (layers 0,2,4)": [0, 2, 4]}
    print(
        f"{len(ids)} dev tweets, {args.threads} threads, median of {args.repeats}\n\n| model | params (M) | batch | seconds | texts/s | speed-up |\n|---|---:|---:|---:|---:|---:|"
    )
    base = {}
    for name, layers in models.items():
        model = EmotionClassifier(encoder=args.encoder, label_names=dm.label_names, lr=1e-4, encoder_layers=layers).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        for b in (int(x) for x in args.batch_sizes.split(",")):
            s = time_forward(model, ids, pad, b, args.repeats, torch.device("cpu"))
            base.setdefault(b, s)
            print(f"| {name} | {params:.1f} | {b} | {s:.2f} | {len(ids) / s:.0f} | {base[b] / s:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
