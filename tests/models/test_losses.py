"""The distillation losses against numbers worked out by hand (math, not torch)."""

import math

import pytest
import torch

from emolightning.models.losses import hard_label_loss, hidden_cosine_loss, soft_target_loss


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def binary_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_sigmoid_soft_loss_is_the_mean_binary_kl_times_t_squared():
    student, teacher = torch.tensor([[0.0, 2.0]]), torch.tensor([[2.0, -2.0]])
    # T = 2: p = sigmoid(teacher / 2) = (s(1), s(-1)), q = sigmoid(student / 2) = (s(0), s(1))
    kl = (binary_kl(sigmoid(1), sigmoid(0)) + binary_kl(sigmoid(-1), sigmoid(1))) / 2
    assert kl == pytest.approx((0.110943 + 0.462117) / 2, abs=1e-6)  # KL(s(-1) || s(1)) = s(1) - s(-1) exactly
    assert soft_target_loss(student, teacher, temperature=2.0).item() == pytest.approx(4 * kl, rel=1e-5)
    assert soft_target_loss(student, teacher, temperature=1.0).item() == pytest.approx(
        (binary_kl(sigmoid(2), sigmoid(0)) + binary_kl(sigmoid(-2), sigmoid(2))) / 2, rel=1e-5
    )


def test_soft_loss_is_zero_when_student_equals_teacher_and_stable_for_large_logits():
    logits = torch.tensor([[30.0, -30.0, 0.5], [100.0, -100.0, 0.0]])
    assert soft_target_loss(logits, logits, temperature=3.0).item() == 0.0
    assert soft_target_loss(logits, logits, temperature=3.0, multi_label=False).item() == pytest.approx(0.0, abs=1e-7)
    far = soft_target_loss(-logits, logits, temperature=1.0)
    assert torch.isfinite(far) and far.item() > 10


def test_softmax_soft_loss_is_the_distilbert_kl_batchmean_times_t_squared():
    student = torch.tensor([[2.0, 0.0, -2.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # row 1 at T = 2: p uniform, q = softmax(1, 0, -1); KL = log(1/3) - mean(log q). Row 2: KL 0.
    z = math.exp(1) + 1 + math.exp(-1)
    log_q = [1 - math.log(z), -math.log(z), -1 - math.log(z)]
    kl_row1 = math.log(1 / 3) - sum(log_q) / 3
    assert kl_row1 == pytest.approx(0.308994, abs=1e-6)
    expected = 4 * (kl_row1 + 0.0) / 2  # batchmean: summed over labels, averaged over the 2 rows
    assert soft_target_loss(student, teacher, temperature=2.0, multi_label=False).item() == pytest.approx(expected, rel=1e-5)


def test_t_squared_scaling_for_both_variants():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 11, generator=g), torch.randn(4, 11, generator=g)
    for multi_label in (True, False):
        at_t = soft_target_loss(s, t, temperature=3.0, multi_label=multi_label)
        at_1 = soft_target_loss(s / 3, t / 3, temperature=1.0, multi_label=multi_label)
        assert at_t.item() == pytest.approx(9 * at_1.item(), rel=1e-5)


def test_hard_label_loss_is_bce_with_optional_pos_weight():
    logits, labels = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]])
    # -log s(0) = log 2; -log(1 - s(2)) = log(1 + e^2)
    assert hard_label_loss(logits, labels).item() == pytest.approx((math.log(2) + math.log(1 + math.e**2)) / 2, rel=1e-6)
    weighted = hard_label_loss(logits, labels, pos_weight=torch.tensor([2.0, 1.0])).item()
    assert weighted == pytest.approx((2 * math.log(2) + math.log(1 + math.e**2)) / 2, rel=1e-6)


def test_cosine_loss_averages_over_real_tokens_only():
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], [[1.0, 1.0], [7.0, 0.0], [0.0, 3.0]]])
    teacher = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0]], [[1.0, 0.0], [-7.0, 0.0], [0.0, -3.0]]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # real tokens: cos 1, 0, -1 (row 1) and 1/sqrt(2) (row 2); the two padded ones (cos -1) must not count
    expected = ((1 - 1) + (1 - 0) + (1 + 1) + (1 - 1 / math.sqrt(2))) / 4
    assert hidden_cosine_loss(student, teacher, mask).item() == pytest.approx(expected, rel=1e-6)
    assert hidden_cosine_loss(student, teacher, torch.ones(2, 3)).item() == pytest.approx((expected * 4 + 4) / 6, rel=1e-6)
    assert hidden_cosine_loss(teacher * 3, teacher, mask).item() == pytest.approx(0.0, abs=1e-6)
