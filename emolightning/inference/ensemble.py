"""Ensembles of checkpoints: several EmotionClassifiers, their probabilities averaged.

    emolightning ensemble RUN1/checkpoints/best-*.ckpt RUN2/checkpoints/best-*.ckpt --data_dir DATA --out ensemble.json
    emolightning predict --config RUN1/config.yaml --ckpt_path ensemble.json --output pred.txt

`emolightning ensemble` scores the dev split with each member (one at a time), averages their
probabilities (weighted, with `--weights`), tunes thresholds on that average with the members'
`threshold_strategy`, and writes a manifest: member checkpoints (relative to the manifest), weights,
label names, thresholds and strategy. `validate`, `test` and `predict` take the manifest as
`--ckpt_path` (the CLI swaps in an `EnsembleClassifier`), so `predict` needs no dev split.

Members may differ in encoder, tokenizer and max_length: each tokenises the texts itself.
Memory: a step is a whole chunk of texts (`data.eval_batch_size` x `data.predict_chunk_batches`,
8,192 by default); for each chunk every member is built from its checkpoint, runs over the chunk in
batches of `data.eval_batch_size`, and is freed before the next one is built. So an ensemble of 5
predicts in about the memory of one member, at the cost of 5 checkpoint loads per chunk;
`emolightning ensemble --keep_members_loaded` (recorded in the manifest) keeps all of them on the
device instead (no reloading, N x the memory).
"""

from __future__ import annotations

import argparse
import glob
import inspect
import json
import os
from dataclasses import dataclass, replace

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.batching import pad, truncate
from ..errors import ConfigError, DataError
from ..files import checkpoint_problem, write_atomically
from ..hardware import pad_multiple
from ..metrics import THRESHOLD_STRATEGIES, EmotionScores, choose_thresholds, official_scores
from ..models.classifier import EmotionClassifier, log_epoch_scores
from ..models.encoders import load_tokenizer
from ..outputs import KeepsEpochOutputs

MANIFEST_FORMAT = "emolightning-ensemble"
BUILD_HINT = "Build it with `emolightning ensemble CKPT [CKPT ...] --data_dir DATA --out ensemble.json`."


# ---- averaging ---------------------------------------------------------------------------
def normalized_weights(weights: list[float] | None, n: int) -> list[float]:
    """`weights` scaled to sum to 1 (equal weights when None)."""
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    if len(weights) != n or any(w <= 0 for w in weights):
        raise ConfigError(f"The ensemble weights {weights} must be {n} positive numbers, one per member, in the members' order.")
    return [w / sum(weights) for w in weights]


def average_probabilities(probs: list[Tensor], weights: list[float] | None = None) -> Tensor:
    """The weighted mean of the members' (N, L) probabilities: what the ensemble predicts."""
    return sum(w * p for w, p in zip(normalized_weights(weights, len(probs)), probs))


def average_logits(logits: list[Tensor], weights: list[float] | None = None, multi_label: bool = True) -> Tensor:
    """The logits of the members' averaged probabilities: logit(sum_i w_i sigmoid(z_i)) per label.

    Computed in log space (log p = logsumexp_i(log w_i + log sigmoid(z_i)), and log(1 - p) likewise),
    so that no probability saturates to 0 or 1 and no logit to infinity; one member gives back its own
    logits. multi_label=False averages softmax distributions over the labels instead and returns
    their log, which softmax maps back to that average.
    """
    z = torch.stack([x.float() for x in logits])
    log_w = torch.tensor(normalized_weights(weights, len(logits)), device=z.device).log().view(-1, *[1] * (z.dim() - 1))
    if not multi_label:
        return torch.logsumexp(log_w + F.log_softmax(z, dim=-1), dim=0)
    return torch.logsumexp(log_w + F.logsigmoid(z), dim=0) - torch.logsumexp(log_w + F.logsigmoid(-z), dim=0)


# ---- members -----------------------------------------------------------------------------
@dataclass
class Member:
    checkpoint: str  # absolute path
    weight: float
    encoder: str  # its tokenizer
    max_length: int


def load_member(checkpoint: str, device: torch.device | str = "cpu") -> EmotionClassifier:
    """The member's EmotionClassifier, in eval mode on `device` (a distilled student's checkpoint too)."""
    with torch.inference_mode(False):  # built inside `predict`'s inference mode, its parameters would be inference tensors
        model = EmotionClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    return model.to(device).eval()


@torch.no_grad()
def member_probs(model: EmotionClassifier, texts: list[str], max_length: int, batch_size: int = 64) -> Tensor:
    """(N, L) probabilities of `texts`, in their order, with the member's own tokenizer and max_length (longest first, each batch padded to its longest)."""
    tokenizer = load_tokenizer(model.hparams.encoder)
    encoded = tokenizer(texts, truncation=False, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    ids = truncate(encoded, max_length)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out = torch.empty(len(ids), len(model.label_names), device=model.device)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, mask = pad([ids[i] for i in rows], tokenizer.pad_token_id, pad_multiple(model.device))
        out[torch.tensor(rows, device=model.device)] = torch.sigmoid(model(input_ids.to(model.device), mask.to(model.device)).float())
    return out


def checkpoint_info(path: str) -> tuple[dict, dict]:
    """(model hyperparameters, data hyperparameters) of an emolightning checkpoint, with the export command's checks."""
    from .export import load_checkpoint

    ckpt = load_checkpoint(path)
    return dict(ckpt["hyper_parameters"]), dict(ckpt.get("datamodule_hyper_parameters") or {})


# ---- the manifest ------------------------------------------------------------------------
@dataclass
class Manifest:
    path: str
    members: list[Member]
    label_names: list[str]
    thresholds: list[float]
    threshold_strategy: str
    threshold: float  # the fixed threshold of the `val/*` scores (0.5)
    keep_members_loaded: bool = False  # the EnsembleClassifier's, when the CLI builds it from the manifest


def read_manifest(path: str) -> Manifest:
    """The manifest at `path`, checked, its member paths made absolute (they are stored relative to the manifest)."""
    if not os.path.isfile(path):
        raise ConfigError(f"The ensemble manifest '{path}' (option --ckpt_path) does not exist. {BUILD_HINT}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{path}, line {err.lineno}: not valid JSON ({err.msg}). An ensemble manifest is written by `emolightning ensemble`: rebuild it."
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 JSON file. An ensemble manifest is written by `emolightning ensemble`: rebuild it.") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not data.get("members"):
        raise ConfigError(f"{path} is not an ensemble manifest (no `format: {MANIFEST_FORMAT}` or no members). {BUILD_HINT}")
    try:
        return manifest_of(path, data)
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # a field missing or of the wrong kind: edited by hand, or another file
        what = f"the field {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {str(err)[:200]}"
        raise ConfigError(f"{path} is not a complete ensemble manifest ({what} missing or wrong). {BUILD_HINT}") from None


def manifest_of(path: str, data: dict) -> Manifest:
    """The Manifest that the JSON `data` of the manifest at `path` describes, its members checked to exist and to be whole checkpoints."""
    folder = os.path.dirname(os.path.abspath(path))
    members = []
    for entry in data["members"]:
        checkpoint = os.path.normpath(os.path.join(folder, entry["checkpoint"]))
        if not os.path.isfile(checkpoint):
            raise ConfigError(
                f"{path}: the member checkpoint '{entry['checkpoint']}' ({checkpoint}) does not exist. Member paths are relative to the manifest: "
                "move the manifest with its checkpoints, or rebuild it with `emolightning ensemble`."
            )
        if problem := checkpoint_problem(checkpoint):  # before any member is loaded, not in torch's zip reader halfway through
            raise ConfigError(
                f"{path}: the member checkpoint '{entry['checkpoint']}' ({checkpoint}) cannot be used: {problem}. Copy the member again from "
                "its run (compare the sizes), or rebuild the ensemble without it with `emolightning ensemble`."
            )
        members.append(Member(checkpoint, float(entry.get("weight", 1.0)), entry["encoder"], int(entry.get("max_length", 128))))
    labels, thresholds = list(data["label_names"]), [float(t) for t in data["thresholds"]]
    if len(thresholds) != len(labels):
        raise ConfigError(f"{path}: {len(thresholds)} thresholds for {len(labels)} labels. Rebuild it with `emolightning ensemble`.")
    strategy, threshold = data.get("threshold_strategy", "per_label"), float(data.get("threshold", 0.5))
    return Manifest(path, members, labels, thresholds, strategy, threshold, bool(data.get("keep_members_loaded", False)))


def write_manifest(manifest: Manifest, extra: dict | None = None) -> None:
    folder = os.path.dirname(os.path.abspath(manifest.path))
    data = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "members": [
            {"checkpoint": os.path.relpath(m.checkpoint, folder), "weight": m.weight, "encoder": m.encoder, "max_length": m.max_length}
            for m in manifest.members
        ],
        "label_names": manifest.label_names,
        "threshold_strategy": manifest.threshold_strategy,
        "threshold": manifest.threshold,
        "thresholds": manifest.thresholds,
        "keep_members_loaded": manifest.keep_members_loaded,
        **(extra or {}),
    }
    os.makedirs(folder, exist_ok=True)
    text = json.dumps(data, indent=1)
    write_atomically(manifest.path, lambda f: f.write(text), "w", needed=len(text.encode()), encoding="utf-8")


def is_manifest(path) -> bool:
    """Whether `--ckpt_path` names an ensemble manifest (a .json file) rather than one checkpoint."""
    return isinstance(path, str) and path.lower().endswith(".json")


def ensemble_config(path: str, eval_batch_size: int, chunk_batches: int) -> dict:
    """The subcommand config that `--ckpt_path MANIFEST` stands for: the EnsembleClassifier, and data batches of a whole chunk each."""
    init_args = {"manifest": path, "batch_size": eval_batch_size, "keep_members_loaded": read_manifest(path).keep_members_loaded}
    return {
        "model": {"class_path": "emolightning.EnsembleClassifier", "init_args": init_args},
        "data": {"eval_batch_size": eval_batch_size * chunk_batches, "predict_chunk_batches": 1},
    }


# ---- the LightningModule -----------------------------------------------------------------
class EnsembleClassifier(KeepsEpochOutputs, L.LightningModule):
    def __init__(self, manifest: str, label_names: list[str] | None = None, batch_size: int = 64, keep_members_loaded: bool = False):
        """An ensemble of EmotionClassifier checkpoints for `validate`, `test` and `predict` (`--ckpt_path ensemble.json` sets it up).

        Each step gets a whole chunk of texts; every member tokenises them itself and their
        probabilities are averaged with the manifest's weights, then cut at its thresholds.

        Args:
            manifest: The ensemble manifest written by `emolightning ensemble`.
            label_names: The data's label names (linked from the data by the CLI); must be the manifest's.
            batch_size: Texts per forward pass of a member (the CLI sets it to `data.eval_batch_size`).
            keep_members_loaded: Keep every member on the device (faster, N x the memory) instead of
                building each from its checkpoint for every chunk and freeing it after.
        """
        super().__init__()
        self.save_hyperparameters()
        self.manifest = read_manifest(manifest)
        self.weights = normalized_weights([m.weight for m in self.manifest.members], len(self.manifest.members))
        self.register_buffer("thresholds", torch.tensor(self.manifest.thresholds))
        self.val_scores, self.test_scores = EmotionScores(), EmotionScores()
        self.loaded: dict[int, EmotionClassifier] = {}  # with keep_members_loaded

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest.label_names)

    def setup(self, stage: str) -> None:
        # here, not in __init__: jsonargparse would report an __init__ error as "not a subclass of EmotionClassifier"
        data = self.hparams.label_names
        if data is not None and list(data) != self.manifest.label_names:
            raise ConfigError(
                f"The ensemble {self.manifest.path} predicts the labels {self.manifest.label_names}, but the data has {list(data)}. "
                "Use the data its members were trained on, or set `data.label_columns` to the ensemble's labels."
            )

    def member(self, i: int) -> EmotionClassifier:
        if i in self.loaded:
            return self.loaded[i]
        model = load_member(self.manifest.members[i].checkpoint, self.device)
        try:  # true half precisions convert the module (mixed ones autocast the step); outside a Trainer it stays float32
            model = self.trainer.precision_plugin.convert_module(model)
        except RuntimeError:  # "not attached to a `Trainer`"
            pass
        if self.hparams.keep_members_loaded:
            self.loaded[i] = model
        return model

    def forward(self, texts: list[str]) -> Tensor:
        """Texts -> (N, L) averaged probabilities (members one at a time)."""
        total = torch.zeros(len(texts), len(self.label_names), device=self.device)
        for i, weight in enumerate(self.weights):
            model = self.member(i)
            total += weight * member_probs(model, texts, self.manifest.members[i].max_length, self.hparams.batch_size)
            del model  # freed here unless kept: the next member gets its memory
        return total

    def _eval_step(self, batch: dict, stage: str) -> None:
        if "texts" not in batch:
            raise DataError("An ensemble tokenises the texts itself: its batches must carry `texts` (EmotionDataModule's do).")
        (self.val_scores if stage == "val" else self.test_scores).update(self(batch["texts"]), batch["labels"], batch["index"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        probs = self(batch["texts"])
        return {"index": batch["index"], "probs": probs, "preds": (probs >= self.thresholds).to(torch.uint8)}

    def _epoch_end(self, stage: str) -> None:
        metric = self.val_scores if stage == "val" else self.test_scores
        probs, target = metric.compute()
        metric.reset()
        if not self.trainer.sanity_checking:
            outputs = log_epoch_scores(self, stage, probs, target, self.manifest.threshold, self.thresholds)
            self.keep_epoch_outputs(replace(outputs, source=self.manifest.path))  # its test scores go beside the manifest

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def configure_optimizers(self):
        raise ConfigError("An ensemble is not trained: train its members with `emolightning fit`, then build it with `emolightning ensemble`.")


# ---- `emolightning ensemble` -------------------------------------------------------------
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
    infos = [checkpoint_info(c) for c in checkpoints]
    labels = list(infos[0][0]["label_names"])
    for path, (hparams, _) in zip(checkpoints[1:], infos[1:]):
        if list(hparams["label_names"]) != labels:
            raise ConfigError(
                f"The checkpoint '{path}' predicts the labels {list(hparams['label_names'])}, but '{checkpoints[0]}' predicts {labels}. "
                "Ensemble members must predict the same labels in the same order: leave it out, or use members trained on the same data."
            )
    strategies = sorted({h.get("threshold_strategy", "per_label") for h, _ in infos})
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
        model = load_member(path, device)
        p = member_probs(model, table.texts, max_length, batch_size).cpu()
        own = official_scores(p >= model.thresholds.cpu(), target, labels)["jaccard"]
        lines.append(f"  member {os.path.relpath(path)}: dev Jaccard {own:.4f} at its own thresholds (in-sample)")
        del model
        members.append(Member(path, 1.0, hparams["encoder"], max_length))
        probs.append(p)
    for m, w in zip(members, weights):
        m.weight = w
    averaged = average_probabilities(probs, weights)
    first = infos[0][0]
    fixed = float(first.get("threshold", 0.5))
    thresholds = choose_thresholds(averaged, target, strategy, fixed, int(first.get("min_label_positives", 10)), float(first.get("threshold_shrinkage", 50.0)))
    at_fixed, tuned = official_scores(averaged >= fixed, target, labels), official_scores(averaged >= thresholds, target, labels)
    manifest = Manifest(os.path.abspath(out), members, labels, [round(float(t), 6) for t in thresholds], strategy, fixed, keep)
    dev = {"source": table.source, "rows": len(table), "scores": {"fixed": at_fixed, "tuned_in_sample": tuned}}
    write_manifest(manifest, {"dev": dev})
    lines.append(
        f"  ensemble of {len(members)}: dev Jaccard {at_fixed['jaccard']:.4f} / macro-F1 {at_fixed['f1_macro']:.4f} at {fixed}; "
        f"{tuned['jaccard']:.4f} / {tuned['f1_macro']:.4f} at its `{strategy}` thresholds (in-sample: held-out estimates come from benchmarks/ensemble.py)"
    )
    return manifest, lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="emolightning ensemble",
        description="Build an ensemble manifest from checkpoints of models with the same labels: their dev probabilities are averaged and "
        "thresholds tuned on the average. Use it as `emolightning validate|test|predict --config RUN/config.yaml --ckpt_path MANIFEST`.",
    )
    parser.add_argument("checkpoints", nargs="+", help="Member .ckpt files, globs (quoted) or .txt files listing one checkpoint per line.")
    parser.add_argument("--out", required=True, help="The manifest to write (JSON); member paths are stored relative to it.")
    parser.add_argument("--weights", nargs="+", type=float, help="One positive weight per member (default: equal).")
    parser.add_argument("--data_dir", help="The official E-c files (the dev split tunes the thresholds). Default: the first member's data options.")
    parser.add_argument("--val_file", help="A dev table instead of --data_dir's.")
    parser.add_argument("--threshold_strategy", choices=THRESHOLD_STRATEGIES, help="Default: the members' own `model.threshold_strategy`.")
    parser.add_argument("--batch_size", type=int, default=64, help="Texts per forward pass.")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available).")
    parser.add_argument(
        "--keep_members_loaded",
        action="store_true",
        help="Recorded in the manifest: validate/test/predict keep every member on the device (N x the memory, no reloading) "
        "instead of building each member from its checkpoint for every chunk of texts and freeing it after.",
    )
    args = parser.parse_args(argv)
    checkpoints = expand_checkpoints(args.checkpoints)
    manifest, lines = build(
        checkpoints,
        args.out,
        args.weights,
        args.threshold_strategy,
        args.batch_size,
        args.device,
        args.keep_members_loaded,
        data_dir=args.data_dir,
        val_file=args.val_file,
    )
    print("\n".join(lines))
    print(
        f"Wrote {manifest.path} ({len(manifest.members)} members). Use it with --ckpt_path, e.g. `emolightning predict --config RUN/config.yaml --ckpt_path {args.out}`."
    )
