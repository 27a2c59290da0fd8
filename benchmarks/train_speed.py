"""Training speed and quality: emolightning vs the plain Hugging Face Trainer script, side by side.

Both sides train the same encoder on the same first `--limit_train` rows of the official train
split, same batch size, epochs and precision; the Trainer side at its best (dynamic padding,
length grouping, fused AdamW, its default). Each repeat runs both, in alternating order, each in
its own subprocess (so peak RSS is per side, from wait4). Reported: medians of the whole
process's wall time (start to exit: imports, data, model, training, and the dev evaluation with
--eval), training samples/s of the training call alone, peak RSS, and the dev metrics each reached.

    python benchmarks/train_speed.py --data_dir ../shared/data/semeval2018-ec --limit_train 1600 --repeats 3

emolightning uses the hyperparameters of --config (default configs/semeval/minilm-l6.yaml),
with --epochs/--batch_size overriding; the Trainer side uses the issue's baseline recipe
(lr 5e-5, 10% warmup, threshold 0.5). `--eval` adds the dev metrics (slower).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[dict, float, float]:
    """Run cmd, return (its RESULT json, its peak RSS in MB, its whole-process wall time in s)."""
    # output goes to files, not pipes: a child blocked on a full pipe (progress bars) would never end
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out_file, stderr=err_file, text=True, cwd=REPO, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out_file.seek(0), err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    line = next(l for l in out.splitlines()[::-1] if l.startswith("RESULT "))
    return json.loads(line[7:]), usage.ru_maxrss / 1024, wall


def emolightning_worker(args) -> None:
    """One emolightning training run in this process; prints RESULT json."""
    import lightning as L
    import yaml

    from emolightning import EmotionClassifier, EmotionDataModule
    from emolightning.data.tables import find_split_file
    from emolightning.training.trainer import EmotionTrainer  # Lightning's Trainer, plus precision `auto`

    init = yaml.safe_load(open(REPO / args.config))["model"]["init_args"]
    if args.lr:
        init["lr"] = args.lr
    train = find_split_file(args.data_dir, "train")
    with tempfile.TemporaryDirectory() as tmp:
        if args.limit_train:  # the first N rows, as the Trainer script's --limit_train takes them
            lines = open(train, encoding="utf-8").read().split("\n")
            train = os.path.join(tmp, "limited-train.txt")
            open(train, "w", encoding="utf-8").write("\n".join(lines[: args.limit_train + 1]) + "\n")
        dm = EmotionDataModule(
            train_file=train,
            val_file=find_split_file(args.data_dir, "validation"),
            tokenizer=init["encoder"],
            batch_size=args.batch_size,
            cache_dir=os.path.join(tmp, "cache"),
            seed=42,
        )
        L.seed_everything(42)
        model = EmotionClassifier(label_names=dm.label_names, **init)
        trainer = EmotionTrainer(
            accelerator="cpu",
            devices=1,
            max_epochs=args.epochs,
            precision=args.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_model_summary=False,
        )
        dm.prepare_data()  # tokenisation happens before the timed call, as in the Trainer script
        start = time.perf_counter()
        trainer.fit(model, dm)
        seconds = time.perf_counter() - start
        n = len(dm.splits["train"])
        result = {
            "side": "emolightning",
            "precision": str(trainer.precision),
            "n_train": n,
            "train_time_s": round(seconds, 3),
            "train_samples_per_s": round(args.epochs * n / seconds, 3),
        }
        if args.eval:
            model.threshold_settings = dataclasses.replace(model.threshold_settings, tune=False)
            # a fresh Trainer: the timed one has validation switched off (limit_val_batches=0)
            L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False).validate(model, dm, verbose=False)
            m = model.trainer.callback_metrics
            result.update({f"dev_{k}": round(float(m[f"val/{k}"]), 4) for k in ("jaccard", "f1_micro", "f1_macro")})
    print("RESULT " + json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--config", default="configs/semeval/minilm-l6.yaml")
    p.add_argument("--limit_train", type=int, default=1600, help="the first N training rows (0: all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--ours_epochs", type=int, default=None, help="emolightning's epochs, if not --epochs: time to quality, with --eval")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="emolightning lr (default: the config's)")
    p.add_argument(
        "--precision",
        default="32-true",
        choices=["32-true", "bf16-mixed", "auto"],
        help="both sides' precision; `auto`: emolightning's shipped default (trainer.precision auto) against the Trainer script as a user writes it (fp32)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return emolightning_worker(args)

    common = ["--data_dir", args.data_dir, "--batch_size", str(args.batch_size)]
    ours = [
        sys.executable,
        str(HERE / "train_speed.py"),
        "--worker",
        "--config",
        args.config,
        "--precision",
        args.precision,
        "--epochs",
        str(args.ours_epochs or args.epochs),
        "--limit_train",
        str(args.limit_train),
        *common,
    ]
    ours += ["--lr", str(args.lr)] if args.lr else []
    theirs = [sys.executable, str(HERE / "trainer_baseline.py"), "--group_by_length", "--epochs", str(args.epochs), *common]
    theirs += ["--limit_train", str(args.limit_train)] if args.limit_train else []  # 0: all rows
    theirs += [] if args.eval else ["--skip_eval"]
    theirs += ["--bf16"] if args.precision == "bf16-mixed" else []  # auto: the Trainer script's own default, fp32
    ours += ["--eval"] if args.eval else []

    runs = {"emolightning": [], "trainer": []}
    for r in range(args.repeats):
        order = [("emolightning", ours), ("trainer", theirs)] if r % 2 == 0 else [("trainer", theirs), ("emolightning", ours)]
        for side, cmd in order:
            result, rss, wall = run_measured(cmd)
            result["peak_rss_mb"], result["process_s"] = round(rss), round(wall, 2)
            runs[side].append(result)
            print(f"repeat {r} {side:12s} {json.dumps(result)}", flush=True)

    def median(side, key):
        values = [x[key] for x in runs[side] if key in x]
        return statistics.median(values) if values else float("nan")

    print("\n| side | whole process s | samples/s | train s | peak RSS MB | dev jaccard | dev f1_micro | dev f1_macro |\n|---|---|---|---|---|---|---|---|")
    for side in runs:
        print(
            f"| {side} | {median(side, 'process_s'):.1f} | {median(side, 'train_samples_per_s'):.1f} | {median(side, 'train_time_s'):.1f} | {median(side, 'peak_rss_mb'):.0f} | "
            f"{median(side, 'dev_jaccard'):.4f} | {median(side, 'dev_f1_micro'):.4f} | {median(side, 'dev_f1_macro'):.4f} |"
        )
    whole = median("trainer", "process_s") / median("emolightning", "process_s")
    ratio = median("emolightning", "train_samples_per_s") / median("trainer", "train_samples_per_s")
    print(f"\nwhole process, Trainer time / emolightning time (medians of {args.repeats}, {args.precision}): {whole:.2f}x")
    print(f"training call alone, emolightning / Trainer samples/s: {ratio:.2f}x")
    if args.ours_epochs:
        speedup = median("trainer", "train_time_s") / median("emolightning", "train_time_s")
        print(f"time to train: Trainer {args.epochs} epochs / emolightning {args.ours_epochs} epochs: {speedup:.2f}x")


if __name__ == "__main__":
    main()
