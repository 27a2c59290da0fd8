"""Dev metrics and inference speed of emolightning checkpoints, side by side (the distillation experiment).

For each `--ckpt NAME=PATH` (any EmotionClassifier checkpoint, a distilled student's included):
the official dev metrics at threshold 0.5 and at the checkpoint's tuned thresholds (tuned on this
same dev split during fit, so optimistic), and the time of forward passes over the first
`--timing_texts` dev tweets, batched as evaluation batches them (longest first, padded per batch),
at each of `--batch_sizes`: median of `--repeats` timed passes after one warm-up pass. The first
checkpoint is the reference of the speed-up column (teacher time / model time).

    python benchmarks/distill_compare.py --data_dir ../shared/data/semeval2018-ec \
        --ckpt teacher=runs/.../teacher/best.ckpt --ckpt distilled=runs/.../student/best.ckpt --ckpt plain-l3=...

It prints a markdown table and one line `RESULT {...json...}`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from emolightning import EmotionClassifier, EmotionDataModule
from emolightning.data.batching import pad
from emolightning.metrics import official_scores
from emolightning.pretrained.encoders import layer_list


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def dev_metrics(model: EmotionClassifier, loader, device: torch.device) -> dict[str, float]:
    probs, target = [], []
    for batch in loader:
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        probs.append(torch.sigmoid(logits.float()).cpu())
        target.append(batch["labels"])
    probs, target = torch.cat(probs), torch.cat(target)
    fixed = official_scores(probs >= 0.5, target, model.label_names)
    tuned = official_scores(probs >= model.thresholds.cpu(), target, model.label_names)
    return {
        "n": len(target),
        **{k: fixed[k] for k in ("jaccard", "f1_micro", "f1_macro")},
        **{f"tuned/{k}": tuned[k] for k in ("jaccard", "f1_micro", "f1_macro")},
    }


@torch.inference_mode()
def time_forward(model: EmotionClassifier, input_ids: list[torch.Tensor], pad_id: int, batch_size: int, repeats: int, device: torch.device) -> float:
    """Median seconds of one forward pass over all `input_ids`, longest first, each batch padded to its longest."""
    order = sorted(range(len(input_ids)), key=lambda i: -len(input_ids[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        ids, mask = pad([input_ids[i] for i in order[start : start + batch_size]], pad_id)
        batches.append((ids.to(device), mask.to(device)))
    times = []
    for r in range(repeats + 1):  # the first pass warms up (allocator, kernels)
        sync(device)
        start = time.perf_counter()
        for ids, mask in batches:
            model(ids, mask)
        sync(device)
        if r:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="folder with the official E-c files (or builtin:demo)")
    parser.add_argument("--ckpt", action="append", required=True, metavar="NAME=PATH", help="a checkpoint to compare; the first is the speed-up reference")
    parser.add_argument("--batch_sizes", default="64,1", help="comma-separated batch sizes to time")
    parser.add_argument("--timing_texts", type=int, default=256, help="time passes over the first N dev tweets (0: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache_dir", default=None, help="tokenisation cache (default ~/.cache/emolightning)")
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args()
    device, sizes = torch.device(args.device), [int(b) for b in args.batch_sizes.split(",")]

    rows = []
    for spec in args.ckpt:
        name, path = spec.split("=", 1)
        model = EmotionClassifier.load_from_checkpoint(path, map_location="cpu").eval().to(device)
        data = EmotionDataModule(data_dir=args.data_dir, tokenizer=model.hparams.encoder, eval_batch_size=args.eval_batch_size, cache_dir=args.cache_dir)
        data.prepare_data()
        data.setup("validate")
        if data.label_names != model.label_names:
            raise SystemExit(f"{path} was trained on {model.label_names}, the data has {data.label_names}")
        split = data.splits["validation"]
        texts = split.input_ids[: args.timing_texts or None]
        pad_id = data._collate().pad_token_id
        row = {
            "name": name,
            "ckpt": path,
            "layers": len(layer_list(model.encoder)),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            **dev_metrics(model, data.val_dataloader(), device),
            "timing_texts": len(texts),
            "device": str(device),
            "threads": torch.get_num_threads(),
        }
        for b in sizes:
            row[f"forward_s/b{b}"] = time_forward(model, texts, pad_id, b, args.repeats, device)
        rows.append(row)
        print(json.dumps(row), flush=True)

    for row in rows:
        for b in sizes:
            row[f"speedup/b{b}"] = rows[0][f"forward_s/b{b}"] / row[f"forward_s/b{b}"]
    timing = "".join(f" | ms/pass b{b} | speed-up b{b}" for b in sizes)
    print(f"\n| model | layers | params M | dev jaccard | dev f1_micro | dev f1_macro | tuned jaccard{timing} |")
    print("|---|---|---|---|---|---|---|" + "---|---|" * len(sizes))
    for r in rows:
        timing = "".join(f" | {1000 * r[f'forward_s/b{b}']:.0f} | {r[f'speedup/b{b}']:.2f}x" for b in sizes)
        print(
            f"| {r['name']} | {r['layers']} | {r['params_m']:.1f} | {r['jaccard']:.4f} | {r['f1_micro']:.4f} | {r['f1_macro']:.4f} | {r['tuned/jaccard']:.4f}{timing} |"
        )
    print(
        f"\n(dev n={rows[0]['n']}; timing: {rows[0]['timing_texts']} dev tweets per pass, median of {args.repeats}, {device}, {rows[0]['threads']} threads; "
        "tuned thresholds were tuned on this dev split)"
    )
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(rows, f, indent=2)
    print("RESULT " + json.dumps(rows))


if __name__ == "__main__":
    main()
