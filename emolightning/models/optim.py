"""AdamW parameter groups and the learning-rate schedule.

The encoder's groups come from a component chosen by `model.init_args.encoder_groups.class_path`:
`EncoderGroups` (the default: one learning rate for the whole encoder, BERT's recipe) or
`LayerwiseLRDecay` (each layer below the top at a factor of the one above). Layer-wise decay is a
component of the optimizer's groups rather than of the model because it changes nothing but the
learning rate each encoder parameter gets; the head's groups (`head_lr`) are the model's.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import ConfigError
from ..pretrained.encoders import layer_list


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


class EncoderGroups:
    """The encoder's AdamW groups: every parameter at `lr`, decayed or not (`no_decay`): BERT's recipe, the default."""

    def __init__(self):
        pass

    per_layer = False  # one group pair per encoder depth, or one for the whole encoder

    def layer_factor(self, depth: int, num_layers: int) -> float:
        """The factor on `lr` of the parameters at `depth` (0: embeddings, num_layers: the top layer)."""
        return 1.0

    def groups(self, encoder: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
        num_layers = len(layer_list(encoder))

        def depth(name: str) -> int:  # without decay, one depth: the two groups of BERT's recipe
            return encoder_depth(name, num_layers) if self.per_layer else num_layers

        groups = []
        for level in sorted({depth(n) for n, _ in named}):
            at_depth = [(n, p) for n, p in named if depth(n) == level]
            for decayed in (True, False):
                params = [p for n, p in at_depth if no_decay(n) != decayed]
                if params:
                    groups.append({"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr": lr * self.layer_factor(level, num_layers)})
        return groups


class LayerwiseLRDecay(EncoderGroups):
    """Layer-wise learning-rate decay: the top encoder layer trains at `lr`, each layer below at `decay` times the one above, the embeddings last."""

    def __init__(self, decay: float = 0.8):
        """
        Args:
            decay: Factor between a layer's learning rate and the one above it, in (0, 1].
        """
        if not 0 < decay <= 1:
            raise ConfigError(f"`model.init_args.encoder_groups.init_args.decay` is {decay}; it must be in (0, 1] (1 is no decay).")
        self.decay = decay
        self.per_layer = decay < 1

    def layer_factor(self, depth: int, num_layers: int) -> float:
        return self.decay ** max(0, num_layers - depth)
