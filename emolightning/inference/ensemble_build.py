"""`emolightning ensemble`: checkpoints -> an ensemble manifest, with thresholds tuned on the members' averaged dev probabilities.

It scores the dev split with each member (one at a time), averages their probabilities (weighted,
with `--weights`), tunes thresholds on that average with the members' `threshold_strategy`, and
writes the manifest (manifest.py): member checkpoints (relative to the manifest), weights, label
names, thresholds and strategy. `validate`, `test` and `predict` take it as `--ckpt_path`
(ensemble.py).
"""

from __future__ import annotations

import glob
import inspect
import os

import torch

from ..errors import ConfigError, DataError
from ..metrics import choose_thresholds, official_scores
from ..models.averaging import average_probabilities, normalized_weights
from ..models.checkpoints import classifier_checkpoint, hyperparameters, load_classifier
from ..models.thresholds import checkpoint_thresholds
from .ensemble import member_probs
from .manifest import Manifest, Member, write_manifest


def expand_checkpoints(arguments: list[str]) -> list[str]:
    """Checkpoint paths from paths, globs (quoted, so the shell leaves them) and .txt files listing one per line."""
    found = []
    for arg in arguments:
        if glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                raise ConfigError(
                    f"The pattern '{arg}' (argument of `emolightning ensemble`) matches no file. Give the members' .ckpt files, e.g. RUN/checkpoints/best-*.ckpt."
                )
            found += matches
        elif arg.endswith(".txt") and os.path.isfile(arg):
            folder = os.path.dirname(os.path.abspath(arg))
            with open(arg, encoding="utf-8") as f:
                lines = [(n, line.strip()) for n, line in enumerate(f, start=1) if line.strip() and not line.lstrip().startswith("#")]
            for n, line in lines:
                path = os.path.join(folder, line)
                if not os.path.isfile(path):
                    raise ConfigError(
                        f"{arg}, line {n}: the checkpoint '{line}' does not exist (paths are relative to the list file). Fix the line or remove it."
                    )
                found.append(path)
        elif not os.path.isfile(arg):
            raise ConfigError(f"The checkpoint '{arg}' (argument of `emolightning ensemble`) does not exist. Give .ckpt files written by `emolightning fit`.")
        else:
            found.append(arg)
    if not found:
        raise ConfigError("`emolightning ensemble` got no checkpoints. Give the members' .ckpt files (or a glob, or a .txt file listing them).")
    absolute = [os.path.abspath(p) for p in found]
    if len(set(absolute)) < len(absolute):
        twice = next(p for p in absolute if absolute.count(p) > 1)
        raise ConfigError(f"The checkpoint '{twice}' is listed twice. List each member once; to count one more, give `--weights`.")
    return absolute


def dev_table(data_hparams: dict, overrides: dict, label_names: list[str]):
    """The validation table (texts and gold labels in `label_names` order), from the first member's data options with `overrides`."""
    from ..data.datamodule import EmotionDataModule
    from ..data.tables import aligned_labels

    accepted = inspect.signature(EmotionDataModule.__init__).parameters
    options = {k: v for k, v in {**data_hparams, **{k: v for k, v in overrides.items() if v is not None}}.items() if k in accepted and k != "self"}
    if overrides.get("data_dir") or overrides.get("val_file"):
        options.update(data_dir=overrides.get("data_dir"), val_file=overrides.get("val_file"))
    table = aligned_labels(EmotionDataModule(**options).load_table("validation"), label_names)
    if table.labels is None:
        raise DataError(f"{table.source} has no labels, so no thresholds can be tuned on it. Give the labelled dev split (--data_dir or --val_file).")
    return table


def build(
    checkpoints: list[str],
    out: str,
    weights: list[float] | None = None,
    strategy: str | None = None,
    batch_size: int = 64,
    device: str | None = None,
    keep: bool = False,
    **data,
):
    """Score the dev split with each member, average, tune thresholds, write the manifest. Returns (manifest, summary lines)."""
    infos = [hyperparameters(classifier_checkpoint(c)) for c in checkpoints]
    labels = list(infos[0][0]["label_names"])
    for path, (hparams, _) in zip(checkpoints[1:], infos[1:]):
        if list(hparams["label_names"]) != labels:
            raise ConfigError(
                f"The checkpoint '{path}' predicts the labels {list(hparams['label_names'])}, but '{checkpoints[0]}' predicts {labels}. "
                "Ensemble members must predict the same labels in the same order: leave it out, or use members trained on the same data."
            )
    strategies = sorted({checkpoint_thresholds(h).strategy for h, _ in infos})
    if strategy is None and len(strategies) > 1:
        raise ConfigError(f"The members tune thresholds differently ({', '.join(strategies)}). Choose one for the ensemble with --threshold_strategy.")
    strategy = strategy or strategies[0]
    weights = normalized_weights(weights, len(checkpoints))
    table = dev_table(infos[0][1], data, labels)
    target = torch.from_numpy(table.labels).to(torch.uint8)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    members, probs, lines = [], [], []
    for path, (hparams, data_hparams) in zip(checkpoints, infos):
        max_length = int(data_hparams.get("max_length", 128))
        model = load_classifier(path, device)
        p = member_probs(model, table.texts, max_length, batch_size).cpu()
        own = official_scores(p >= model.thresholds.cpu(), target, labels)["jaccard"]
        lines.append(f"  member {os.path.relpath(path)}: dev Jaccard {own:.4f} at its own thresholds (in-sample)")
        del model
        members.append(Member(path, 1.0, hparams["encoder"], max_length))
        probs.append(p)
    for m, w in zip(members, weights):
        m.weight = w
    averaged = average_probabilities(probs, weights)
    first = checkpoint_thresholds(infos[0][0])
    fixed = float(first.threshold)
    thresholds = choose_thresholds(averaged, target, strategy, fixed, int(first.min_label_positives), float(first.shrinkage))
    at_fixed, tuned = official_scores(averaged >= fixed, target, labels), official_scores(averaged >= thresholds, target, labels)
    manifest = Manifest(os.path.abspath(out), members, labels, [round(float(t), 6) for t in thresholds], strategy, fixed, keep)
    dev = {"source": table.source, "rows": len(table), "scores": {"fixed": at_fixed, "tuned_in_sample": tuned}}
    write_manifest(manifest, {"dev": dev})
    lines.append(
        f"  ensemble of {len(members)}: dev Jaccard {at_fixed['jaccard']:.4f} / macro-F1 {at_fixed['f1_macro']:.4f} at {fixed}; "
        f"{tuned['jaccard']:.4f} / {tuned['f1_macro']:.4f} at its `{strategy}` thresholds (in-sample: held-out estimates come from benchmarks/ensemble.py)"
    )
    return manifest, lines
