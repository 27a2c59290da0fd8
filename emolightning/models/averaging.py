"""Averaging the outputs of several models: the maths of an ensemble (inference/ensemble.py) and of an ensemble teacher (distill.py).

Pure functions of tensors, in models/ so that both the inference side and the distiller import
them from below. N rows, L labels, M members.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


def normalized_weights(weights: list[float] | None, n: int) -> list[float]:
    """`weights` (n positive numbers, or None for equal ones) scaled to sum to 1."""
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    if len(weights) != n or any(w <= 0 for w in weights):
        raise ConfigError(f"The ensemble weights {weights} must be {n} positive numbers, one per member, in the members' order.")
    return [w / sum(weights) for w in weights]


def average_probabilities(probs: list[Tensor], weights: list[float] | None = None) -> Tensor:
    """M tensors of (N, L) probabilities -> their (N, L) weighted mean: what an ensemble predicts."""
    return sum(w * p for w, p in zip(normalized_weights(weights, len(probs)), probs))


def average_logits(logits: list[Tensor], weights: list[float] | None = None, multi_label: bool = True) -> Tensor:
    """M tensors of (N, L) logits -> the (N, L) logits of the members' averaged probabilities: logit(sum_i w_i sigmoid(z_i)) per label.

    Computed in log space (log p = logsumexp_i(log w_i + log sigmoid(z_i)), and log(1 - p) likewise),
    so that no probability saturates to 0 or 1 and no logit to infinity; one member gives back its own
    logits. multi_label=False averages softmax distributions over the labels instead and returns
    their log, which softmax maps back to that average.
    """
    z = torch.stack([x.float() for x in logits])  # (M, N, L)
    log_w = torch.tensor(normalized_weights(weights, len(logits)), device=z.device).log().view(-1, *[1] * (z.dim() - 1))
    if not multi_label:
        return torch.logsumexp(log_w + F.log_softmax(z, dim=-1), dim=0)
    return torch.logsumexp(log_w + F.logsigmoid(z), dim=0) - torch.logsumexp(log_w + F.logsigmoid(-z), dim=0)
