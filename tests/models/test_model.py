import pytest
import torch

from emolightning.errors import ConfigError
from emolightning.models.classifier import EmotionClassifier
from emolightning.models.heads import pool
from emolightning.models.optim import linear_warmup_decay, no_decay

from conftest import LABELS


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]


def test_no_decay_on_biases_and_layernorm():
    assert no_decay("encoder.layer.0.attention.output.LayerNorm.weight")
    assert no_decay("encoder.layer.0.attention.self.query.bias")
    assert not no_decay("encoder.layer.0.attention.self.query.weight")


def test_warmup_then_linear_decay():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_warmup_decay(opt, warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])


def test_forward_shapes_and_trainable_encoder(tiny_encoder):
    model = EmotionClassifier(tiny_encoder, LABELS, lr=1e-3)
    assert model.encoder.training  # from_pretrained returns eval mode; dropout must be on
    logits = model(torch.tensor([[2, 7, 8, 3], [2, 7, 3, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]))
    assert logits.shape == (2, 11)
    assert model.thresholds.tolist() == [0.5] * 11


def test_encoder_layers_keeps_chosen_layers_exactly(tiny_encoder):
    full = EmotionClassifier(tiny_encoder, LABELS, lr=1e-3)
    half = EmotionClassifier(tiny_encoder, LABELS, lr=1e-3, encoder_layers=[1])
    assert len(half.encoder.encoder.layer) == 1 and half.hparams.encoder_config["num_hidden_layers"] == 1
    for a, b in zip(half.encoder.encoder.layer[0].parameters(), full.encoder.encoder.layer[1].parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="encoder_layers"):
        EmotionClassifier(tiny_encoder, LABELS, lr=1e-3, encoder_layers=[5])


def test_checkpoint_rebuilds_without_the_encoder_files(tiny_encoder, tmp_path):
    model = EmotionClassifier(tiny_encoder, LABELS, lr=1e-3, encoder_layers=[0])
    model.thresholds.fill_(0.3)
    state = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    rebuilt = EmotionClassifier(**{**state["hyper_parameters"], "encoder": "/nonexistent"})
    rebuilt.load_state_dict(state["state_dict"])
    ids, mask = torch.tensor([[2, 7, 3]]), torch.ones(1, 3, dtype=torch.long)
    model.eval(), rebuilt.eval()
    assert torch.equal(model(ids, mask), rebuilt(ids, mask))
    assert rebuilt.thresholds.tolist() == pytest.approx([0.3] * 11)


def test_checkpoint_with_other_labels_is_refused(tiny_encoder):
    model = EmotionClassifier(tiny_encoder, LABELS, lr=1e-3)
    with pytest.raises(ConfigError, match="trained on the labels"):
        model.on_load_checkpoint({"hyper_parameters": {"label_names": ["joy", "fear"]}})
