"""A Hugging Face model class for exported emolightning classifiers (see export.py).

`emolightning export` copies this file verbatim into the export directory, next to config.json
(whose `auto_map` names it), so it must import nothing but torch and transformers: whoever loads
the export with `trust_remote_code=True` has no emolightning installed.

It is emolightning's EmotionClassifier without Lightning: any encoder (`AutoModel.from_config` of
the encoder's own config) -> the first token (`classifier_pooling: cls`), the mean over real
tokens (`mean`), one attention query per label (`label_attention`) or the label names as a first
segment read back per label (`label_prompt`: the ids in `config.label_prompt_ids` go after the
first token, inside `forward`, so the tokenizer is used as usual) -> dropout -> linear -> one logit
per label. This file repeats emolightning's heads.py on purpose: it must stand alone. No standard class does this: e.g.
BertForSequenceClassification puts BERT's pooler (dense + tanh) on the first token, which
emolightning does not, and no standard class mean-pools. The state dict keys are emolightning's
(`encoder.*`, `head.*`, `pooling.*`), so an export is a rename-free copy of the checkpoint's weights.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class EmolightningForSequenceClassification(PreTrainedModel):
    """Multi-label emotion classifier: sigmoid(logits) >= config.thresholds gives the labels."""

    base_model_prefix = "encoder"
    # attention backends are the encoder's business: claim them here so that the config's
    # choice (sdpa by default) reaches the encoder instead of being downgraded to eager
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config):
        super().__init__(config)
        try:
            self.encoder = AutoModel.from_config(config)
        except ValueError as err:  # an encoder without that backend (MPNet has no sdpa) runs its own eager attention
            if "attention implementation" not in str(err):
                raise
            self.encoder = AutoModel.from_config(config, attn_implementation="eager")
        # BERT/RoBERTa's own pooler (dense + tanh on the first token) is unused, as in emolightning
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None
        dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(0.0 if dropout is None else dropout)
        self.head = nn.Linear(config.hidden_size, config.num_labels)
        pooling = config.classifier_pooling
        if pooling == "label_attention":
            self.pooling = nn.Module()
            self.pooling.queries = nn.Parameter(torch.zeros(config.num_labels, config.hidden_size))
        self.post_init()

    def prompt_average(self, hidden: torch.Tensor) -> torch.Tensor:
        """(L, P): row j averages label j's name tokens. Built from the config on each call, not kept as a
        buffer: from_pretrained creates the model without running buffer initialisers."""
        spans = self.config.label_prompt_spans
        average = torch.zeros(len(spans), len(self.config.label_prompt_ids), dtype=hidden.dtype, device=hidden.device)
        for j, (start, end) in enumerate(spans):
            average[j, start:end] = 1.0 / (end - start)
        return average

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, H) or (B, L, H), exactly as emolightning's heads.py."""
        pooling = self.config.classifier_pooling
        if pooling == "label_attention":
            queries = self.pooling.queries.to(hidden.dtype)
            scores = torch.einsum("bth,lh->blt", hidden, queries) / hidden.shape[-1] ** 0.5
            scores = scores.masked_fill(~attention_mask.bool().unsqueeze(1), torch.finfo(scores.dtype).min)
            return torch.einsum("blt,bth->blh", scores.softmax(dim=-1), hidden)
        if pooling == "label_prompt":
            return torch.einsum("lp,bph->blh", self.prompt_average(hidden), hidden[:, 1 : 1 + len(self.config.label_prompt_ids)])
        if pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)

    def forward(self, input_ids=None, attention_mask=None, labels=None, token_type_ids=None, return_dict=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # token_type_ids are accepted (tokenizers return them) but not passed: emolightning
        # trained on single texts without them, and the encoder's default is the same zeros
        if self.config.classifier_pooling == "label_prompt":
            prompt = torch.tensor([*self.config.label_prompt_ids, self.config.label_prompt_sep_id], device=input_ids.device).expand(len(input_ids), -1)
            input_ids = torch.cat([input_ids[:, :1], prompt, input_ids[:, 1:]], dim=1)
            attention_mask = torch.cat([attention_mask[:, :1], torch.ones_like(prompt, dtype=attention_mask.dtype), attention_mask[:, 1:]], dim=1)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = self.dropout(self.pool(hidden, attention_mask))
        logits = (pooled * self.head.weight).sum(-1) + self.head.bias if pooled.dim() == 3 else self.head(pooled)
        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return SequenceClassifierOutput(loss=loss, logits=logits)
