"""Inference speed: `emolightning predict` (each `--backend`) vs a `transformers.pipeline` loop, side by side.

All sides label the same texts with the same trained model: emolightning from its checkpoint
(through the real CLI, in-process), the pipeline from the same checkpoint exported with
`emolightning export` (`pipeline("text-classification", model=DIR, top_k=None, trust_remote_code=True)`, labels at the
exported thresholds). Each side runs in its own subprocess, alternating order over `--repeats`;
timed: model load + tokenisation + prediction + writing the labels (interpreter and library
imports excluded), so texts/s is what a user waits for; for `--backend onnx` that includes the
export of the encoder to ONNX, which predict does on every run. Peak RSS per side from wait4. Each
side's label rows are compared with those of the fp32 model (`emolightning --backend torch`), and
scored against the dev gold labels (sample-averaged Jaccard, the official metric).

    python benchmarks/predict_speed.py --data_dir ../shared/data/semeval2018-ec \
        --ckpt runs/semeval/minilm-l6/lightning_logs/version_0/checkpoints/best-2-1070.ckpt \
        --config runs/semeval/minilm-l6/lightning_logs/version_0/config.yaml --copies 8 --repeats 3 --backends torch onnx bf16

The texts are the dev split's tweets, `--copies` times over, one per line in a temporary file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
sys.path.insert(0, str(HERE))
from train_speed import run_measured  # noqa: E402


def emolightning_worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from emolightning.cli.main import run_cli

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
            "--data.eval_batch_size",
            str(args.batch_size),
            "--data.cache_dir",
            os.path.join(args.work, "cache-" + str(os.getpid())),
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
        # `default`: what `emolightning predict` does unasked (--backend auto, the run's precision); the
        # named backends run as before, over fp32 (the run's config may record bf16-mixed from precision auto)
        + ([] if args.backend == "default" else ["--backend", args.backend, "--trainer.precision", "32-true"])
    )
    seconds = time.perf_counter() - start
    n = sum(1 for _ in open(args.texts_file, encoding="utf-8"))
    print(
        "RESULT "
        + json.dumps({"side": f"emolightning(--backend {args.backend})", "texts": n, "seconds": round(seconds, 3), "texts_per_s": round(n / seconds, 2)})
    )


def pipeline_worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from transformers import pipeline

    start = time.perf_counter()
    pipe = pipeline("text-classification", model=args.export_dir, top_k=None, device=-1, trust_remote_code=True)
    config = pipe.model.config
    labels = [config.id2label[i] for i in range(config.num_labels)]
    thresholds = dict(zip(labels, getattr(config, "thresholds", None) or [0.5] * len(labels)))
    texts = open(args.texts_file, encoding="utf-8").read().split("\n")[:-1]
    with open(args.output, "w", encoding="utf-8") as out:
        out.write("\t".join(["ID", "Tweet", *labels]) + "\n")
        kwargs = {"batch_size": args.pipeline_batch_size} if args.pipeline_batch_size > 1 else {}
        for i, (text, scores) in enumerate(zip(texts, pipe(texts, **kwargs))):
            score = {s["label"]: s["score"] for s in scores}
            out.write("\t".join([str(i), text, *("1" if score[l] >= thresholds[l] else "0" for l in labels)]) + "\n")
    seconds = time.perf_counter() - start
    print(
        "RESULT "
        + json.dumps(
            {
                "side": f"pipeline(batch_size={args.pipeline_batch_size})",
                "texts": len(texts),
                "seconds": round(seconds, 3),
                "texts_per_s": round(len(texts) / seconds, 2),
            }
        )
    )


def label_rows(path: str) -> list[str]:
    return ["\t".join(line.rstrip("\n").split("\t")[2:]) for line in open(path, encoding="utf-8").readlines()[1:]]


def jaccard(path: str, gold) -> float:
    """Sample-averaged Jaccard of a written file's label rows (in input order) against `gold`, the dev table repeated."""
    import torch

    from emolightning.metrics import jaccard_samples

    lines = open(path, encoding="utf-8").read().split("\n")[:-1]
    names = lines[0].split("\t")[2:]
    preds = torch.tensor([[int(v) for v in line.split("\t")[2:]] for line in lines[1:]])
    order = [names.index(name) for name in gold.label_names]
    target = torch.tensor(gold.labels).repeat(len(preds) // len(gold.labels), 1)
    return float(jaccard_samples(preds[:, order], target).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="folder with the official dev file (its tweets are the texts)")
    p.add_argument("--ckpt", required=True, help="an emolightning checkpoint")
    p.add_argument("--config", required=True, help="the run's saved config.yaml (as `emolightning predict` takes it)")
    p.add_argument("--copies", type=int, default=4, help="the dev tweets this many times over")
    p.add_argument("--batch_size", type=int, default=64, help="emolightning's eval batch size")
    p.add_argument("--pipeline_batch_size", type=int, nargs="+", default=[1, 64], help="pipeline batch sizes to compare (1: the plain loop)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--backends",
        nargs="+",
        default=["torch", "onnx", "bf16"],
        help="emolightning predict backends to compare (torch: the fp32 reference; default: no --backend, the shipped default)",
    )
    for hidden in ("--worker", "--texts_file", "--export_dir", "--output", "--work", "--backend"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "emolightning":
        return emolightning_worker(args)
    if args.worker == "pipeline":
        args.pipeline_batch_size = args.pipeline_batch_size[0]
        return pipeline_worker(args)

    from emolightning.data.tables import find_split_file, read_table
    from emolightning.inference.export import export_checkpoint

    with tempfile.TemporaryDirectory() as work:
        dev = read_table(find_split_file(args.data_dir, "validation"))
        texts = dev.texts * args.copies
        texts_file = os.path.join(work, "texts.txt")
        with open(texts_file, "w", encoding="utf-8") as f:
            f.writelines(" ".join(t.split()) + "\n" for t in texts)
        export_dir = export_checkpoint(args.ckpt, os.path.join(work, "export"))
        base = [
            sys.executable,
            __file__,
            "--data_dir",
            args.data_dir,
            "--ckpt",
            args.ckpt,
            "--config",
            args.config,
            "--texts_file",
            texts_file,
            "--export_dir",
            str(export_dir),
            "--work",
            work,
            "--threads",
            str(args.threads),
            "--batch_size",
            str(args.batch_size),
        ]
        backends = ["torch"] + [b for b in args.backends if b != "torch"]  # the fp32 reference always runs
        sides, outputs = {}, {}
        for backend in backends:
            side = f"emolightning(--backend {backend})"
            outputs[side] = os.path.join(work, f"ours-{backend}.txt")
            sides[side] = base + ["--worker", "emolightning", "--backend", backend, "--output", outputs[side]]
        for b in args.pipeline_batch_size:
            side = f"pipeline(batch_size={b})"
            outputs[side] = os.path.join(work, f"pipe{b}.txt")
            sides[side] = base + ["--worker", "pipeline", "--pipeline_batch_size", str(b), "--output", outputs[side]]
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for r in range(args.repeats):
            order = list(sides.items()) if r % 2 == 0 else list(sides.items())[::-1]
            for side, cmd in order:
                result, rss, wall = run_measured(cmd)
                result["peak_rss_mb"], result["process_s"] = round(rss), round(wall, 2)
                runs[side].append(result)
                print(f"repeat {r} {side:26s} {json.dumps(result)}", flush=True)
        reference = "emolightning(--backend torch)"
        fp32 = label_rows(outputs[reference])
        fp32_jaccard = jaccard(outputs[reference], dev)
        speed = {side: statistics.median(x["texts_per_s"] for x in runs[side]) for side in sides}
        print(f"\n{len(texts)} texts, {args.threads} threads, medians of {args.repeats}\n")
        print(
            "| side | texts/s | seconds | whole process s | peak RSS MB | label rows equal to fp32 | dev Jaccard | vs fp32 (points) |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        )
        for side in sides:
            rows = label_rows(outputs[side])
            agree = sum(a == b for a, b in zip(rows, fp32)) / len(fp32)
            score = jaccard(outputs[side], dev)
            med = lambda k: statistics.median(x[k] for x in runs[side])  # noqa: E731
            print(
                f"| {side} | {speed[side]:.1f} | {med('seconds'):.1f} | {med('process_s'):.1f} | {med('peak_rss_mb'):.0f} | {agree:.4f} | {100 * score:.2f} | {100 * (score - fp32_jaccard):+.2f} |"
            )
        ours = [side for side in sides if side.startswith("emolightning")]
        fastest = max(ours, key=speed.get)
        for side in sides:
            if side.startswith("pipeline"):
                print(f"fastest, {fastest} / {side}: {speed[fastest] / speed[side]:.2f}x")
        default = "emolightning(--backend default)"
        if default in sides:
            for side in sides:
                if side.startswith("pipeline"):
                    whole = statistics.median(x["process_s"] for x in runs[side]) / statistics.median(x["process_s"] for x in runs[default])
                    print(f"default predict against {side}: {speed[default] / speed[side]:.2f}x texts/s, {whole:.2f}x whole process")


if __name__ == "__main__":
    main()
