"""Where a training step's time goes, and what emolightning's choices save (before/after).

One optimizer step of the bundled MiniLM classifier on batches of real training tweets
(batch 16), split into forward, backward and optimizer, for:
  - padding: every batch padded to 128 tokens (a fixed-length collator) vs to its own longest
    text after length grouping (emolightning's sampler and collator);
  - optimizer: AdamW with the default for-each kernels vs `fused=True` (emolightning's);
  - precision: fp32 vs bf16 autocast (`--trainer.precision bf16-mixed`).
Median over `--steps` steps after 3 warm-up steps, all configurations in one process.

Each row also gives the step's achieved GFLOP/s: the matmul FLOPs of one forward and backward,
counted by torch.utils.flop_counter.FlopCounterMode on a batch of the row's median length, over the
median step time. The limit to read them against is printed first: the GFLOP/s of a large fp32
and a large bf16 matmul on the same threads (what the cores reach when the matrices are big).

    python benchmarks/step_profile.py --data_dir ../shared/data/semeval2018-ec
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from emolightning import EmotionClassifier, EmotionDataModule  # noqa: E402
from emolightning.data.batching import pad  # noqa: E402
from emolightning.models.heads import MeanPooling  # noqa: E402


def batches(ids: list[torch.Tensor], labels: torch.Tensor, batch_size: int, steps: int, pad_to: int | None, grouped: bool):
    """`steps` batches: random tweets, or (grouped) runs of tweets of similar length, as the sampler makes them."""
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(ids), generator=gen).tolist()
    if grouped:  # the sampler sorts mega-batches of 50 batches by length
        mega = batch_size * 50
        order = [i for s in range(0, len(order), mega) for i in sorted(order[s : s + mega], key=lambda i: -len(ids[i]))]
    out = []
    for b in range(steps):
        rows = order[b * batch_size * 7 % len(order) :][:batch_size]  # spread over the epoch
        x, m = pad([ids[i] for i in rows], 0, multiple_of=pad_to)  # pad_to=128: every batch (max_length) is 128 long
        out.append((x, m, labels[rows]))
    return out


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of an n x n @ n x n matmul in `dtype` (median of `repeats`, after one warm-up)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def step_flops(model, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor) -> int:
    """Matmul FLOPs of one forward + backward of the model on (x, m) (attention and linear layers)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model.loss(model(x, m).float(), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def profile(model, data, fused: bool, bf16: bool) -> tuple[float, float, float, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused, foreach=None if fused else True)
    times = []
    for step, (x, m, y) in enumerate(data):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x, m)
        loss = model.loss(logits.float(), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if step >= 3:
            times.append((t1 - t0, t2 - t1, t3 - t2))
    f, b, o = (statistics.median(t) for t in zip(*times))
    tokens = sum(int(x.numel()) for x, _, _ in data) / len(data)
    return f, b, o, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dm = EmotionDataModule(data_dir=args.data_dir)
    dm.prepare_data()
    dm.setup("fit")
    train = dm.splits["train"]
    model = EmotionClassifier(encoder=dm.hparams.tokenizer, label_names=dm.label_names, lr=1e-5, head=MeanPooling())
    model.train()
    configs = [  # (name, pad_to, grouped, fused, bf16)
        ("pad to 128, for-each AdamW, fp32", 128, False, False, False),
        ("dynamic padding, for-each AdamW, fp32", None, False, False, False),
        ("length-grouped dynamic padding, for-each AdamW, fp32", None, True, False, False),
        ("length-grouped, fused AdamW, fp32 (emolightning default)", None, True, True, False),
        ("length-grouped, fused AdamW, bf16-mixed", None, True, True, True),
    ]
    peak = {name: matmul_peak(dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(f"MiniLM-L6, batch {args.batch_size}, {args.threads} threads, median of {args.steps - 3} steps")
    print(f"matmul peak (2048 x 2048 x 2048, {args.threads} threads): fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s\n")
    print("| configuration | padded tokens/batch | forward ms | backward ms | optimizer ms | step ms | GFLOP/step | GFLOP/s | of peak |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, pad_to, grouped, fused, bf16 in configs:
        data = batches(train.input_ids, train.labels, args.batch_size, args.steps, pad_to, grouped)
        f, b, o, tokens = profile(model, data, fused, bf16)
        x, m, y = sorted(data, key=lambda batch: batch[0].numel())[len(data) // 2]  # the median-length batch
        gflop = step_flops(model, x, m, y) / 1e9
        achieved = gflop / (f + b)  # the optimizer does no matmuls: its time is left out of the rate
        of_peak = achieved / peak["bf16" if bf16 else "fp32"]
        print(
            f"| {name} | {tokens:.0f} | {f * 1e3:.0f} | {b * 1e3:.0f} | {o * 1e3:.0f} | {(f + b + o) * 1e3:.0f} | {gflop:.1f} | {achieved:.0f} | {of_peak:.0%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
