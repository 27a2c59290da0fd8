"""Which training recipe is best? Each recipe x seed through the real `emolightning fit`, scored honestly.

Every run trains `configs/semeval/minilm-l6-baseline.yaml` (the v0.1 recipe) plus the recipe's overrides
on the official train split, keeps the best checkpoint on dev Jaccard, predicts dev with it and scores
dev with held-out thresholds: tuned on one random half, scored on the other, both ways round, over
10 halvings (metrics.held_out_scores). Dev has 886 tweets and one seed moves Jaccard by about +-0.5
points, so the table shows the mean and standard deviation over seeds; compare means, not runs.

    python benchmarks/recipes.py --data_dir ../shared/data/semeval2018-ec --out runs/recipes \\
        --recipes baseline label_prompt --seeds 1 2 3 --epochs 3 --jobs 2

Runs already under --out are scored, not retrained (their dev predictions are kept in dev_probs.pt), so
the grid can grow over sessions.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
from emolightning import EmotionClassifier, EmotionDataModule  # noqa: E402
from emolightning.errors import ConfigError  # noqa: E402
from emolightning.metrics import THRESHOLD_STRATEGIES, held_out_scores, official_scores  # noqa: E402
from emolightning.models.checkpoints import best_checkpoint_of_run  # noqa: E402

BASE_CONFIG = "configs/semeval/minilm-l6-baseline.yaml"
M = "--model.init_args."
# name -> overrides on top of BASE_CONFIG (components and typed options of the model, see `emolightning fit --help`)
LCA = [f"{M}loss", "LabelCorrelationMix", f"{M}loss.weight", "0.2"]  # SpanEmo's label-correlation loss mixed into BCE
EMA = ["--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay", "0.998"]
RECIPES: dict[str, list[str]] = {
    "baseline": [],
    "label_prompt": [f"{M}head", "LabelPromptPooling"],
    "label_prompt_lca": [f"{M}head", "LabelPromptPooling", *LCA],
    "label_attention": [f"{M}head", "LabelAttentionPooling"],
    "asl": [f"{M}loss", "ASL"],
    "focal": [f"{M}loss", "Focal"],
    "pos_weight_auto": [f"{M}loss", "BCE", f"{M}loss.pos_weight", "auto"],
    "llrd": [f"{M}encoder_groups", "LayerwiseLRDecay", f"{M}encoder_groups.decay", "0.8", f"{M}lr", "1.5e-4"],
    "ema": EMA,
    "rdrop": [f"{M}loss", "RDrop", f"{M}loss.weight", "1.0"],
    "rdrop3": [f"{M}loss", "RDrop", f"{M}loss.weight", "3.0"],
    "label_prompt_asl": [f"{M}head", "LabelPromptPooling", f"{M}loss", "ASL"],
    "label_prompt_lca_asl": [f"{M}head", "LabelPromptPooling", *LCA, f"{M}loss.loss", "ASL"],
    "label_attention_asl": [f"{M}head", "LabelAttentionPooling", f"{M}loss", "ASL"],
    "shipped": ["--config", "configs/semeval/minilm-l6.yaml"],
    # a student of the members' size distilled from an ensemble (--teachers: its members' run dirs or checkpoints)
    "distill_ensemble": ["--model.class_path", "emolightning.EmotionDistiller", f"{M}teacher", "{teachers}", f"{M}cache_teacher_logits", "true"],
}
KEYS = ("jaccard", "f1_micro", "f1_macro")


def run_dir(out: str, recipe: str, seed: int) -> str:
    return os.path.join(out, recipe, f"seed{seed}")


def teacher_list(arguments: list[str] | None) -> str:
    """`[a.ckpt, b.ckpt, ...]` from run directories (their best checkpoint), checkpoints or globs of either."""
    # a glob over run dirs (runs/recipes/baseline/seed*) also matches their seedN.log files: keep dirs and checkpoints
    matches = [p for arg in arguments or [] for p in [m for m in sorted(glob.glob(arg)) if os.path.isdir(m) or m.endswith(".ckpt")] or [arg]]
    try:  # the distiller would take the run dirs too; the command names the files, as a record of what taught the student
        paths = [best_checkpoint_of_run(p, "--teachers") if os.path.isdir(p) else p for p in matches]
    except ConfigError as err:
        raise SystemExit(str(err)) from None
    if not paths or not all(os.path.isfile(p) for p in paths):
        raise SystemExit(f"--teachers {arguments}: give the ensemble members' run directories (each with a best-*.ckpt) or checkpoints")
    return "[" + ", ".join(paths) + "]"


def fit_command(recipe: str, seed: int, args) -> list[str]:
    overrides = [teacher_list(args.teachers) if x == "{teachers}" else x for x in RECIPES[recipe]]
    config = [] if overrides[:1] == ["--config"] else ["--config", BASE_CONFIG]
    return [
        sys.executable, "-m", "emolightning", "fit", *config, *overrides,
        "--data.data_dir", args.data_dir,
        "--seed_everything", str(seed),
        "--trainer.max_epochs", str(args.epochs),
        "--trainer.default_root_dir", run_dir(args.out, recipe, seed),
        "--trainer.enable_progress_bar", "false",
        *(["--trainer.precision", args.precision] if args.precision else []),
    ]  # fmt: skip


def best_checkpoint(directory: str) -> str | None:
    found = sorted(glob.glob(os.path.join(directory, "**", "checkpoints", "best-*.ckpt"), recursive=True), key=os.path.getmtime)
    return found[-1] if found else None


@torch.inference_mode()
def dev_probs(ckpt: str, data_dir: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(N, L) dev probabilities of a checkpoint, (N, L) gold labels, in file order."""
    model = EmotionClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = EmotionDataModule(data_dir=data_dir, tokenizer=model.hparams.encoder, eval_batch_size=64)
    dm.prepare_data()
    dm.setup("validate")
    probs, target, index = [], [], []
    for batch in dm.val_dataloader():
        probs.append(torch.sigmoid(model(batch["input_ids"], batch["attention_mask"]).float()))
        target.append(batch["labels"])
        index.append(batch["index"])
    order = torch.cat(index).argsort()  # eval batches come longest first: back to file order
    return torch.cat(probs)[order], torch.cat(target)[order], model.label_names


def score_run(directory: str, data_dir: str) -> dict:
    ckpt = best_checkpoint(directory)
    if ckpt is None:
        raise SystemExit(f"{directory}: no best-*.ckpt: the run failed or did not finish (see {directory}.log)")
    saved = os.path.join(directory, "dev_probs.pt")
    if os.path.exists(saved):  # the model's dev predictions, made once: re-scoring needs no model
        probs, target, labels = torch.load(saved).values()
    else:
        probs, target, labels = dev_probs(ckpt, data_dir)
        torch.save({"probs": probs, "target": target, "labels": labels}, saved)
    result = {"checkpoint": ckpt, "held_out": held_out_scores(probs, target, labels), "at_0.5": official_scores(probs >= 0.5, target, labels)}
    Path(directory, "recipe_result.json").write_text(json.dumps(result, indent=1))
    return result


def train_all(jobs: list[tuple[str, int]], args) -> None:
    """Run the fits, `args.jobs` at a time, each with its share of the CPU threads."""
    pending, running = list(jobs), []
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    while pending or running:
        while pending and len(running) < args.jobs:
            recipe, seed = pending.pop(0)
            directory = run_dir(args.out, recipe, seed)
            os.makedirs(os.path.dirname(directory), exist_ok=True)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
            log = open(f"{directory}.log", "w")
            print(f"training {recipe} seed {seed} -> {directory}", flush=True)
            running.append(
                (time.time(), recipe, seed, log, subprocess.Popen(fit_command(recipe, seed, args), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env))
            )
        time.sleep(5)
        for item in list(running):
            start, recipe, seed, log, proc = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                print(f"  {recipe} seed {seed}: exit {proc.returncode} after {time.time() - start:.0f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out", default="runs/recipes")
    p.add_argument("--recipes", nargs="+", default=["baseline"], choices=sorted(RECIPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1, help="fits at a time (each gets cpu_count / jobs threads)")
    p.add_argument("--teachers", nargs="+", help="distill_ensemble: the teachers' run dirs or checkpoints (globs too), e.g. runs/recipes/baseline/seed*")
    p.add_argument("--precision", default=None, help="--trainer.precision of every run (default: the config's); keep one precision per --out")
    p.add_argument("--dry_run", action="store_true", help="print the fit command of each run still to train, and stop")
    args = p.parse_args()

    # a run directory without a best checkpoint is still training (another invocation) or failed: never
    # train twice into one directory; delete it to train that run again
    todo = [(r, s) for r in args.recipes for s in args.seeds if not os.path.exists(run_dir(args.out, r, s))]
    if args.dry_run:
        print("\n".join(shlex.join(fit_command(recipe, seed, args)) for recipe, seed in todo))
        return
    train_all(todo, args)
    print("\ndev (n=886), best checkpoint on dev Jaccard; thresholds held out: chosen on one half of dev, scored on the other (10 halvings x 2)")
    print("mean ± std over seeds, in points")
    results = {recipe: [score_run(run_dir(args.out, recipe, s), args.data_dir) for s in args.seeds] for recipe in args.recipes}
    for strategy in THRESHOLD_STRATEGIES:
        print(f"\nthresholds: {strategy}{' (0.5)' if strategy == 'fixed' else ''}\n")
        print("| recipe | seeds | Jaccard | micro-F1 | macro-F1 |\n|---|---:|---:|---:|---:|")
        for recipe, runs in results.items():
            cells = []
            for key in KEYS:
                values = [100 * r["held_out"][strategy][key] for r in runs]
                cells.append(f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}")
            print(f"| {recipe} | {len(runs)} | " + " | ".join(cells) + " |")
    means = {r: {w: {k: statistics.mean(x["held_out"][w][k] for x in runs) for k in KEYS} for w in THRESHOLD_STRATEGIES} for r, runs in results.items()}
    print("RESULT " + json.dumps(means))


if __name__ == "__main__":
    main()
