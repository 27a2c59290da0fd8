"""The quality recipes: losses, per-label poolings, the label prompt, layer-wise lr decay, pos_weight auto, EMA.

Loss values are checked against numbers worked out with `math` from the papers' formulas.
"""

from __future__ import annotations

import math

import pytest
import torch

from emolightning.errors import ConfigError
from emolightning.models.classifier import EmotionClassifier
from emolightning.models.heads import LabelAttention, LabelAttentionPooling, LabelPrompt, LabelPromptPooling, MeanPooling, label_logits, label_prompt_ids
from emolightning.models.losses import asymmetric_loss, consistency_loss, focal_loss, hard_label_loss, label_correlation_loss
from emolightning.models.objectives import BCE, LabelCorrelationMix, RDrop
from emolightning.models.optim import LayerwiseLRDecay, encoder_depth

from conftest import LABELS

HEADS = {"label_attention": LabelAttentionPooling, "label_prompt": LabelPromptPooling}


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


LOGITS = torch.tensor([[0.0, 2.0, -1.0]])
GOLD = torch.tensor([[1.0, 0.0, 0.0]])
P = [sigmoid(x) for x in (0.0, 2.0, -1.0)]


def test_focal_loss_by_hand():
    gamma = 2.0
    cells = [(1 - P[0]) ** gamma * -math.log(P[0]), P[1] ** gamma * -math.log(1 - P[1]), P[2] ** gamma * -math.log(1 - P[2])]
    assert focal_loss(LOGITS, GOLD, gamma).item() == pytest.approx(sum(cells) / 3, rel=1e-6)
    assert focal_loss(LOGITS, GOLD, 0.0).item() == pytest.approx(hard_label_loss(LOGITS, GOLD).item(), rel=1e-6)


def test_asymmetric_loss_by_hand():
    gamma_neg, gamma_pos, clip = 4.0, 1.0, 0.05
    positive = (1 - P[0]) ** gamma_pos * math.log(P[0])
    negatives = 0.0
    for p in P[1:]:
        shifted = max(p - clip, 0.0)
        negatives += shifted**gamma_neg * math.log(1 - shifted)
    expected = -(positive + negatives) / 3
    assert asymmetric_loss(LOGITS, GOLD, gamma_neg, gamma_pos, clip).item() == pytest.approx(expected, rel=1e-6)


def test_asymmetric_loss_without_clip_and_with_equal_gammas_is_focal():
    logits, gold = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)), (torch.rand(4, 5) > 0.5).float()
    assert asymmetric_loss(logits, gold, 2.0, 2.0, 0.0).item() == pytest.approx(focal_loss(logits, gold, 2.0).item(), rel=1e-5)


def test_asymmetric_clip_makes_confident_negatives_free():
    # p = sigmoid(-5) = 0.0067 < clip: the negative costs exactly nothing
    assert asymmetric_loss(torch.tensor([[-5.0]]), torch.tensor([[0.0]]), 4.0, 0.0, 0.05).item() == 0.0


def test_label_correlation_loss_by_hand():
    # example 1: positive 0, negatives 1 and 2 -> (exp(p1 - p0) + exp(p2 - p0)) / 2; example 2: no positive -> 0
    logits = torch.cat([LOGITS, LOGITS])
    gold = torch.cat([GOLD, torch.zeros(1, 3)])
    first = (math.exp(P[1] - P[0]) + math.exp(P[2] - P[0])) / 2
    assert label_correlation_loss(logits, gold).item() == pytest.approx(first / 2, rel=1e-6)


def test_label_correlation_loss_all_positive_is_zero_not_nan():
    assert label_correlation_loss(LOGITS, torch.ones(1, 3)).item() == 0.0


def test_consistency_loss_is_the_mean_symmetric_bernoulli_kl_by_hand():
    def kl(p: float, q: float) -> float:
        return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))

    other = torch.tensor([[1.0, 2.0, -3.0]])  # the second pass: label 1 agrees, labels 0 and 2 do not
    Q = [sigmoid(x) for x in (1.0, 2.0, -3.0)]
    expected = sum((kl(p, q) + kl(q, p)) / 2 for p, q in zip(P, Q)) / 3
    assert consistency_loss(LOGITS, other).item() == pytest.approx(expected, rel=1e-6)
    assert consistency_loss(other, LOGITS).item() == pytest.approx(expected, rel=1e-6)  # symmetric
    assert consistency_loss(LOGITS, LOGITS).item() == 0.0
    # saturated logits: (1 - 0) x (40 - (-40)) / 2 = 40, finite where log(p) would underflow
    assert consistency_loss(torch.tensor([[40.0]]), torch.tensor([[-40.0]])).item() == pytest.approx(40.0)


def test_rdrop_training_step_averages_two_dropout_passes_plus_their_consistency(tiny_encoder):
    torch.manual_seed(0)
    model = EmotionClassifier(tiny_encoder, LABELS, lr=1e-3, head=MeanPooling(dropout=0.5), loss=RDrop(weight=2.0)).train()
    batch = {"input_ids": torch.randint(5, 40, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long)}
    batch["labels"] = (torch.rand(3, len(LABELS)) > 0.6).float()
    model.log = lambda *args, **kwargs: None  # no trainer to log to
    torch.manual_seed(1)
    loss = model.training_step(batch, 0)
    torch.manual_seed(1)  # the same dropout masks, drawn for the 6 rows of the doubled batch
    first, second = model(batch["input_ids"].repeat(2, 1), batch["attention_mask"].repeat(2, 1)).chunk(2)
    assert not torch.allclose(first, second)  # two passes, two dropout masks
    bce = (hard_label_loss(first, batch["labels"]) + hard_label_loss(second, batch["labels"])) / 2
    assert loss.item() == pytest.approx((bce + 2.0 * consistency_loss(first, second)).item(), rel=1e-6)
    assert consistency_loss(first, second).item() > 1e-4
    model.eval()  # no dropout: both passes agree, and the loss is the plain one
    plain = EmotionClassifier(tiny_encoder, LABELS, lr=1e-3, head=MeanPooling(dropout=0.5)).eval()
    plain.load_state_dict(model.state_dict())
    plain.log = model.log
    assert model.training_step(batch, 0).item() == pytest.approx(plain.training_step(batch, 0).item(), rel=1e-6)


def test_label_attention_shapes_and_masking():
    torch.manual_seed(0)
    attention = LabelAttention(num_labels=3, hidden_size=4)
    hidden, mask = torch.randn(2, 5, 4), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = attention(hidden, mask)
    assert out.shape == (2, 3, 4)
    changed = hidden.clone()
    changed[0, 3:] = 1000.0  # padding: must not move example 0's vectors
    assert torch.allclose(attention(changed, mask)[0], out[0])
    with torch.no_grad():
        attention.queries.zero_()  # equal scores: each label's vector is the mean of the real tokens
    assert torch.allclose(attention(hidden, mask)[0], hidden[0, :3].mean(0).expand(3, 4), atol=1e-6)


def test_label_logits_reads_each_labels_own_weights():
    vectors = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (B=1, L=2, H=2)
    weight, bias = torch.tensor([[3.0, 5.0], [7.0, 11.0]]), torch.tensor([0.5, -0.5])
    assert label_logits(vectors, weight, bias).tolist() == [[3.5, 21.5]]


@pytest.fixture(scope="module")
def piece_tokenizer(tmp_path_factory):
    """A WordPiece tokenizer in which `pessimism` is three pieces and `joy` one."""
    from transformers import BertTokenizerFast

    out = tmp_path_factory.mktemp("pieces")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "joy", "pe", "##ssi", "##mism", "good", "day"]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab=str(out / "vocab.txt"), do_lower_case=True)


def test_label_prompt_tokenisation_and_spans(piece_tokenizer):
    ids, spans = label_prompt_ids(piece_tokenizer, ["joy", "pessimism"])
    assert ids == [5, 6, 7, 8]
    assert spans == [(0, 1), (1, 4)]


def test_label_prompt_goes_after_cls_and_reads_each_name(piece_tokenizer):
    ids, spans = label_prompt_ids(piece_tokenizer, ["joy", "pessimism"])
    prompt = LabelPrompt(ids, spans, sep_token_id=3)
    text = piece_tokenizer(["good day", "day"], padding=True, return_tensors="pt")
    extended, mask = prompt.extend(text["input_ids"], text["attention_mask"])
    # [CLS] joy pe ##ssi ##mism [SEP] good day [SEP] / [CLS] joy pe ##ssi ##mism [SEP] day [SEP] [PAD]
    assert extended.tolist() == [[2, 5, 6, 7, 8, 3, 9, 10, 3], [2, 5, 6, 7, 8, 3, 10, 3, 0]]
    assert mask.tolist() == [[1] * 9, [1] * 8 + [0]]
    hidden = torch.arange(9, dtype=torch.float).view(1, 9, 1).expand(2, 9, 1)
    # joy is position 1; pessimism the mean of positions 2, 3, 4
    assert prompt.read(hidden).squeeze(-1).tolist() == [[1.0, 3.0], [1.0, 3.0]]


@pytest.mark.parametrize("pooling", ["label_attention", "label_prompt"])
def test_per_label_poolings_give_one_logit_per_label(tiny_encoder, pooling):
    model = EmotionClassifier(tiny_encoder, LABELS, lr=1e-3, head=HEADS[pooling]()).eval()
    ids, mask = torch.tensor([[2, 7, 8, 3], [2, 7, 3, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert model.encode(ids, mask).shape == (2, len(LABELS), 32)
    logits = model(ids, mask)
    assert logits.shape == (2, len(LABELS))
    # padding changes nothing: example 1 alone, unpadded, gives the same logits
    assert torch.allclose(model(ids[1:, :3], mask[1:, :3]), logits[1:], atol=1e-5)


def test_encoder_depth_of_bert_parameter_names():
    assert encoder_depth("embeddings.word_embeddings.weight", 6) == 0
    assert encoder_depth("encoder.layer.0.attention.self.query.weight", 6) == 1
    assert encoder_depth("encoder.layer.5.output.dense.weight", 6) == 6
    assert encoder_depth("transformer.layer.2.ffn.lin1.weight", 6) == 3  # DistilBERT
    assert encoder_depth("layers.10.mlp.weight", 12) == 11
    assert encoder_depth("final_layer_norm.weight", 6) == 7  # on top


def test_layer_wise_lr_decay_groups(tiny_encoder):
    model = EmotionClassifier(tiny_encoder, LABELS, lr=1.0, head_lr=5.0, encoder_groups=LayerwiseLRDecay(0.5))
    groups = model.param_groups()
    lr_of = {}
    for group in groups:
        for param in group["params"]:
            lr_of[id(param)] = group["lr"]
    names = dict(model.named_parameters())
    # 2 layers: layer 1 (top) at lr, layer 0 at lr * 0.5, embeddings at lr * 0.25; the head at head_lr
    assert lr_of[id(names["encoder.encoder.layer.1.attention.self.query.weight"])] == 1.0
    assert lr_of[id(names["encoder.encoder.layer.0.attention.self.query.weight"])] == 0.5
    assert lr_of[id(names["encoder.embeddings.word_embeddings.weight"])] == 0.25
    assert lr_of[id(names["head.weight"])] == 5.0
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(names["encoder.encoder.layer.0.attention.output.LayerNorm.weight"]) not in decayed


def test_without_decay_the_encoder_keeps_two_groups(tiny_encoder):
    groups = EmotionClassifier(tiny_encoder, LABELS, lr=1.0).param_groups()
    assert [g["lr"] for g in groups] == [1.0, 1.0, 1.0, 1.0]  # encoder decayed / not, head weight / bias


def test_pos_weight_auto_from_training_frequencies(tiny_encoder):
    class Data:
        hparams = {"pad_to_multiple_of": None}

        def train_label_frequencies(self):
            return [0.5, 0.2] + [0.1] * (len(LABELS) - 2)

    class Trainer:
        datamodule = Data()

    model = EmotionClassifier(tiny_encoder, LABELS, lr=1e-3, loss=BCE(pos_weight="auto"))
    (prepare,) = model.configure_callbacks()  # the callback hands the data's frequencies to the model before fit
    prepare.setup(Trainer(), model, "fit")
    assert model.pos_weight[:3].tolist() == pytest.approx([1.0, 2.0, 3.0])  # sqrt((1 - f) / f)


@pytest.mark.parametrize(
    ("build", "option"),
    [
        (lambda: LayerwiseLRDecay(0.0), "decay"),
        (lambda: LayerwiseLRDecay(1.5), "decay"),
        (lambda: LabelCorrelationMix(weight=2.0), "label correlation"),
        (lambda: {"loss": BCE(pos_weight=[1.0])}, "pos_weight"),
        (lambda: RDrop(weight=-0.5), "R-Drop"),
    ],
)
def test_bad_recipe_values_are_config_errors(tiny_encoder, build, option):
    with pytest.raises(ConfigError, match=option):
        value = build()
        EmotionClassifier(tiny_encoder, LABELS, lr=1e-3, **value)


def test_threshold_strategies_by_hand():
    from emolightning.metrics import choose_thresholds, tune_thresholds

    # 4 tweets, labels A and B (probabilities off the 0.05, 0.075, ..., 0.95 grid, so no cut sits on one):
    #   tweet 1: A 0.81 B 0.11, gold {A};  tweet 2: A 0.71 B 0.31, gold {A, B};  tweet 3: A 0.61 B 0.26, gold {B};  tweet 4: A 0.21 B 0.21, gold {}
    probs = torch.tensor([[0.81, 0.11], [0.71, 0.31], [0.61, 0.26], [0.21, 0.21]])
    gold = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]])
    # One cut t for both labels, Jaccard tweet by tweet: t <= 0.11: 1/2 1 1/2 0 (2/4); (0.11, 0.21]: 1 1 1/2 0 (2.5/4);
    # (0.21, 0.26]: 1 1 1/2 1 (3.5/4, the best); (0.26, 0.31]: 1 1 0 1 (3/4); above 0.31 at most 2.5/4.
    # The grid's 0.225 and 0.25 tie; the one nearest 0.5 wins: global 0.25.
    # Per label, in order, the other at its current cut. A (B at 0.25 is then right on every tweet): A's cut in (0.61, 0.71]
    # gets every tweet right (4/4), any other cut misses one; of the tied 0.625 .. 0.7 the one nearest the global 0.25 is 0.625.
    # B (A at 0.625, right on every tweet): (0.21, 0.26] gets every tweet right; of 0.225 and 0.25 the nearest to 0.25 is 0.25.
    global_t, per_label = tune_thresholds(probs, gold, min_positives=2)
    assert global_t == pytest.approx(0.25) and per_label.tolist() == pytest.approx([0.625, 0.25])
    assert choose_thresholds(probs, gold, "fixed", fixed=0.4).tolist() == pytest.approx([0.4, 0.4])
    assert choose_thresholds(probs, gold, "global", min_positives=2).tolist() == pytest.approx([0.25, 0.25])
    assert choose_thresholds(probs, gold, "per_label", min_positives=2).tolist() == pytest.approx([0.625, 0.25])
    # 2 positives per label are under min_positives 3: both keep the global cut
    assert choose_thresholds(probs, gold, "per_label", min_positives=3).tolist() == pytest.approx([0.25, 0.25])
    # shrunk: w = n / (n + shrinkage) of the label's own cut, the rest global; n = 2 and shrinkage 2 give w = 1/2:
    # A 0.5 x 0.625 + 0.5 x 0.25 = 0.4375, B 0.25
    assert choose_thresholds(probs, gold, "shrunk", min_positives=2, shrinkage=2.0).tolist() == pytest.approx([0.4375, 0.25])
    # shrinkage 6: w = 1/4, A 0.25 x 0.625 + 0.75 x 0.25 = 0.34375
    assert choose_thresholds(probs, gold, "shrunk", min_positives=2, shrinkage=6.0).tolist() == pytest.approx([0.34375, 0.25])


def test_held_out_scores_never_score_the_tuning_half():
    from emolightning.metrics import held_out_scores

    # label 0 is perfectly separable at any cut in (0.2, 0.8): every strategy scores it perfectly held out
    probs = torch.tensor([[0.9], [0.8], [0.2], [0.1]] * 10)
    gold = torch.tensor([[1.0], [1.0], [0.0], [0.0]] * 10)
    scores = held_out_scores(probs, gold, ["joy"], halvings=3, min_positives=1)
    assert set(scores) == {"fixed", "global", "per_label", "shrunk", "balanced"}
    for strategy in scores.values():
        assert strategy["f1_macro"] == pytest.approx(1.0)


def test_balanced_thresholds_maximise_jaccard_plus_macro_f1_label_by_label():
    from emolightning.metrics import choose_thresholds, tune_thresholds

    gen = torch.Generator().manual_seed(2)
    probs = torch.rand(40, 3, generator=gen)
    gold = (probs + 0.8 * torch.rand(40, 3, generator=gen) > torch.tensor([0.7, 0.9, 1.35])).float()  # 29, 16 and 4 positives
    preds_of = lambda cuts: [[int(p >= c) for p, c in zip(row, cuts)] for row in probs.tolist()]  # noqa: E731
    truth = [[int(g) for g in row] for row in gold.tolist()]

    def jaccard_plus_macro_by_hand(cuts) -> float:
        preds = preds_of(cuts)
        jaccard = 0.0
        for p, t in zip(preds, truth):
            union = sum(a or b for a, b in zip(p, t))
            jaccard += 1.0 if union == 0 else sum(a and b for a, b in zip(p, t)) / union
        f1s = []
        for j in range(3):
            tp = sum(p[j] and t[j] for p, t in zip(preds, truth))
            wrong = sum(p[j] != t[j] for p, t in zip(preds, truth))
            f1s.append(2 * tp / (2 * tp + wrong) if tp + wrong else 0.0)
        return jaccard / len(preds) + sum(f1s) / 3

    def jaccard_by_hand(cuts) -> float:
        preds = preds_of(cuts)
        per_tweet = [
            1.0 if not any(a or b for a, b in zip(p, t)) else sum(a and b for a, b in zip(p, t)) / sum(a or b for a, b in zip(p, t))
            for p, t in zip(preds, truth)
        ]
        return sum(per_tweet) / len(per_tweet)

    grid = torch.arange(0.05, 0.951, 0.025).tolist()  # the documented grid, 0.05 to 0.95 in steps of 0.025
    # the global cut by hand: the best Jaccard of one cut for every label, ties to the cut nearest 0.5
    one_cut = {t: jaccard_by_hand([t] * 3) for t in grid}
    global_t = min((t for t in grid if one_cut[t] >= max(one_cut.values()) - 1e-12), key=lambda t: abs(t - 0.5))
    assert tune_thresholds(probs, gold, min_positives=1)[0] == pytest.approx(global_t)
    cuts = [global_t] * 3
    for j in range(3):  # coordinate ascent by hand, labels in order; ties go to the cut nearest the global one
        scores = {t: jaccard_plus_macro_by_hand(cuts[:j] + [t] + cuts[j + 1 :]) for t in grid}
        cuts[j] = min((t for t in grid if scores[t] >= max(scores.values()) - 1e-12), key=lambda t: abs(t - global_t))
    own = choose_thresholds(probs, gold, "balanced", min_positives=1, shrinkage=0.0)  # shrinkage 0: each label keeps its own cut
    assert own.tolist() == pytest.approx(cuts, abs=1e-6)
    per_label = choose_thresholds(probs, gold, "per_label", min_positives=1)
    assert own[0] < per_label[0] and jaccard_plus_macro_by_hand(own.tolist()) > jaccard_plus_macro_by_hand(per_label.tolist())
    balanced = choose_thresholds(probs, gold, "balanced", min_positives=1, shrinkage=10.0)
    n = gold.sum(dim=0)
    for j in range(3):  # pulled toward the global cut exactly as `shrunk` is
        w = n[j].item() / (n[j].item() + 10.0)
        assert balanced[j].item() == pytest.approx(w * cuts[j] + (1 - w) * global_t, abs=1e-6)
