"""Training throughput, peak memory and MFU of emolightning's classifier per precision, on one GPU.

For DistilBERT-, BERT- and RoBERTa-base-sized encoders (built from their configs with random
weights: nothing is downloaded) inside `EmotionClassifier` (pooling, head, the float32 BCE loss),
at `32-true`, `16-mixed` (autocast fp16 + GradScaler) and `bf16-mixed` (autocast bf16), on
tweet-length batches: lengths ~ N(27, 12) clipped to [8, 70] tokens, 32 texts padded to the
batch's own longest rounded up to a multiple of 8, as emolightning's collator does on a GPU
(`--pad_to_multiple_of 1`: no rounding). Batches are made up front and already on the device, so
this measures the model step, not the data loader. Every padded length is a new shape, which costs
a one-off kernel/plan selection: the warm-up runs every shape the timed steps will see (plus
`--warmup` steps), so no timed step pays it.

    python benchmarks/gpu_precision.py                        # the three encoders, three precisions
    python benchmarks/gpu_precision.py --models bert-base --precisions bf16-mixed --steps 100
    python benchmarks/gpu_precision.py --device cpu --tiny --steps 2 --warmup 1   # smoke test

MFU = 6 x N x (real tokens/s) / peak dense FLOP/s of the card, with N the parameters that do
matmuls (embedding tables are lookups and are left out); padding and attention score FLOPs are
not counted as useful work, so this is the model FLOPs utilisation of the tokens users care about.
32-true uses the card's fp32 peak, or its TF32 peak with `--matmul_precision high`.
It prints a markdown table; `--output_json` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from emolightning.hardware import PEAK_FLOPS, card_of, peak_flops  # noqa: E402
from emolightning.models.classifier import EmotionClassifier  # noqa: E402

LABELS = ["anger", "anticipation", "disgust", "fear", "joy", "love", "optimism", "pessimism", "sadness", "surprise", "trust"]
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")


def encoder_config(name: str, tiny: bool) -> dict:
    """The config dict of a base-sized encoder (or a tiny one of the same family, for smoke tests)."""
    from transformers import BertConfig, DistilBertConfig, RobertaConfig

    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if name == "distilbert-base":  # 6 layers, 768 wide, 30522 WordPieces
        config = DistilBertConfig(**({"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64} if tiny else {}))
    elif name == "bert-base":  # 12 layers, 768 wide, 30522 WordPieces
        config = BertConfig(**(small if tiny else {}))
    elif name == "roberta-base":  # 12 layers, 768 wide, 50265 BPE tokens
        config = RobertaConfig(
            vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, **(small if tiny else {})
        )
    else:
        raise SystemExit(f"unknown model {name!r}: choose from distilbert-base, bert-base, roberta-base")
    return config.to_dict()


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters outside embedding tables (those do lookups, not matmuls)."""
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def tweet_batches(n: int, batch_size: int, vocab_size: int, device: torch.device, seed: int = 0, pad_to_multiple_of: int = 1) -> list[dict]:
    """n batches of tweet-length texts: lengths ~ N(27, 12) clipped to [8, 70], padded per batch (up to a multiple of pad_to_multiple_of)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        lengths = (torch.randn(batch_size, generator=g) * 12 + 27).round().clamp(8, 70).long()
        longest = -(-int(lengths.max()) // pad_to_multiple_of) * pad_to_multiple_of
        mask = (torch.arange(longest)[None, :] < lengths[:, None]).long()
        ids = torch.randint(5, vocab_size, (batch_size, longest), generator=g) * mask
        labels = (torch.rand(batch_size, len(LABELS), generator=g) < 0.14).float()  # ~1.5 emotions per tweet
        batches.append({"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device), "tokens": int(lengths.sum())})
    return batches


def warmup_batches(batches: list[dict], warmup: int) -> list[dict]:
    """The first `warmup` batches, then one batch of every padded shape the timed ones (the rest) have that those lack."""
    plan = batches[:warmup]
    seen = {tuple(b["input_ids"].shape) for b in plan}
    for batch in batches[warmup:]:
        if tuple(batch["input_ids"].shape) not in seen:
            seen.add(tuple(batch["input_ids"].shape))
            plan.append(batch)
    return plan


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, precision: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    config = encoder_config(name, args.tiny)
    model = EmotionClassifier(encoder=name, label_names=LABELS, lr=2e-5, encoder_config=config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01, fused=device.type == "cuda")
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    # fp16's narrow range needs loss scaling; bf16 has fp32's range and needs none
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    batches = tweet_batches(args.warmup + args.steps, args.batch_size, model.encoder.config.vocab_size, device, pad_to_multiple_of=args.pad_to_multiple_of)
    row = {"model": name, "precision": precision, "params_M": sum(p.numel() for p in model.parameters()) / 1e6}

    def step(batch) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model.loss(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    warm = warmup_batches(batches, args.warmup)
    row["lengths"] = {"warmed": sorted({b["input_ids"].shape[1] for b in warm}), "timed": sorted({b["input_ids"].shape[1] for b in batches[args.warmup :]})}
    try:
        for batch in warm:  # allocator, kernel selection and autotuning, for every shape
            step(batch)
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for batch in batches[args.warmup :]:
            loss = step(batch)
        loss = loss.item()  # also waits for the device
        seconds = time.perf_counter() - start
    except torch.cuda.OutOfMemoryError:
        return {**row, "error": "out of memory"}
    tokens = sum(b["tokens"] for b in batches[args.warmup :])
    padded = sum(b["input_ids"].numel() for b in batches[args.warmup :])
    row.update(
        samples_per_s=args.steps * args.batch_size / seconds,
        tokens_per_s=tokens / seconds,
        step_ms=1000 * seconds / args.steps,
        padding=1 - tokens / padded,
        peak_mem_GiB=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        final_loss=loss,
    )
    peak = peak_flops(args.card, precision, args.matmul_precision)
    row["mfu"] = None if peak is None else 6 * matmul_params(model) * row["tokens_per_s"] / peak
    return row


def markdown(rows: list[dict]) -> str:
    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)

    lines = ["| model | params (M) | precision | samples/s | real tokens/s | step (ms) | peak memory (GiB) | MFU |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {fmt(r['params_M'], '.1f')} | {r['precision']} | {r['error']} | | | | |")
            continue
        mfu = None if r["mfu"] is None else 100 * r["mfu"]
        lines.append(
            f"| {r['model']} | {r['params_M']:.1f} | {r['precision']} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
            f"{r['step_ms']:.1f} | {fmt(r['peak_mem_GiB'], '.2f')} | {fmt(mfu, '.1f')}{'' if mfu is None else '%'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["distilbert-base", "bert-base", "roberta-base"])
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=50, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument(
        "--pad_to_multiple_of", type=int, default=8, help="round each batch's padded length up to a multiple of this, as emolightning does on a GPU (1: off)"
    )
    p.add_argument("--device", default="cuda", help="cuda, cuda:1, or cpu (smoke tests only)")
    p.add_argument("--tiny", action="store_true", help="2-layer, 32-wide encoders: a smoke test, not a measurement")
    p.add_argument(
        "--matmul_precision", default="highest", choices=["highest", "high", "medium"], help="torch.set_float32_matmul_precision: 'high' lets 32-true use TF32"
    )
    p.add_argument("--card", default=None, help=f"peak-FLOPs entry, one of {list(PEAK_FLOPS)} (default: detected)")
    p.add_argument("--output_json", default=None)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or pass --device cpu --tiny for a smoke test")
    torch.set_float32_matmul_precision(args.matmul_precision)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    args.card = args.card or (card_of(device_name) if device.type == "cuda" else None)

    rows = []
    for name in args.models:
        for precision in args.precisions:
            if precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
                rows.append({"model": name, "precision": precision, "params_M": None, "error": "no bf16 on this card"})
                continue
            rows.append(bench(name, precision, args, device))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(
        f"device: {device_name} (peak FLOPs entry: {args.card or 'unknown, MFU n/a'}); torch {torch.__version__}; "
        f"batch {args.batch_size} padded to a multiple of {args.pad_to_multiple_of}, {args.steps} timed steps after {args.warmup} and a warm-up step per shape; float32 matmul precision {args.matmul_precision}\n"
    )
    print(markdown(rows))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps({"device": device_name, "card": args.card, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
