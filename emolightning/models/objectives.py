"""The training loss as a component chosen by `model.init_args.loss.class_path`: thin callables over losses.py.

    BCE (default) | Focal | ASL                      one loss over (B, L) logits and 0/1 labels
    LabelCorrelationMix(loss, weight)               SpanEmo: (1 - w) x loss + w x label-correlation loss
    RDrop(loss, weight)                             R-Drop: two dropout passes, their mean loss + w x consistency

Each is called as `loss(logits, labels, pos_weight)`. The (L,) positive-class weights are a buffer of the
model (`pos_weight` in its state dict, so a checkpoint keeps the weights it trained with); the loss
component says how to fill it (`initial_pos_weight`, `needs_label_frequencies`).

R-Drop is a loss component rather than an option of the model because it changes only how the
training loss is computed from the network: it runs the batch through `forward` twice, which
`training_loss` receives; validation, test and the distiller call the plain `loss(logits, labels, ...)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ..errors import ConfigError
from .components import component
from .losses import asymmetric_loss, consistency_loss, focal_loss, hard_label_loss, label_correlation_loss

Forward = Callable[[Tensor, Tensor], Tensor]


def auto_pos_weight(frequencies: list[float]) -> Tensor:
    """(L,) positive-class weights sqrt(negatives / positives) from each label's training frequency."""
    f = torch.tensor(frequencies, dtype=torch.float)
    # sqrt of the full ratio: the full ratio (19 for a 5% label) makes a rare label's positives
    # outweigh all its negatives and floods it with false positives
    return ((1 - f) / f.clamp(min=1e-4)).sqrt()


class Loss(ABC):
    """Base of the loss components: (B, L) logits, (B, L) gold 0/1 labels, (L,) pos_weight or None -> scalar."""

    @abstractmethod
    def __call__(self, logits: Tensor, labels: Tensor, pos_weight: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def training_loss(self, forward: Forward, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, pos_weight: Tensor | None = None) -> Tensor:
        """The training step's loss of a batch; `forward`: (B, T) ids and mask -> (B, L) logits."""
        return self(forward(input_ids, attention_mask), labels, pos_weight)

    @property
    def pos_weight_setting(self) -> list[float] | str | None:
        """The `pos_weight` option that the model's buffer follows (none for losses without one)."""
        return None

    @property
    def needs_label_frequencies(self) -> bool:
        """Whether the model's `pos_weight` is filled from the training split's label frequencies (`auto`)."""
        return self.pos_weight_setting == "auto"

    def initial_pos_weight(self, label_names: list[str]) -> Tensor | None:
        """The (L,) buffer the model starts with: the given weights, ones for `auto` (filled before fit), or None."""
        setting, n = self.pos_weight_setting, len(label_names)
        if setting is None:
            return None
        if setting == "auto":
            return torch.ones(n)
        if len(setting) != n:
            raise ConfigError(
                f"`model.init_args.loss.init_args.pos_weight` has {len(setting)} values for {n} labels {list(label_names)}. Give one weight per label, or `auto`."
            )
        return torch.tensor(setting, dtype=torch.float)


class BCE(Loss):
    """Binary cross-entropy with logits, averaged over examples and labels (losses.hard_label_loss): the default."""

    def __init__(self, pos_weight: list[float] | Literal["auto"] | None = None):
        """
        Args:
            pos_weight: Per-label positive-class weights (one per label); `auto`: sqrt(negatives /
                positives) of each label in the training split; none: 1.
        """
        self.pos_weight = pos_weight

    @property
    def pos_weight_setting(self) -> list[float] | str | None:
        return self.pos_weight

    def __call__(self, logits: Tensor, labels: Tensor, pos_weight: Tensor | None = None) -> Tensor:
        return hard_label_loss(logits, labels, pos_weight)


class Focal(BCE):
    """Binary focal loss (Lin et al., 2017; losses.focal_loss): BCE times (1 - p_t)^gamma, so easy cells count little."""

    def __init__(self, gamma: float = 2.0, pos_weight: list[float] | Literal["auto"] | None = None):
        """
        Args:
            gamma: Focusing exponent (0 is BCE).
            pos_weight: Per-label positive-class weights, as for BCE.
        """
        super().__init__(pos_weight)
        self.gamma = gamma

    def __call__(self, logits: Tensor, labels: Tensor, pos_weight: Tensor | None = None) -> Tensor:
        return focal_loss(logits, labels, self.gamma, pos_weight=pos_weight)


class ASL(Loss):
    """The asymmetric loss (Ridnik et al., 2021; losses.asymmetric_loss): down-weights the many easy negatives of rare labels."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05):
        """
        Args:
            gamma_neg: Focusing exponent of negative labels.
            gamma_pos: Focusing exponent of positive labels.
            clip: Probability margin below which a negative costs nothing.
        """
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def __call__(self, logits: Tensor, labels: Tensor, pos_weight: Tensor | None = None) -> Tensor:
        return asymmetric_loss(logits, labels, self.gamma_neg, self.gamma_pos, self.clip)


class Wrapper(Loss, ABC):
    """A loss around another one (`loss`), whose `pos_weight` it keeps."""

    def __init__(self, loss: Loss | None = None):
        self.loss = component(loss, Loss, BCE, "model.init_args.loss.init_args.loss")

    @property
    def pos_weight_setting(self) -> list[float] | str | None:
        return self.loss.pos_weight_setting


class LabelCorrelationMix(Wrapper):
    """SpanEmo (Alhuzali & Ananiadou, 2021): (1 - weight) x `loss` + weight x the label-correlation loss.

    The label-correlation loss (losses.label_correlation_loss) pushes each gold-positive label's score
    above each gold-negative one's. SpanEmo used it with the label prompt (`LabelPromptPooling`) and weight 0.2.
    """

    def __init__(self, loss: Loss | None = None, weight: float = 0.2):
        """
        Args:
            loss: The loss it is mixed with (default BCE).
            weight: Weight a in (1 - a) x loss + a x correlation loss, in [0, 1].
        """
        super().__init__(loss)
        if not 0 <= weight <= 1:
            raise ConfigError(f"`model.init_args.loss.init_args.weight` (label correlation) is {weight}; it must be in [0, 1].")
        self.weight = weight

    def __call__(self, logits: Tensor, labels: Tensor, pos_weight: Tensor | None = None) -> Tensor:
        return (1 - self.weight) * self.loss(logits, labels, pos_weight) + self.weight * label_correlation_loss(logits, labels)


class RDrop(Wrapper):
    """R-Drop (Liang et al., 2021): every training batch runs through the network twice (two dropout masks).

    The two passes go as one batch of twice the rows; the training loss is the mean of the two passes'
    `loss` plus `weight` times their symmetric KL (losses.consistency_loss). Doubles the training
    compute. Validation and test use `loss` alone.
    """

    def __init__(self, loss: Loss | None = None, weight: float = 1.0):
        """
        Args:
            loss: The loss of each pass (default BCE).
            weight: Weight of the consistency term, >= 0.
        """
        super().__init__(loss)
        if weight < 0:
            raise ConfigError(f"`model.init_args.loss.init_args.weight` (R-Drop) is {weight}; it must be >= 0 (use the inner loss alone to turn R-Drop off).")
        self.weight = weight

    def __call__(self, logits: Tensor, labels: Tensor, pos_weight: Tensor | None = None) -> Tensor:
        return self.loss(logits, labels, pos_weight)

    def training_loss(self, forward: Forward, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, pos_weight: Tensor | None = None) -> Tensor:
        # both passes as one batch: each copy of a row draws its own dropout mask
        first, second = forward(input_ids.repeat(2, 1), attention_mask.repeat(2, 1)).chunk(2)
        mean = (self.loss(first, labels, pos_weight) + self.loss(second, labels, pos_weight)) / 2
        return mean + self.weight * consistency_loss(first, second)
