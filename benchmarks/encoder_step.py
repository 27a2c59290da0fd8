"""One AdamW training step (forward, backward, step) of the bundled encoders, fp32 against bf16-mixed autocast.

Random token ids of `--length` tokens (48 is about the padded length of a length-grouped E-c batch),
batch `--batch_size`, a linear head on the first token, BCE over 11 labels. The configurations
alternate round by round in one process; the first `--warmup` rounds are dropped, medians of the rest.
On a CPU without native bf16 (no AMX or AVX-512 BF16) bf16-mixed is emulated: compare the rows.

    python benchmarks/encoder_step.py --encoders minilm mpnet --precisions 32-true bf16-mixed --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from emolightning.hardware import cpu_flags, native_bf16_cpu  # noqa: E402
from emolightning.pretrained.encoders import resolve_encoder  # noqa: E402

ENCODERS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "mpnet": "sentence-transformers/all-mpnet-base-v2"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    p.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"], choices=["32-true", "bf16-mixed"])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--length", type=int, default=48)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    from transformers import AutoModel

    torch.manual_seed(0)
    models = {}
    for name in args.encoders:
        encoder = AutoModel.from_pretrained(resolve_encoder(ENCODERS[name]))
        head = torch.nn.Linear(encoder.config.hidden_size, 11)
        models[name] = (encoder, head, torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=2e-5, fused=True))
    ids = torch.randint(1000, 20000, (args.batch_size, args.length))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (args.batch_size, 11)).float()

    def step(name: str, precision: str) -> float:
        encoder, head, optimizer = models[name]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(hidden).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    print(f"CPU native bf16: {native_bf16_cpu(cpu_flags())}; threads: {torch.get_num_threads()}", flush=True)
    times = {(n, pr): [] for n in args.encoders for pr in args.precisions}
    for r in range(args.rounds):
        for key in times:
            seconds = step(*key)
            print(f"round {r} {key[0]} {key[1]}: {seconds:.2f} s", flush=True)
            if r >= args.warmup:
                times[key].append(seconds)
    for (name, precision), values in times.items():
        print(f"| {name} | {precision} | {statistics.median(values) * 1000:.0f} ms | {len(values)} steps |")


if __name__ == "__main__":
    main()
