"""The LightningModule: any Hugging Face encoder with a multi-label emotion head.

encoder (AutoModel) -> `encode`: a pooled text vector (CLS, mean) or one vector per label (label
attention, label prompt; heads.py) -> `classify`: dropout -> linear -> one logit per label -> the
training loss (BCE, focal or asymmetric, optionally plus SpanEmo's label-correlation loss; losses.py).
Metrics are the official E-c ones (metrics.py), computed on DDP-synced state; per-label thresholds
are tuned on the validation split after each validation epoch and stored in the checkpoint, so
test, predict and export use them.
"""

from __future__ import annotations

import re
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from ..errors import ConfigError
from ..hardware import adamw_options
from ..metrics import EmotionScores, choose_thresholds, official_scores
from ..outputs import EpochOutputs, KeepsEpochOutputs
from .encoders import keep_layers, layer_list, load_encoder, load_tokenizer
from .heads import LabelAttention, LabelPrompt, label_logits, label_prompt_ids, pool
from .losses import asymmetric_loss, consistency_loss, focal_loss, hard_label_loss, label_correlation_loss

__all__ = ["EmotionClassifier", "linear_warmup_decay", "log_epoch_scores", "pool"]


def no_decay(name: str) -> bool:
    """Biases and LayerNorm weights are not decayed (BERT's recipe)."""
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name or ".norm" in name


def encoder_depth(name: str, num_layers: int) -> int:
    """Depth of an encoder parameter for layer-wise lr decay: embeddings 0, layer i -> i + 1, the rest on top."""
    if "embeddings" in name:
        return 0
    match = re.search(r"(?:^|\.)(?:layer|layers)\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def linear_warmup_decay(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def log_epoch_scores(module: L.LightningModule, stage: str, probs: Tensor, target: Tensor, threshold: float, thresholds: Tensor) -> EpochOutputs:
    """Log the official scores of (N, L) probabilities at the fixed `threshold` and at the tuned (L,) `thresholds` (`stage/*`, `stage/tuned/*`), and print them.

    Returns the epoch's outputs, which the module hands to the callbacks (`epoch_outputs`, outputs.Classifier).
    """
    names = module.label_names
    scores = official_scores(probs >= threshold, target, names)
    tuned = official_scores(probs >= thresholds, target, names)
    # every rank computed the same numbers from the synced state: a MAX-reduce keeps them exact
    # and stops Lightning warning, once per key, that epoch-level values are not synced
    sync = {"sync_dist": True, "reduce_fx": "max"}
    module.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, **sync)
    module.log_dict({f"{stage}/tuned/{k}": tuned[k] for k in ("jaccard", "f1_micro", "f1_macro")}, **sync)
    rank_zero_info(
        f"[{stage} epoch {module.current_epoch}] n={len(target)}  "
        f"threshold {threshold}: jaccard {scores['jaccard']:.4f} f1_micro {scores['f1_micro']:.4f} f1_macro {scores['f1_macro']:.4f}  |  "
        f"tuned: jaccard {tuned['jaccard']:.4f} f1_micro {tuned['f1_micro']:.4f} f1_macro {tuned['f1_macro']:.4f}"
    )
    # thresholds cloned: the buffer is tuned again at the next validation
    return EpochOutputs(stage, probs.detach().cpu(), target.detach().cpu(), thresholds.detach().cpu().clone(), names)


class EmotionClassifier(KeepsEpochOutputs, L.LightningModule):
    def __init__(
        self,
        encoder: str,
        label_names: list[str],
        lr: float,
        head_lr: float | None = None,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.0,
        pooling: Literal["cls", "mean", "label_attention", "label_prompt"] = "cls",
        dropout: float = 0.1,
        loss: Literal["bce", "focal", "asl"] = "bce",
        focal_gamma: float = 2.0,
        asl_gamma_neg: float = 4.0,
        asl_gamma_pos: float = 0.0,
        asl_clip: float = 0.05,
        label_correlation_weight: float = 0.0,
        rdrop_weight: float = 0.0,
        pos_weight: list[float] | Literal["auto"] | None = None,
        layer_lr_decay: float = 1.0,
        ema_decay: float | None = None,
        threshold: float = 0.5,
        tune_thresholds: bool = True,
        threshold_strategy: Literal["fixed", "global", "per_label", "shrunk", "balanced"] = "per_label",
        threshold_shrinkage: float = 50.0,
        min_label_positives: int = 10,
        encoder_layers: list[int] | None = None,
        encoder_config: dict | None = None,
        compile: bool = False,
    ):
        """Multi-label emotion classifier on a Hugging Face encoder.

        Optimizer: AdamW, fused (one kernel for all parameters); with `trainer.gradient_clip_val`
        under `16-mixed`/`bf16-mixed` it is the foreach AdamW instead, which lets Lightning clip.

        Args:
            encoder: Hub name or local directory of the encoder (BERT, DistilBERT, RoBERTa, MiniLM, ...).
            label_names: Emotion names, in the data's column order (linked from the data by the CLI).
            lr: Peak learning rate of the encoder (AdamW).
            head_lr: Learning rate of the classification head and label queries (default: lr).
            weight_decay: AdamW weight decay; not applied to biases and LayerNorm weights.
            warmup_ratio: Fraction of the training steps with linear warmup; linear decay after.
            pooling: `cls` (first token), `mean` (mean over real tokens), `label_attention` (a learned
                query per label attends over the tokens, RoBERTa-MA) or `label_prompt` (the label names
                go in front of the text as a first segment and each label is read from its name's
                tokens, SpanEmo; adds one token per name piece plus a separator to every input).
            dropout: Dropout before the linear head.
            loss: `bce`, `focal` (exponent `focal_gamma`) or `asl`, the asymmetric loss (`asl_gamma_neg`,
                `asl_gamma_pos`, `asl_clip`), which down-weights the many easy negatives of rare labels.
            focal_gamma: Focusing exponent of the focal loss.
            asl_gamma_neg: Asymmetric loss: focusing exponent of negative labels.
            asl_gamma_pos: Asymmetric loss: focusing exponent of positive labels.
            asl_clip: Asymmetric loss: probability margin below which a negative costs nothing.
            label_correlation_weight: Weight a of SpanEmo's label-correlation loss, mixed as
                (1 - a) x loss + a x correlation loss (SpanEmo used 0.2); 0 turns it off.
            rdrop_weight: R-Drop (Liang et al., 2021): every training batch runs through the network
                twice (two dropout masks, as one batch of twice the rows) and the loss is the mean of the
                two passes' losses plus this weight times their symmetric KL (losses.consistency_loss).
                Doubles the training compute; 0 turns it off.
            pos_weight: Per-label positive-class weights of the BCE/focal loss (one per label);
                `auto`: sqrt(negatives / positives) of each label in the training split; none: 1.
            layer_lr_decay: Layer-wise learning-rate decay: the top encoder layer trains at `lr`, each
                layer below at this factor times the one above, the embeddings last. 1 turns it off.
            ema_decay: Keep an exponential moving average of the weights with this decay (e.g. 0.999),
                used for validation, test and the saved checkpoints; none turns it off.
            threshold: Decision threshold before tuning, used by `val/*` metrics.
            tune_thresholds: After each validation epoch in fit, choose the thresholds on it (`threshold_strategy`).
            threshold_strategy: `fixed` (`threshold` for every label), `global` (one tuned threshold),
                `per_label` (each label its own), `shrunk` (each label's pulled toward the global one,
                the more the fewer validation positives it has: see metrics.choose_thresholds),
                `balanced` (as `shrunk`, each label's own cut chosen for Jaccard + macro-F1: higher
                macro-F1, slightly lower Jaccard).
            threshold_shrinkage: `shrunk` and `balanced`: the number of positives at which a label's own
                threshold and the global one count equally.
            min_label_positives: Labels with fewer validation positives keep the global threshold.
            encoder_layers: Keep only these layers of the pretrained encoder (e.g. [0, 2, 4] for a
                half-depth MiniLM); all layers when unset.
            encoder_config: Filled in automatically: the encoder's config, so a checkpoint can be
                rebuilt without downloading the encoder again.
            compile: `fit` runs the encoder through torch.compile (static shapes; validation and test
                too, predict not). Each new (batch, length) shape compiles once, in train and in eval
                mode, so pad lengths to buckets: `--data.pad_to_multiple_of 16` leaves 8 lengths up to
                128 tokens. Off by default: on 2 CPU cores a MiniLM shape took ~70 s to compile and a
                compiled step was at most 10-20% faster, which a few epochs do not pay back; on a GPU,
                measure first (benchmarks/train_speed.py).
        """
        super().__init__()
        self.save_hyperparameters()
        num_labels = len(label_names)
        if isinstance(pos_weight, list) and len(pos_weight) != num_labels:
            raise ConfigError(f"`model.pos_weight` has {len(pos_weight)} values for {num_labels} labels {label_names}. Give one weight per label, or `auto`.")
        if not 0 < layer_lr_decay <= 1:
            raise ConfigError(f"`model.layer_lr_decay` is {layer_lr_decay}; it must be in (0, 1] (1 turns it off).")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ConfigError(f"`model.ema_decay` is {ema_decay}; it must be in (0, 1), e.g. 0.999, or unset.")
        if rdrop_weight < 0:
            raise ConfigError(f"`model.rdrop_weight` is {rdrop_weight}; it must be >= 0 (0 turns R-Drop off).")
        if not 0 <= label_correlation_weight <= 1:
            raise ConfigError(f"`model.label_correlation_weight` is {label_correlation_weight}; it must be in [0, 1].")
        if encoder_config is None:
            self.encoder = load_encoder(encoder)
            if encoder_layers is not None:
                keep_layers(self.encoder, encoder_layers)
            # from_pretrained returns the encoder in eval mode; training needs its dropout back
            self.encoder.train()
            self.hparams.encoder_config = self.encoder.config.to_dict()
        else:  # rebuilt from a checkpoint: the weights come from its state dict
            from transformers import AutoConfig, AutoModel

            config = AutoConfig.for_model(**encoder_config)
            self.encoder = AutoModel.from_config(config)
        # BERT/RoBERTa's own pooler (tanh layer over [CLS]) is never used: `pool` reads the hidden
        # states. Left in, its weights get no gradient and DDP stops with "parameters that were
        # not used in producing the loss".
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None
        hidden = self.encoder.config.hidden_size
        self.label_attention = LabelAttention(num_labels, hidden) if pooling == "label_attention" else None
        self.label_prompt = None
        if pooling == "label_prompt":
            tokenizer = load_tokenizer(encoder)
            prompt, spans = label_prompt_ids(tokenizer, list(label_names))
            self.label_prompt = LabelPrompt(prompt, spans, tokenizer.sep_token_id)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_labels)
        self.register_buffer("thresholds", torch.full((num_labels,), float(threshold)))
        initial = torch.ones(num_labels) if pos_weight == "auto" else None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float)
        self.register_buffer("pos_weight", initial)  # `auto`: filled from the training split in setup
        self.val_scores, self.test_scores = EmotionScores(), EmotionScores()

    @property
    def label_names(self) -> list[str]:
        return list(self.hparams.label_names)

    # ---- the network: token states -> pooled vector(s) -> logits --------------------------
    def token_states(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) ids and mask of `[CLS] text [SEP]` -> (B, T', H) last hidden states and their (B, T') mask.

        T' = T, except with the label prompt, which this inserts after the first token.
        """
        if self.label_prompt is not None:
            input_ids, attention_mask = self.label_prompt.extend(input_ids, attention_mask)
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, attention_mask

    def pool_states(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T', H) states -> (B, H) for `cls`/`mean` pooling, (B, L, H) for the per-label poolings."""
        if self.label_attention is not None:
            return self.label_attention(hidden, attention_mask)
        if self.label_prompt is not None:
            return self.label_prompt.read(hidden)
        return pool(hidden, attention_mask, self.hparams.pooling)

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T) ids and mask -> the pooled vector (B, H) or per-label vectors (B, L, H)."""
        return self.pool_states(*self.token_states(input_ids, attention_mask))

    def classify(self, pooled: Tensor) -> Tensor:
        """(B, H) or (B, L, H) from `encode` -> (B, L) logits."""
        pooled = self.dropout(pooled)
        if pooled.dim() == 3:
            return label_logits(pooled, self.head.weight, self.head.bias)
        return self.head(pooled)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T) token ids and mask -> (B, L) logits."""
        return self.classify(self.encode(input_ids, attention_mask))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The training loss of (B, L) logits against (B, L) gold labels (`model.loss`, `label_correlation_weight`)."""
        hp = self.hparams
        if hp.loss == "focal":
            main = focal_loss(logits, labels, hp.focal_gamma, pos_weight=self.pos_weight)
        elif hp.loss == "asl":
            main = asymmetric_loss(logits, labels, hp.asl_gamma_neg, hp.asl_gamma_pos, hp.asl_clip)
        else:
            main = hard_label_loss(logits, labels, self.pos_weight)
        if hp.label_correlation_weight > 0:
            weight = hp.label_correlation_weight
            return (1 - weight) * main + weight * label_correlation_loss(logits, labels)
        return main

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.compile:
            self.compile_encoder()
        if stage == "fit" and self.hparams.pos_weight == "auto":
            frequencies = torch.tensor(self.trainer.datamodule.train_label_frequencies())
            # sqrt of the full negatives/positives ratio: the full ratio (19 for a 5% label) makes a
            # rare label's positives outweigh all its negatives and floods it with false positives
            weights = ((1 - frequencies) / frequencies.clamp(min=1e-4)).sqrt()
            self.pos_weight.copy_(weights.to(self.pos_weight.device))
            rank_zero_info("pos_weight auto: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(self.label_names, weights.tolist())))

    def compile_encoder(self) -> None:
        """torch.compile the encoder in place (`model.compile`): its parameter names, so its checkpoints, stay as they are."""
        # one graph per (shape, train/eval mode): torch's default of 8 recompiles would fall back to
        # eager after 4 length buckets; 64 covers every bucket of 16 up to 512 tokens in both modes
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self.encoder.compile(dynamic=False)
        trainer = self._trainer
        datamodule = trainer.datamodule if trainer is not None else None
        multiple = datamodule.hparams.get("pad_to_multiple_of") if datamodule is not None else None
        if datamodule is not None and not multiple and trainer.strategy.root_device.type == "cpu":
            rank_zero_warn(
                "model.compile is on but batches are padded to their longest text (data.pad_to_multiple_of unset): every new length compiles "
                "the encoder again (about a minute each on a CPU). Set `--data.pad_to_multiple_of 16`."
            )

    def configure_callbacks(self):
        if self.hparams.ema_decay is None:
            return []
        return [EMAWeightAveraging(decay=self.hparams.ema_decay)]

    # ---- steps ---------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        if self.hparams.rdrop_weight > 0:  # both passes as one batch: each copy of a row draws its own dropout mask
            first, second = self(ids.repeat(2, 1), mask.repeat(2, 1)).chunk(2)
            loss = (self.loss(first, labels) + self.loss(second, labels)) / 2 + self.hparams.rdrop_weight * consistency_loss(first, second)
        else:
            loss = self.loss(self(ids, mask), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        logits = self(batch["input_ids"], batch["attention_mask"])
        self.log(f"{stage}/loss", self.loss(logits, batch["labels"]), sync_dist=True, batch_size=len(batch["labels"]))
        getattr(self, f"{stage}_scores").update(torch.sigmoid(logits.float()), batch["labels"], batch["index"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        probs = torch.sigmoid(self(batch["input_ids"], batch["attention_mask"]).float())
        return {"index": batch["index"], "probs": probs, "preds": (probs >= self.thresholds).to(torch.uint8)}

    # ---- epoch ends: official scores, threshold tuning -------------------------------------
    def _log_scores(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_scores")
        probs, target = metric.compute()
        metric.reset()
        if self.trainer.sanity_checking:
            return
        if stage == "val" and self.hparams.tune_thresholds and self.trainer.state.fn == "fit":
            hp = self.hparams
            chosen = choose_thresholds(probs.cpu(), target.cpu(), hp.threshold_strategy, hp.threshold, hp.min_label_positives, hp.threshold_shrinkage)
            self.thresholds.copy_(chosen.to(self.thresholds.device))
        self.keep_epoch_outputs(log_epoch_scores(self, stage, probs, target, self.hparams.threshold, self.thresholds))

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    # ---- optimisation ----------------------------------------------------------------------
    def on_train_start(self) -> None:
        # the batch one optimizer step averages over, which lr is tuned for: it grows with the
        # number of GPUs and nodes, while `data.batch_size` stays per device
        trainer = self.trainer
        per_device = getattr(trainer.train_dataloader, "batch_size", None)
        if per_device:
            effective = per_device * trainer.num_devices * trainer.num_nodes * trainer.accumulate_grad_batches
            rank_zero_info(
                f"effective batch size {effective} = {per_device} per device x {trainer.num_devices} devices x "
                f"{trainer.num_nodes} nodes x {trainer.accumulate_grad_batches} accumulated; {trainer.estimated_stepping_batches} optimizer steps"
            )

    def param_groups(self) -> list[dict]:
        """AdamW parameter groups: encoder (per layer with `layer_lr_decay`), then head; decay split by `no_decay`.

        Subclasses append their own trainable modules here; `configure_optimizers` builds the
        optimizer and the schedule over whatever this returns.
        """
        hp = self.hparams
        named = [(n, p) for n, p in self.encoder.named_parameters() if p.requires_grad]
        num_layers = len(layer_list(self.encoder))

        def depth(name: str) -> int:  # without decay, one depth: the two groups of BERT's recipe
            return encoder_depth(name, num_layers) if hp.layer_lr_decay < 1 else num_layers

        groups = []
        for level in sorted({depth(n) for n, _ in named}):
            lr = hp.lr * hp.layer_lr_decay ** max(0, num_layers - level)  # the top layer (depth num_layers) at lr
            at_depth = [(n, p) for n, p in named if depth(n) == level]
            for decayed in (True, False):
                params = [p for n, p in at_depth if no_decay(n) != decayed]
                if params:
                    groups.append({"params": params, "weight_decay": hp.weight_decay if decayed else 0.0, "lr": lr})
        head_lr = hp.head_lr or hp.lr
        groups.append({"params": [self.head.weight], "weight_decay": hp.weight_decay, "lr": head_lr})
        groups.append({"params": [self.head.bias], "weight_decay": 0.0, "lr": head_lr})
        if self.label_attention is not None:
            groups.append({"params": list(self.label_attention.parameters()), "weight_decay": 0.0, "lr": head_lr})
        return groups

    def configure_optimizers(self):
        # fused (one kernel), except when clipping under mixed precision, which Lightning cannot do for it (hardware.py)
        kernel = adamw_options(self.trainer.precision, self.trainer.gradient_clip_val)
        optimizer = torch.optim.AdamW(self.param_groups(), lr=self.hparams.lr, **kernel)
        total = self.trainer.estimated_stepping_batches
        scheduler = linear_warmup_decay(optimizer, int(self.hparams.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # checkpoints from before the unused pooler was dropped still hold its weights
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("encoder.pooler.")]:
            del state[key]
        saved = checkpoint.get("hyper_parameters", {}).get("label_names")
        if saved is not None and list(saved) != self.label_names:
            raise ConfigError(
                f"The checkpoint was trained on the labels {list(saved)}, but the data has {self.label_names}. "
                "Use the data the checkpoint was trained on, or set `data.label_columns` to the checkpoint's labels."
            )
