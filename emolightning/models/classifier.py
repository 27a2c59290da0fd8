"""The LightningModule: any Hugging Face encoder with a multi-label emotion head.

encoder (AutoModel) -> `encode`: a pooled text vector (CLS, mean) or one vector per label (label
attention, label prompt; the `head` component, heads.py) -> `classify`: dropout -> linear -> one logit
per label -> the training loss (the `loss` component: BCE, focal, asymmetric, SpanEmo's label-correlation
mix, R-Drop; objectives.py over the pure functions of losses.py).
Metrics are the official E-c ones (metrics.py), computed on DDP-synced state; per-label thresholds
are tuned on the validation split after each validation epoch and stored in the checkpoint, so
test, predict and export use them.
"""

from __future__ import annotations

from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from ..compat import raise_recompile_limit
from ..errors import ConfigError
from ..hardware import adamw_options
from ..metrics import EmotionScores, choose_thresholds, official_scores
from ..outputs import EpochOutputs, KeepsEpochOutputs
from ..pretrained.encoders import keep_layers, load_encoder
from .components import component, component_config
from .heads import ClsPooling, Head, label_logits
from .objectives import BCE, Loss, auto_pos_weight
from .optim import EncoderGroups, linear_warmup_decay
from .preparation import PrepareFit
from .thresholds import Thresholds, as_thresholds

__all__ = ["EmotionClassifier", "log_epoch_scores"]


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
        head: Head | None = None,
        loss: Loss | None = None,
        encoder_groups: EncoderGroups | None = None,
        thresholds: Thresholds | None = None,
        encoder_layers: list[int] | None = None,
        encoder_config: dict | None = None,
        compile: bool = False,
    ):
        """Multi-label emotion classifier on a Hugging Face encoder.

        Optimizer: AdamW, fused (one kernel for all parameters); with `trainer.gradient_clip_val`
        under `16-mixed`/`bf16-mixed` it is the foreach AdamW instead, which lets Lightning clip.
        An exponential moving average of the weights is Lightning's `EMAWeightAveraging` callback
        (`trainer.callbacks`), used for validation, test and the saved checkpoints.

        Args:
            encoder: Hub name or local directory of the encoder (BERT, DistilBERT, RoBERTa, MiniLM, ...).
            label_names: Emotion names, in the data's column order (linked from the data by the CLI).
            lr: Peak learning rate of the encoder (AdamW).
            head_lr: Learning rate of the classification head and label queries (default: lr).
            weight_decay: AdamW weight decay; not applied to biases and LayerNorm weights.
            warmup_ratio: Fraction of the training steps with linear warmup; linear decay after.
            head: The pooling, dropout and linear layer (heads.py): `ClsPooling` (default, dropout
                0.1), `MeanPooling`, `LabelAttentionPooling` (RoBERTa-MA) or `LabelPromptPooling` (SpanEmo).
            loss: The training loss (objectives.py): `BCE` (default; `pos_weight`), `Focal`, `ASL`,
                `LabelCorrelationMix` (SpanEmo's loss mixed into another) or `RDrop` (two dropout passes).
            encoder_groups: The encoder's learning rates (optim.py): `EncoderGroups` (default, one for
                all) or `LayerwiseLRDecay`.
            thresholds: The decision threshold before tuning and how thresholds are tuned on the
                validation split (thresholds.py; `--model.init_args.thresholds.strategy shrunk`).
            encoder_layers: Keep only these layers of the pretrained encoder (e.g. [0, 2, 4] for a
                half-depth MiniLM); all layers when unset.
            encoder_config: Filled in automatically: the encoder's config, so a checkpoint can be
                rebuilt without downloading the encoder again.
            compile: `fit` runs the encoder through torch.compile (static shapes; validation and test
                too, predict not). Each new (batch, length) shape compiles once, in train and in eval
                mode, so pad lengths to buckets: `--data.pad_to_multiple_of 16` leaves 8 lengths up to
                128 tokens. Off by default: compiling takes long on a CPU and a few epochs may not pay
                it back; measure first (benchmarks/train_speed.py).
        """
        super().__init__()
        self.save_hyperparameters()
        head = component(head, Head, ClsPooling, "model.init_args.head")
        self.criterion = component(loss, Loss, BCE, "model.init_args.loss")
        self.encoder_groups = component(encoder_groups, EncoderGroups, EncoderGroups, "model.init_args.encoder_groups")
        self.threshold_settings = as_thresholds(thresholds)
        # the components as plain data: a checkpoint loads with weights_only=True, with or without the CLI
        self.hparams.head, self.hparams.loss = component_config(head), component_config(self.criterion)
        self.hparams.encoder_groups = component_config(self.encoder_groups)
        self.hparams.thresholds = asdict(self.threshold_settings)
        num_labels = len(label_names)
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
        # BERT/RoBERTa's own pooler (tanh layer over [CLS]) is never used: the head reads the hidden
        # states. Left in, its weights get no gradient and DDP stops with "parameters that were
        # not used in producing the loss".
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None
        hidden = self.encoder.config.hidden_size
        self.pooling_name = head.name
        self.pooling = head.build(hidden, list(label_names), encoder)
        self.dropout = nn.Dropout(head.dropout)
        self.head = nn.Linear(hidden, num_labels)
        self.register_buffer("thresholds", torch.full((num_labels,), float(self.threshold_settings.threshold)))
        # `auto`: ones until `set_label_frequencies` fills it before fit; a checkpoint keeps the weights it trained with
        self.register_buffer("pos_weight", self.criterion.initial_pos_weight(list(label_names)))
        self.val_scores, self.test_scores = EmotionScores(), EmotionScores()

    @property
    def label_names(self) -> list[str]:
        return list(self.hparams.label_names)

    # ---- the network: token states -> pooled vector(s) -> logits --------------------------
    def token_states(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) ids and mask of `[CLS] text [SEP]` -> (B, T', H) last hidden states and their (B, T') mask.

        T' = T, except with the label prompt, which this inserts after the first token.
        """
        input_ids, attention_mask = self.pooling.extend(input_ids, attention_mask)
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, attention_mask

    def pool_states(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T', H) states -> (B, H) for `cls`/`mean` pooling, (B, L, H) for the per-label poolings."""
        return self.pooling(hidden, attention_mask)

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
        """The loss (`model.init_args.loss`) of (B, L) logits against (B, L) gold labels."""
        return self.criterion(logits, labels, self.pos_weight)

    def set_label_frequencies(self, frequencies: list[float]) -> None:
        """Fill `pos_weight` from the training split's label frequencies, in `label_names` order, when the loss asks for it (`pos_weight: auto`)."""
        if not self.criterion.needs_label_frequencies:
            return
        weights = auto_pos_weight(frequencies)
        self.pos_weight.copy_(weights.to(self.pos_weight.device))
        rank_zero_info("pos_weight auto: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(self.label_names, weights.tolist())))

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.compile:
            self.compile_encoder()

    def compile_encoder(self) -> None:
        """torch.compile the encoder in place (`model.compile`): its parameter names, so its checkpoints, stay as they are."""
        # one graph per (shape, train/eval mode): torch's default of 8 recompiles would fall back to
        # eager after 4 length buckets; 64 covers every bucket of 16 up to 512 tokens in both modes
        raise_recompile_limit(64)
        self.encoder.compile(dynamic=False)

    def configure_callbacks(self):
        # what only the data module knows (label frequencies, padding), handed over once both are set up
        return [PrepareFit()] if self.criterion.needs_label_frequencies or self.hparams.compile else []

    # ---- steps ---------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.criterion.training_loss(self, batch["input_ids"], batch["attention_mask"], batch["labels"], self.pos_weight)
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
        settings = self.threshold_settings
        if stage == "val" and settings.tune and self.trainer.state.fn == "fit":
            chosen = choose_thresholds(probs.cpu(), target.cpu(), settings.strategy, settings.threshold, settings.min_label_positives, settings.shrinkage)
            self.thresholds.copy_(chosen.to(self.thresholds.device))
        self.keep_epoch_outputs(log_epoch_scores(self, stage, probs, target, settings.threshold, self.thresholds))

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
        """AdamW parameter groups: the encoder's (`encoder_groups`), then the head's; decay split by `no_decay`.

        Subclasses append their own trainable modules here; `configure_optimizers` builds the
        optimizer and the schedule over whatever this returns.
        """
        hp = self.hparams
        groups = self.encoder_groups.groups(self.encoder, hp.lr, hp.weight_decay)
        head_lr = hp.head_lr or hp.lr
        groups.append({"params": [self.head.weight], "weight_decay": hp.weight_decay, "lr": head_lr})
        groups.append({"params": [self.head.bias], "weight_decay": 0.0, "lr": head_lr})
        if pooling := list(self.pooling.parameters()):  # label attention's queries
            groups.append({"params": pooling, "weight_decay": 0.0, "lr": head_lr})
        return groups

    def configure_optimizers(self):
        # fused (one kernel), except when clipping under mixed precision, which Lightning cannot do for it (hardware.py)
        kernel = adamw_options(self.trainer.precision, self.trainer.gradient_clip_val)
        optimizer = torch.optim.AdamW(self.param_groups(), lr=self.hparams.lr, **kernel)
        total = self.trainer.estimated_stepping_batches
        scheduler = linear_warmup_decay(optimizer, int(self.hparams.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("label_names")
        if saved is not None and list(saved) != self.label_names:
            raise ConfigError(
                f"The checkpoint was trained on the labels {list(saved)}, but the data has {self.label_names}. "
                "Use the data the checkpoint was trained on, or set `data.label_columns` to the checkpoint's labels."
            )
