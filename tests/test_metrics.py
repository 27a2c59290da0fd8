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


def test_scores_agree_with_the_scorer_the_task_ran_and_with_an_independent_implementation():
    """The official E-c scorer (evaluate.py of SemEval-2018 Task 1) calls scikit-learn's jaccard_similarity_score, which scores a tweet with
    empty gold and empty prediction 1.0, and f1_score, which scores 0 a label never gold and never predicted; today's scikit-learn
    gives the same numbers with jaccard_score(average="samples", zero_division=1.0) and f1_score(zero_division=0.0)."""
    from ec_reference import official_scores as reference

    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(0)
    gold = (torch.rand(50, 5, generator=gen) < 0.3).int()
    pred = (torch.rand(50, 5, generator=gen) < 0.3).int()
    gold[:6], pred[:3] = 0, 0  # 3 tweets empty in both, 3 with a prediction on empty gold
    gold[:, 4], pred[:, 4] = 0, 0  # a label never gold and never predicted
    names = ["a", "b", "c", "d", "e"]
    ours = official_scores(pred, gold, names)
    by_hand = reference(gold.tolist(), pred.tolist(), names)
    by_sklearn = {
        "jaccard": sklearn_metrics.jaccard_score(gold.numpy(), pred.numpy(), average="samples", zero_division=1.0),
        "f1_micro": sklearn_metrics.f1_score(gold.numpy(), pred.numpy(), average="micro", zero_division=0.0),
        "f1_macro": sklearn_metrics.f1_score(gold.numpy(), pred.numpy(), average="macro", zero_division=0.0),
    }
    per_label = sklearn_metrics.f1_score(gold.numpy(), pred.numpy(), average=None, zero_division=0.0)
    by_sklearn.update({f"f1/{n}": float(v) for n, v in zip(names, per_label)})
    assert by_hand == pytest.approx(by_sklearn, abs=1e-12)
    assert ours == pytest.approx(by_sklearn, abs=1e-6) and ours["f1/e"] == 0.0


def test_global_threshold_by_hand():
    from emolightning.metrics import choose_thresholds

    # Sample-averaged Jaccard of one cut t for both labels, tweet by tweet (gold {A,B}, {A}, {}):
    #   t <= 0.04      : {A,B} 1, {A,B} vs {A} 1/2, {A,B} vs {} 0 -> 1.5/3
    #   0.04 < t <= 0.1: 1, 1/2, {A} vs {} 0                     -> 1.5/3
    #   0.1 < t <= 0.2 : 1, 1, 0                                 -> 2/3
    #   0.2 < t <= 0.31: {A} vs {A,B} 1/2, 1, 0                  -> 1.5/3
    #   0.31 < t <= 0.36: 1/2, 1, {} vs {} 1                     -> 2.5/3, the best
    #   0.36 < t <= 0.9: 1/2, {} vs {A} 0, 1                     -> 1.5/3
    #   t > 0.9        : 0, 0, 1                                 -> 1/3
    # The grid (0.05, 0.075, ..., 0.95) has 0.325 and 0.35 in the best interval; a tie goes to the cut nearest 0.5: 0.35.
    probs = torch.tensor([[0.9, 0.2], [0.36, 0.1], [0.31, 0.04]])
    gold = t([[1, 1], [1, 0], [0, 0]])
    assert choose_thresholds(probs, gold, "global").tolist() == pytest.approx([0.35, 0.35])
    global_t, _ = tune_thresholds(probs, gold)
    assert global_t == pytest.approx(0.35) and jaccard_samples(probs >= 0.35, gold).item() == pytest.approx(2.5 / 3)
