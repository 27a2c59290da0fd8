"""Prediction memory: peak RSS and speed of `emolightning predict` as the input grows.

`predict` streams its input (emolightning/data/stream.py): memory should stay flat from a few thousand
texts to 100k. Each run is a fresh process through the real CLI (timed: model load, the checking
pass, tokenisation, prediction, writing; imports excluded), peak RSS from wait4. `--trees` puts
other checkouts side by side (e.g. a `git worktree` of the commit before streaming), alternating
order per repeat; their label rows are compared with the first tree's.

    python benchmarks/predict_memory.py --data_dir ../shared/data/semeval2018-ec --ckpt RUN/checkpoints/best.ckpt \\
        --config RUN/config.yaml --sizes 3544 20000 100000 --trees . /tmp/before-streaming

The texts are the dev tweets over and over, with unique IDs, in the unlabelled official format.
`--padding` instead prints how many more tokens the batches hold than the texts, for batches cut
from length-sorted chunks of several sizes (what `data.predict_chunk_batches` trades for memory).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from emolightning.cli.main import run_cli  # from PYTHONPATH: the tree under test

    start = time.perf_counter()
    run_cli(
        [
            "predict",
            "--config",
            args.config,
            "--ckpt_path",
            args.ckpt,
            "--data.predict_file",
            args.texts_file,
            "--data.cache_dir",
            os.path.join(args.work, "cache"),
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.accelerator",
            "cpu",
            "--trainer.default_root_dir",
            args.work,
            "--output",
            args.output,
        ]
    )
    seconds = time.perf_counter() - start
    print("RESULT " + json.dumps({"seconds": round(seconds, 2), "texts_per_s": round(args.size / seconds, 1)}))


def write_texts(dev_file: str, size: int, path: str) -> None:
    lines = open(dev_file, encoding="utf-8").read().split("\n")
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:] if line]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(header) + "\n")
        for i, row in zip(range(size), itertools.cycle(rows)):
            f.write("\t".join([f"t-{i:07d}", row[1], *["NONE"] * (len(header) - 2)]) + "\n")


def padding_overhead(args, tokenizer: str, batch_size: int = 64, max_length: int = 128) -> None:
    from emolightning.data.tables import find_split_file, read_table
    from emolightning.pretrained.encoders import load_tokenizer

    for split in ("validation", "train"):
        texts = read_table(find_split_file(args.data_dir, split)).texts
        texts = [t for _, t in zip(range(max(args.sizes)), itertools.cycle(texts))]
        lengths = [min(len(ids), max_length) for ids in load_tokenizer(tokenizer)(texts)["input_ids"]]
        overhead = {}
        for chunk in (batch_size, 512, 2048, 8192, len(lengths)):
            padded = 0
            for start in range(0, len(lengths), chunk):
                ordered = sorted(lengths[start : start + chunk], reverse=True)
                padded += sum(len(ordered[k : k + batch_size]) * ordered[k] for k in range(0, len(ordered), batch_size))
            overhead[chunk] = f"{padded / sum(lengths) - 1:+.1%}"
        print(f"{split} tweets cycled to {len(lengths)}, batches of {batch_size}: padded tokens over real ones, by chunk size: {overhead}")


def label_rows(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.split("\t", 2)[2] for line in f][1:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="folder with the official dev file (its tweets are the texts)")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--config", required=True, help="the run's saved config.yaml")
    p.add_argument("--sizes", type=int, nargs="+", default=[3544, 20000, 100000])
    p.add_argument("--trees", nargs="+", default=["."], help="checkouts whose emolightning to run (first: the reference)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--padding", action="store_true", help="only print the padding overhead of each chunk size (no prediction)")
    for hidden in ("--worker", "--texts_file", "--output", "--work", "--size"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.size = int(args.size)
        return worker(args)

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    from train_speed import run_measured

    from emolightning.data.tables import find_split_file

    if args.padding:
        import yaml

        return padding_overhead(args, yaml.safe_load(open(args.config))["model"]["init_args"]["encoder"])  # the tokenizer is linked to it
    trees = [str(Path(t).resolve()) for t in args.trees]
    results: dict[tuple[int, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes:
            texts_file = os.path.join(work, f"texts{size}.txt")
            write_texts(find_split_file(args.data_dir, "validation"), size, texts_file)
            for r in range(args.repeats):
                for t, tree in list(enumerate(trees)) if r % 2 == 0 else list(enumerate(trees))[::-1]:
                    out = os.path.join(work, f"pred{size}-{t}.txt")
                    cmd = [
                        sys.executable,
                        __file__,
                        "--worker",
                        "1",
                        "--data_dir",
                        args.data_dir,
                        "--ckpt",
                        args.ckpt,
                        "--config",
                        args.config,
                        "--texts_file",
                        texts_file,
                        "--output",
                        out,
                        "--work",
                        os.path.join(work, f"w{t}"),
                        "--size",
                        str(size),
                        "--threads",
                        str(args.threads),
                    ]
                    result, rss, _ = run_measured(cmd, env={**os.environ, "PYTHONPATH": tree, "WANDB_MODE": "disabled"})
                    result["peak_rss_mb"] = round(rss)
                    results.setdefault((size, tree), []).append(result)
                    print(f"{size} texts, repeat {r}, {tree}: {json.dumps(result)}", flush=True)
            reference = label_rows(os.path.join(work, f"pred{size}-0.txt"))
            for t in range(1, len(trees)):
                rows = label_rows(os.path.join(work, f"pred{size}-{t}.txt"))
                agree = sum(a == b for a, b in zip(rows, reference)) / len(reference)
                print(f"{size} texts: label rows of {trees[t]} equal to {trees[0]}'s: {agree:.4f} ({len(rows)} rows)")
            os.remove(texts_file)

    print(f"\n{args.threads} threads, medians of {args.repeats}\n\n| texts | tree | texts/s | seconds | peak RSS MB |\n|---:|---|---:|---:|---:|")
    for (size, tree), runs in results.items():
        med = lambda k: statistics.median(x[k] for x in runs)  # noqa: E731
        print(f"| {size} | {tree} | {med('texts_per_s'):.1f} | {med('seconds'):.1f} | {med('peak_rss_mb'):.0f} |")


if __name__ == "__main__":
    main()
