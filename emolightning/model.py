"""The LightningModule: any Hugging Face encoder with a multi-label emotion head.

encoder (AutoModel) -> pooled text vector (CLS or mean over real tokens) -> dropout -> linear ->
one logit per label -> BCE-with-logits. Metrics are the official E-c ones (metrics.py), computed
on DDP-synced state; per-label thresholds are tuned on the validation split after each
validation epoch and stored in the checkpoint, so test, predict and export use them.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from .encoders import keep_layers, load_encoder
from .errors import ConfigError
from .hardware import adamw_options
from .metrics import EmotionScores, official_scores, tune_thresholds


def pool(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """(B, T, H) hidden states -> (B, H): the first token, or the mean over unpadded tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def no_decay(name: str) -> bool:
    """Biases and LayerNorm weights are not decayed (BERT's recipe)."""
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name or ".norm" in name


def linear_warmup_decay(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EmotionClassifier(L.LightningModule):
    def __init__(
        self,
        encoder: str,
        label_names: list[str],
        lr: float,
        head_lr: float | None = None,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.0,
        pooling: Literal["cls", "mean"] = "cls",
        dropout: float = 0.1,
        pos_weight: list[float] | None = None,
        threshold: float = 0.5,
        tune_thresholds: bool = True,
        min_label_positives: int = 10,
        encoder_layers: list[int] | None = None,
        encoder_config: dict | None = None,
    ):
        """Multi-label emotion classifier on a Hugging Face encoder.

        Optimizer: AdamW, fused (one kernel for all parameters); with `trainer.gradient_clip_val`
        under `16-mixed`/`bf16-mixed` it is the foreach AdamW instead, which lets Lightning clip.

        Args:
            encoder: Hub name or local directory of the encoder (BERT, DistilBERT, RoBERTa, MiniLM, ...).
            label_names: Emotion names, in the data's column order (linked from the data by the CLI).
            lr: Peak learning rate of the encoder (AdamW).
            head_lr: Learning rate of the classification head (default: lr).
            weight_decay: AdamW weight decay; not applied to biases and LayerNorm weights.
            warmup_ratio: Fraction of the training steps with linear warmup; linear decay after.
            pooling: `cls` (first token) or `mean` (mean over real tokens).
            dropout: Dropout before the linear head.
            pos_weight: Per-label positive-class weights of the BCE loss (one per label), or none.
            threshold: Decision threshold before tuning, used by `val/*` metrics.
            tune_thresholds: After each validation epoch in fit, tune per-label thresholds on it.
            min_label_positives: Labels with fewer validation positives keep the global threshold.
            encoder_layers: Keep only these layers of the pretrained encoder (e.g. [0, 2, 4] for a
                half-depth MiniLM); all layers when unset.
            encoder_config: Filled in automatically: the encoder's config, so a checkpoint can be
                rebuilt without downloading the encoder again.
        """
        super().__init__()
        self.save_hyperparameters()
        if pos_weight is not None and len(pos_weight) != len(label_names):
            raise ConfigError(f"`model.pos_weight` has {len(pos_weight)} values for {len(label_names)} labels {label_names}. Give one weight per label.")
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
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, len(label_names))
        self.register_buffer("thresholds", torch.full((len(label_names),), float(threshold)))
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float))
        self.val_scores, self.test_scores = EmotionScores(), EmotionScores()

    @property
    def label_names(self) -> list[str]:
        return list(self.hparams.label_names)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T) token ids and mask -> (B, L) logits."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(self.dropout(pool(hidden, attention_mask, self.hparams.pooling)))

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), labels, pos_weight=self.pos_weight)

    # ---- steps ---------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.loss(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])
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
        fixed = torch.full_like(self.thresholds, self.hparams.threshold)
        if stage == "val" and self.hparams.tune_thresholds and self.trainer.state.fn == "fit":
            _, per_label = tune_thresholds(probs.cpu(), target.cpu(), min_positives=self.hparams.min_label_positives)
            self.thresholds.copy_(per_label.to(self.thresholds.device))
        scores = official_scores(probs >= fixed, target, self.label_names)
        tuned = official_scores(probs >= self.thresholds, target, self.label_names)
        # every rank computed the same numbers from the synced state: a MAX-reduce keeps them exact
        # and stops Lightning warning, once per key, that epoch-level values are not synced
        sync = {"sync_dist": True, "reduce_fx": "max"}
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, **sync)
        self.log_dict({f"{stage}/tuned/{k}": tuned[k] for k in ("jaccard", "f1_micro", "f1_macro")}, **sync)
        rank_zero_info(
            f"[{stage} epoch {self.current_epoch}] n={len(target)}  "
            f"threshold {self.hparams.threshold}: jaccard {scores['jaccard']:.4f} f1_micro {scores['f1_micro']:.4f} f1_macro {scores['f1_macro']:.4f}  |  "
            f"tuned: jaccard {tuned['jaccard']:.4f} f1_micro {tuned['f1_micro']:.4f} f1_macro {tuned['f1_macro']:.4f}"
        )

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

    def configure_optimizers(self):
        named = [(n, p) for n, p in self.encoder.named_parameters() if p.requires_grad]
        head_lr = self.hparams.head_lr or self.hparams.lr
        groups = [
            {"params": [p for n, p in named if not no_decay(n)], "weight_decay": self.hparams.weight_decay},
            {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0},
            {"params": [self.head.weight], "weight_decay": self.hparams.weight_decay, "lr": head_lr},
            {"params": [self.head.bias], "weight_decay": 0.0, "lr": head_lr},
        ]
        # fused (one kernel), except when clipping under mixed precision, which Lightning cannot do for it (hardware.py)
        kernel = adamw_options(self.trainer.precision, self.trainer.gradient_clip_val)
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr, **kernel)
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
