"""Distillation losses, as pure functions (DistilBERT: Sanh et al., 2019).

The DistilBERT recipe sums three terms: a soft-target loss (the student matches the teacher's
temperature-softened outputs), the ordinary hard-label loss, and a cosine loss that aligns the
student's hidden states with the teacher's. Emotion classification is multi-label, so the soft
target of each label is the teacher's sigmoid, not a softmax over labels: `soft_target_loss`
uses a per-label binary KL by default and the paper's softmax KL on request.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, multi_label: bool = True) -> Tensor:
    """The student's divergence from the teacher's temperature-softened predictions, times T².

    multi_label=True: for every (example, label), the binary KL divergence
    KL(Bernoulli(p) || Bernoulli(q)) with p = sigmoid(teacher / T) and q = sigmoid(student / T),
    averaged over examples and labels. It is zero when student == teacher (BCE with soft targets,
    the other common choice, bottoms out at the teacher's entropy instead), and its gradient is the
    same as that BCE's. multi_label=False: the DistilBERT paper's KL(softmax(teacher / T) ||
    softmax(student / T)) over the labels, summed over labels and averaged over examples.

    Both are scaled by T², so that their gradients keep the same size as the temperature changes
    (Hinton et al., 2015) and the weights against the hard loss need not be retuned with T.

    Args:
        student_logits: (B, L) student logits.
        teacher_logits: (B, L) teacher logits (no gradient needed).
        temperature: T > 0; 1 leaves the predictions as they are, larger T softens them.
        multi_label: per-label sigmoid KL (True) or the softmax KL over labels (False).
    Returns:
        scalar loss tensor (float32).
    """
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    if multi_label:
        p = torch.sigmoid(t)
        # KL(p || q) = cross-entropy(p, q) - entropy(p); both from logits, so stable for large |logits|
        cross_entropy = F.binary_cross_entropy_with_logits(s, p, reduction="none")
        entropy = F.binary_cross_entropy_with_logits(t, p, reduction="none")
        kl = (cross_entropy - entropy).mean()
    else:
        kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True)
    return kl * temperature**2


def hard_label_loss(logits: Tensor, labels: Tensor, pos_weight: Tensor | None = None) -> Tensor:
    """BCE-with-logits against the gold 0/1 labels, averaged over examples and labels.

    Args:
        logits: (B, L) student logits.
        labels: (B, L) gold labels, 0/1.
        pos_weight: (L,) weights of the positive class per label, or None.
    Returns:
        scalar loss tensor (float32).
    """
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=pos_weight)


def hidden_cosine_loss(student_hidden: Tensor, teacher_hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of 1 - cos(student, teacher) over the real tokens; padded positions count for nothing.

    Args:
        student_hidden: (B, T, H) student hidden states (projected to the teacher's size if they differ).
        teacher_hidden: (B, T, H) teacher hidden states of the same tokens.
        attention_mask: (B, T) 1 for real tokens, 0 for padding.
    Returns:
        scalar loss tensor (float32) in [0, 2].
    """
    cos = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
    mask = attention_mask.to(cos.dtype)
    return ((1.0 - cos) * mask).sum() / mask.sum().clamp(min=1.0)
