"""Time from the raw official files to the first training batch, cold (empty cache) and cached.

Each measurement runs in a fresh subprocess (imports excluded from the timing): build the
`EmotionDataModule`, `prepare_data` (read, check and tokenise every split, or load the cache),
`setup("fit")` and draw the first batch of `train_dataloader()`. Cold runs get an empty cache
directory; cached runs reuse the one the first cold run wrote. Medians of `--repeats`.

    python benchmarks/data_speed.py --data_dir ../shared/data/semeval2018-ec --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def worker(data_dir: str, cache_dir: str) -> None:
    from emolightning import EmotionDataModule
    from emolightning.pretrained.encoders import load_tokenizer

    start = time.perf_counter()
    dm = EmotionDataModule(data_dir=data_dir, cache_dir=cache_dir, batch_size=16)
    load_tokenizer(dm.hparams.tokenizer)
    tokenizer_s = time.perf_counter() - start
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    seconds = time.perf_counter() - start
    print("RESULT " + json.dumps({"seconds": round(seconds, 3), "tokenizer_load_s": round(tokenizer_s, 3), "batch": list(batch["input_ids"].shape)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(*args.worker)

    def run(cache_dir: str) -> dict:
        out = subprocess.run(
            [sys.executable, __file__, "--data_dir", args.data_dir, "--worker", args.data_dir, cache_dir], capture_output=True, text=True, check=True
        ).stdout
        return json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:])

    with tempfile.TemporaryDirectory() as shared:
        times = {"cold": [], "cached": []}
        for r in range(args.repeats):
            with tempfile.TemporaryDirectory() as empty:
                times["cold"].append(run(empty)["seconds"])
            if r == 0:
                run(shared)  # fill the shared cache once
            times["cached"].append(run(shared)["seconds"])
            print(f"repeat {r}: cold {times['cold'][-1]:.2f} s, cached {times['cached'][-1]:.2f} s", flush=True)
    cold, cached = statistics.median(times["cold"]), statistics.median(times["cached"])
    print(f"\nraw files -> first training batch (medians of {args.repeats}): cold {cold:.2f} s, cached {cached:.2f} s ({cold / cached:.1f}x)")


if __name__ == "__main__":
    main()
