"""Losses, as pure functions: multi-label classification losses and distillation losses.

Classification: BCE (`hard_label_loss`), focal loss (Lin et al., 2017) and the asymmetric loss
(Ridnik et al., 2021), which down-weight easy negatives so that rare labels (trust, surprise) are
not drowned by the many zeros of an 11-label multi-hot target; and SpanEmo's label-correlation loss
(Alhuzali & Ananiadou, 2021), which pushes each gold-positive label's score above each gold-negative's;
and R-Drop's consistency term (Liang et al., 2021) between two dropout passes of one batch.

Distillation (DistilBERT: Sanh et al., 2019): the DistilBERT recipe sums three terms: a soft-target loss (the student matches the teacher's
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


def focal_loss(logits: Tensor, labels: Tensor, gamma: float, pos_weight: Tensor | None = None) -> Tensor:
    """Binary focal loss: BCE of each (example, label) times (1 - p_t)^gamma, averaged.

    p_t is the predicted probability of the gold value (p for a positive, 1 - p for a negative), so
    well-classified cells count little. gamma = 0 is BCE.

    Args:
        logits: (B, L) logits.
        labels: (B, L) gold labels, 0/1.
        gamma: focusing exponent >= 0.
        pos_weight: (L,) weights of the positive class per label, or None.
    Returns:
        scalar loss tensor (float32).
    """
    logits, labels = logits.float(), labels.float()
    bce = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * labels + (1 - p) * (1 - labels)
    return ((1 - p_t).pow(gamma) * bce).mean()


def asymmetric_loss(logits: Tensor, labels: Tensor, gamma_neg: float, gamma_pos: float, clip: float) -> Tensor:
    """Asymmetric loss (ASL, Ridnik et al. 2021), averaged over examples and labels.

    Positives: -(1 - p)^gamma_pos * log(p). Negatives use the shifted probability
    p_m = max(p - clip, 0): -(p_m)^gamma_neg * log(1 - p_m), so negatives with p <= clip cost nothing
    and easy negatives are focused away more strongly than positives (gamma_neg > gamma_pos).
    The reference implementation sums over examples and labels; the mean used here keeps the loss on
    BCE's scale (Adam is insensitive to the difference, the learning rate is not retuned).
    gamma_neg = gamma_pos = g with clip = 0 is the focal loss with exponent g.

    Args:
        logits: (B, L) logits.
        labels: (B, L) gold labels, 0/1.
        gamma_neg, gamma_pos: focusing exponents of negatives and positives.
        clip: probability margin shifted off negatives, in [0, 1).
    Returns:
        scalar loss tensor (float32).
    """
    logits, labels = logits.float(), labels.float()
    p = torch.sigmoid(logits)
    # log(1 - p_m) with p_m = max(p - clip, 0); log(1 - p) from logits keeps clip = 0 exact and stable
    log_not_p = F.logsigmoid(-logits) if clip == 0 else torch.log((1 - p + clip).clamp(max=1.0))
    p_m = p if clip == 0 else (p - clip).clamp(min=0.0)
    positive = labels * (1 - p).pow(gamma_pos) * F.logsigmoid(logits)
    negative = (1 - labels) * p_m.pow(gamma_neg) * log_not_p
    return -(positive + negative).mean()


def label_correlation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """SpanEmo's label-correlation loss: each gold-positive label scored above each gold-negative one.

    For an example with positives P and negatives N (probabilities p = sigmoid(logits)),
    (1 / (|P| |N|)) * sum_{i in P, j in N} exp(p_j - p_i); examples with no positive or no negative
    label contribute 0. Averaged over the batch, as in the reference code.

    Args:
        logits: (B, L) logits.
        labels: (B, L) gold labels, 0/1.
    Returns:
        scalar loss tensor (float32).
    """
    p, positive = torch.sigmoid(logits.float()), labels.bool()
    negative = ~positive
    pairs = positive.unsqueeze(2) & negative.unsqueeze(1)  # (B, L_i, L_j): i positive, j negative
    gaps = torch.exp(p.unsqueeze(1) - p.unsqueeze(2))  # [b, i, j] = exp(p_j - p_i)
    count = pairs.sum(dim=(1, 2))
    per_example = (gaps * pairs).sum(dim=(1, 2)) / count.clamp(min=1)
    return per_example.mean()


def consistency_loss(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """R-Drop's consistency term for multi-label outputs: the symmetric KL divergence between the
    per-label Bernoulli predictions of two forward passes of the same batch (two dropout masks).

    For Bernoulli(p), Bernoulli(q) with logits a, b: KL(p||q) + KL(q||p) = (p - q)(a - b), so the
    symmetric KL (the mean of the two directions) is (p - q)(a - b) / 2: never negative, zero only
    where the passes agree, and free of logs, so stable for any logits. Averaged over examples and
    labels, like `hard_label_loss`, so a weight of 1 puts the two on one scale.

    Args:
        logits_a: (B, L) logits of the first pass.
        logits_b: (B, L) logits of the second pass.
    Returns:
        scalar loss tensor (float32).
    """
    a, b = logits_a.float(), logits_b.float()
    return (0.5 * (torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)).mean()
