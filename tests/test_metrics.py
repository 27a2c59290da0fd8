import pytest
import torch

from emolightning.metrics import EmotionScores, f1_scores, jaccard_samples, official_scores, tune_thresholds


def t(rows):
    return torch.tensor(rows)


def test_jaccard_hand_computed_with_empty_empty_scoring_one():
    gold = t([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    pred = t([[1, 1, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0]])
    # per tweet: 1/2, empty/empty = 1, 1/2, 0/1
    assert jaccard_samples(pred, gold).item() == pytest.approx((0.5 + 1 + 0.5 + 0) / 4)


def test_jaccard_is_not_torchmetrics_label_averaged_jaccard():
    from torchmetrics.functional.classification import multilabel_jaccard_index

    gold = t([[1, 0], [0, 0], [1, 1]])
    pred = t([[1, 1], [0, 0], [1, 0]])
    ours = jaccard_samples(pred, gold).item()
    assert ours == pytest.approx(2 / 3)
    assert multilabel_jaccard_index(pred, gold, num_labels=2, average="macro").item() != pytest.approx(ours)


def test_f1_hand_computed():
    gold = t([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    pred = t([[1, 1, 0], [0, 1, 0], [0, 1, 0]])
    micro, macro, per_label = f1_scores(pred, gold)
    # label 0: tp1 fn1 -> 2/3; label 1: tp2 fp1 -> 4/5; label 2: never gold, never predicted -> 0
    assert per_label.tolist() == pytest.approx([2 / 3, 4 / 5, 0.0])
    assert macro.item() == pytest.approx((2 / 3 + 4 / 5) / 3)
    # micro: tp 3, fp 1, fn 1 -> 6/8
    assert micro.item() == pytest.approx(0.75)


def test_official_scores_names():
    scores = official_scores(t([[1, 0]]), t([[1, 0]]), ["joy", "fear"])
    assert set(scores) == {"jaccard", "f1_micro", "f1_macro", "f1/joy", "f1/fear"}
    assert scores["jaccard"] == 1.0 and scores["f1/joy"] == 1.0 and scores["f1/fear"] == 0.0


def test_scores_drop_ddp_padding_duplicates_by_index():
    metric = EmotionScores()
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.6]])
    gold = t([[1, 0], [0, 1], [0, 0]])
    metric.update(probs[:2], gold[:2], torch.tensor([0, 1]))
    # a DistributedSampler pads the last rank with a copy of sample 0
    metric.update(torch.cat([probs[2:], probs[:1]]), torch.cat([gold[2:], gold[:1]]), torch.tensor([2, 0]))
    all_probs, all_gold = metric.compute()
    assert all_probs.shape == (3, 2)
    assert torch.equal(all_gold, gold.to(torch.uint8))
    # sample 2 predicts two labels on empty gold: (1 + 1 + 0) / 3
    assert jaccard_samples(all_probs >= 0.5, all_gold).item() == pytest.approx(2 / 3)


def test_tune_thresholds_finds_the_separating_cut_and_leaves_rare_labels_alone():
    # label 0 is separable at 0.3 (positives at 0.35/0.4, negatives at 0.1/0.2);
    # label 1 has one positive only, so it keeps the global threshold
    probs = torch.tensor([[0.35, 0.9], [0.4, 0.1], [0.1, 0.2], [0.2, 0.3]])
    gold = t([[1, 1], [1, 0], [0, 0], [0, 0]])
    global_t, per_label = tune_thresholds(probs, gold, min_positives=2)
    assert 0.2 < per_label[0].item() <= 0.35
    assert per_label[1].item() == pytest.approx(global_t)
    assert jaccard_samples(probs >= per_label, gold).item() == 1.0
