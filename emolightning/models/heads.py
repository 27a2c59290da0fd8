"""From an encoder's token states to one vector per text, or one vector per (text, label).

Four poolings, each a head component chosen by `model.init_args.head.class_path`
(`ClsPooling`, the default, `MeanPooling`, `LabelAttentionPooling`, `LabelPromptPooling`):

- `cls`: the first token's state, (B, H).
- `mean`: the mean over real (unpadded) tokens, (B, H).
- `label_attention`: one learned query per label attends over the tokens (as in RoBERTa-MA,
  Ameer et al. 2023), giving a vector per label, (B, L, H).
- `label_prompt`: the label names are put in front of the text as a first segment
  (`[CLS] anger anticipation ... trust [SEP] text [SEP]`, as in SpanEmo, Alhuzali & Ananiadou 2021)
  and each label's vector is the mean state of its name's tokens, (B, L, H). `LabelPrompt` builds
  that input from the ordinary `[CLS] text [SEP]` ids inside the model, so the data pipeline,
  prediction, distillation and export see the same inputs whatever the pooling.

A (B, H) vector gets the usual linear head; a (B, L, H) one is scored by the same weights read
per label (`label_logits`): label j's logit is w_j . v_j + b_j, so every pooling keeps a head of
shape (L, H) and checkpoints stay interchangeable in shape.

A head component is configuration only (its typed `__init__` arguments are what `--help` shows);
`build(hidden_size, label_names, tokenizer_name)` makes the pooling module once the encoder is
known. EmotionClassifier owns the dropout and the (L, H) linear layer around it, so every head
keeps the state dict keys `head.weight`, `head.bias`, and a pooling's own weights sit under `pooling.`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError


def pool(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """(B, T, H) hidden states -> (B, H): the first token, or the mean over unpadded tokens."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


class Pooling(nn.Module):
    """A pooling module: `extend` makes the encoder's input from `[CLS] text [SEP]` (unchanged but for the
    label prompt), `forward` pools the (B, T', H) states and their (B, T') mask to (B, H) or (B, L, H)."""

    def extend(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        return input_ids, attention_mask


class TokenPooling(Pooling):
    """`cls` or `mean` (`pool`): no weights of its own."""

    def __init__(self, pooling: str):
        super().__init__()
        self.pooling = pooling

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return pool(hidden, attention_mask, self.pooling)


def label_logits(vectors: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """(B, L, H) per-label vectors, (L, H) weights, (L,) biases -> (B, L) logits, w_j . v_j + b_j."""
    return (vectors * weight).sum(dim=-1) + bias


class LabelAttention(Pooling):
    """One learned query per label, scaled dot-product attention over the real tokens.

    (B, T, H) states and (B, T) mask -> (B, L, H): label j's vector is sum_t a_jt h_t with
    a_j = softmax_t(q_j . h_t / sqrt(H)) over unpadded t only.
    """

    def __init__(self, num_labels: int, hidden_size: int):
        super().__init__()
        # BERT's initialiser range: queries start small, so the first steps attend almost evenly
        self.queries = nn.Parameter(torch.randn(num_labels, hidden_size) * 0.02)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        scores = torch.einsum("bth,lh->blt", hidden, self.queries.to(hidden.dtype)) / math.sqrt(hidden.shape[-1])
        scores = scores.masked_fill(~attention_mask.bool().unsqueeze(1), torch.finfo(scores.dtype).min)
        return torch.einsum("blt,bth->blh", scores.softmax(dim=-1), hidden)


def label_prompt_ids(tokenizer, label_names: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """The label names as one segment of token ids, and each label's [start, end) span in it.

    Each name is tokenised on its own with a leading space (so byte-level BPE tokenizers such as
    RoBERTa's see it as a word, as it would be inside a sentence; WordPiece drops the space), then the
    pieces are concatenated: a name of several pieces (`pessimism` -> `pe ##ssi ##mism`) owns them all.
    """
    ids, spans = [], []
    for name in label_names:
        pieces = tokenizer(" " + name.replace("_", " "), add_special_tokens=False)["input_ids"]
        if not pieces:
            raise ValueError(f"The label name {name!r} tokenises to nothing, so it cannot be a prompt token.")
        spans.append((len(ids), len(ids) + len(pieces)))
        ids.extend(pieces)
    return ids, spans


class LabelPrompt(Pooling):
    """Puts the label-name segment after the first token and reads one vector per label back.

    `extend`: (B, T) ids and mask of `[CLS] text [SEP]` -> (B, T + P + 1) ids and mask of
    `[CLS] names [SEP] text [SEP]` (P prompt tokens, one separator). `read`: (B, T + P + 1, H) states ->
    (B, L, H), each label's vector the mean over its name's tokens.
    """

    def __init__(self, prompt_ids: list[int], spans: list[tuple[int, int]], sep_token_id: int):
        super().__init__()
        self.register_buffer("prompt", torch.tensor([*prompt_ids, sep_token_id], dtype=torch.long), persistent=False)
        average = torch.zeros(len(spans), len(prompt_ids))
        for j, (start, end) in enumerate(spans):
            average[j, start:end] = 1.0 / (end - start)
        self.register_buffer("average", average, persistent=False)

    def extend(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        prompt = self.prompt.to(input_ids.device).expand(len(input_ids), -1)
        ids = torch.cat([input_ids[:, :1], prompt, input_ids[:, 1:]], dim=1)
        mask = torch.cat([attention_mask[:, :1], torch.ones_like(prompt, dtype=attention_mask.dtype), attention_mask[:, 1:]], dim=1)
        return ids, mask

    def read(self, hidden: Tensor) -> Tensor:
        names = hidden[:, 1 : 1 + self.average.shape[1]]
        return torch.einsum("lp,bph->blh", self.average.to(hidden.dtype), names)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return self.read(hidden)


# ---- head components: what `model.init_args.head` names -----------------------------------------
class Head(ABC):
    """Base of the head components: a pooling, then dropout and one linear logit per label."""

    name: ClassVar[str] = ""

    def __init__(self, dropout: float = 0.1):
        """
        Args:
            dropout: Dropout before the linear head.
        """
        if not 0 <= dropout < 1:
            raise ConfigError(f"`model.init_args.head.init_args.dropout` is {dropout}; it must be in [0, 1).")
        self.dropout = dropout

    @abstractmethod
    def build(self, hidden_size: int, label_names: list[str], tokenizer_name: str) -> Pooling:
        """The pooling module for an encoder of `hidden_size` and these labels (tokenised with `tokenizer_name`)."""


class ClsPooling(Head):
    """The first token's state, (B, H), then dropout and a linear layer: the default head."""

    name = "cls"

    def build(self, hidden_size: int, label_names: list[str], tokenizer_name: str) -> Pooling:
        return TokenPooling(self.name)


class MeanPooling(Head):
    """The mean of the real (unpadded) tokens' states, (B, H), then dropout and a linear layer."""

    name = "mean"

    def build(self, hidden_size: int, label_names: list[str], tokenizer_name: str) -> Pooling:
        return TokenPooling(self.name)


class LabelAttentionPooling(Head):
    """One learned query per label attends over the tokens (RoBERTa-MA, Ameer et al. 2023), (B, L, H).

    Each label's vector is scored by its own row of the linear layer. The queries train at `head_lr`,
    without weight decay.
    """

    name = "label_attention"

    def build(self, hidden_size: int, label_names: list[str], tokenizer_name: str) -> Pooling:
        return LabelAttention(len(label_names), hidden_size)


class LabelPromptPooling(Head):
    """The label names go in front of the text as a first segment and each label is read from its name's tokens (SpanEmo).

    Adds one token per name piece plus a separator to every input; the model inserts them, so the
    data, prediction and export see the ordinary `[CLS] text [SEP]` ids.
    """

    name = "label_prompt"

    def build(self, hidden_size: int, label_names: list[str], tokenizer_name: str) -> Pooling:
        from ..pretrained.encoders import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_name)
        prompt, spans = label_prompt_ids(tokenizer, list(label_names))
        return LabelPrompt(prompt, spans, tokenizer.sep_token_id)
