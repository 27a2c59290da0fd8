"""The model's components (head, loss, encoder groups, thresholds): chosen by class_path, shown in --help,
numerically the pure functions they wrap, stored as plain data and rebuilt from a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from torch import nn

from emolightning.errors import ConfigError
from emolightning.models.classifier import EmotionClassifier
from emolightning.models.components import component, component_config
from emolightning.models.heads import (
    ClsPooling,
    Head,
    LabelAttention,
    LabelAttentionPooling,
    LabelPrompt,
    LabelPromptPooling,
    MeanPooling,
    label_prompt_ids,
    pool,
)
from emolightning.models.losses import asymmetric_loss, consistency_loss, focal_loss, hard_label_loss, label_correlation_loss
from emolightning.models.objectives import ASL, BCE, Focal, LabelCorrelationMix, Loss, RDrop, auto_pos_weight
from emolightning.models.optim import EncoderGroups, LayerwiseLRDecay
from emolightning.models.thresholds import Thresholds
from emolightning.pretrained.encoders import load_encoder, load_tokenizer

from conftest import LABELS
from helpers import emolightning, tiny_args

LOGITS = torch.tensor([[0.3, -1.2, 2.0], [-0.4, 0.9, -2.5]])
GOLD = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
WEIGHTS = torch.tensor([2.0, 0.5, 1.5])


def test_the_default_model_is_cls_pooling_dropout_and_a_linear_layer_as_before(tiny_encoder):
    torch.manual_seed(3)
    model = EmotionClassifier(tiny_encoder, LABELS, lr=1e-3).eval()
    # built the old way, in the old order, from the same seed: encoder, dropout 0.1, linear head on the first token
    torch.manual_seed(3)
    encoder = load_encoder(tiny_encoder)
    encoder.pooler = None
    dropout, linear = nn.Dropout(0.1), nn.Linear(encoder.config.hidden_size, len(LABELS))
    assert sorted(model.state_dict()) == sorted([f"encoder.{k}" for k in encoder.state_dict()] + ["head.weight", "head.bias", "thresholds"])
    assert torch.equal(model.head.weight, linear.weight) and torch.equal(model.head.bias, linear.bias)
    assert model.dropout.p == dropout.p == 0.1 and model.pos_weight is None
    ids, mask = torch.tensor([[2, 7, 8, 3], [2, 7, 3, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    encoder.eval()
    with torch.no_grad():
        want = linear(encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0])
        assert torch.equal(model(ids, mask), want)
        labels = (torch.rand(2, len(LABELS)) > 0.5).float()
        assert torch.equal(model.loss(want, labels), hard_label_loss(want, labels))
    hp = model.hparams
    assert hp.head == {"class_path": "emolightning.models.heads.ClsPooling", "init_args": {"dropout": 0.1}}
    assert hp.loss == {"class_path": "emolightning.models.objectives.BCE", "init_args": {"pos_weight": None}}
    assert hp.thresholds == {"threshold": 0.5, "tune": True, "strategy": "per_label", "shrinkage": 50.0, "min_label_positives": 10}


def test_at_most_14_constructor_arguments():
    import inspect

    assert len([n for n in inspect.signature(EmotionClassifier.__init__).parameters if n != "self"]) <= 14


# ---- heads: the pooling modules are the pure poolings --------------------------------------------
def test_cls_and_mean_heads_pool_as_the_pure_function():
    hidden, mask = torch.randn(2, 4, 3), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    for head, name in ((ClsPooling(), "cls"), (MeanPooling(), "mean")):
        module = head.build(3, ["a", "b"], "unused")
        assert torch.equal(module(hidden, mask), pool(hidden, mask, name))
        assert module.extend(hidden, mask) == (hidden, mask) and not list(module.parameters())


def test_label_attention_head_is_label_attention():
    torch.manual_seed(0)
    module = LabelAttentionPooling().build(4, ["a", "b", "c"], "unused")
    hidden, mask = torch.randn(2, 5, 4), torch.tensor([[1, 1, 1, 0, 0], [1] * 5])
    reference = LabelAttention(3, 4)
    reference.load_state_dict(module.state_dict())
    assert module.queries.shape == (3, 4) and torch.equal(module(hidden, mask), reference(hidden, mask))
    # by hand: label j's vector is softmax over real tokens of q_j . h_t / sqrt(H)
    scores = hidden[0, :3] @ module.queries.T / 2.0
    assert torch.allclose(module(hidden, mask)[0], scores.softmax(0).T @ hidden[0, :3], atol=1e-6)


def test_label_prompt_head_is_the_label_prompt_of_the_tokenizer(tiny_encoder):
    names = ["joy", "fear"]
    module = LabelPromptPooling().build(32, names, tiny_encoder)
    tokenizer = load_tokenizer(tiny_encoder)
    ids, spans = label_prompt_ids(tokenizer, names)
    reference = LabelPrompt(ids, spans, tokenizer.sep_token_id)
    text, mask = torch.tensor([[2, 9, 3], [2, 3, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    got, want = module.extend(text, mask), reference.extend(text, mask)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    hidden = torch.randn(2, got[0].shape[1], 5)
    assert torch.equal(module(hidden, got[1]), reference.read(hidden))


# ---- losses: thin callables over losses.py -------------------------------------------------------
@pytest.mark.parametrize(
    ("loss", "want"),
    [
        (BCE(), lambda: hard_label_loss(LOGITS, GOLD)),
        (BCE(pos_weight=[2.0, 0.5, 1.5]), lambda: hard_label_loss(LOGITS, GOLD, WEIGHTS)),
        (Focal(gamma=1.5, pos_weight=[2.0, 0.5, 1.5]), lambda: focal_loss(LOGITS, GOLD, 1.5, pos_weight=WEIGHTS)),
        (ASL(gamma_neg=3.0, gamma_pos=1.0, clip=0.1), lambda: asymmetric_loss(LOGITS, GOLD, 3.0, 1.0, 0.1)),
        (LabelCorrelationMix(weight=0.2), lambda: 0.8 * hard_label_loss(LOGITS, GOLD) + 0.2 * label_correlation_loss(LOGITS, GOLD)),
        (LabelCorrelationMix(ASL(), weight=0.3), lambda: 0.7 * asymmetric_loss(LOGITS, GOLD, 4.0, 0.0, 0.05) + 0.3 * label_correlation_loss(LOGITS, GOLD)),
        (RDrop(Focal(gamma=2.0)), lambda: focal_loss(LOGITS, GOLD, 2.0)),  # outside training: the inner loss
    ],
)
def test_loss_components_are_the_pure_losses(loss, want):
    weights = None if loss.initial_pos_weight(["a", "b", "c"]) is None else WEIGHTS
    assert loss(LOGITS, GOLD, weights).item() == pytest.approx(want().item(), rel=1e-7)


def test_rdrop_training_loss_runs_the_doubled_batch_once():
    calls = []
    second = torch.tensor([[0.1, -1.0, 1.0], [0.5, 0.2, -2.0]])

    def forward(ids, mask):
        calls.append(ids.shape)
        return torch.cat([LOGITS, second])

    ids = torch.zeros(2, 4, dtype=torch.long)
    got = RDrop(weight=3.0).training_loss(forward, ids, torch.ones_like(ids), GOLD)
    want = (hard_label_loss(LOGITS, GOLD) + hard_label_loss(second, GOLD)) / 2 + 3.0 * consistency_loss(LOGITS, second)
    assert calls == [(4, 4)] and got.item() == pytest.approx(want.item(), rel=1e-7)


def test_pos_weight_auto_is_sqrt_negatives_over_positives_and_only_auto_asks_for_frequencies():
    assert auto_pos_weight([0.5, 0.2, 0.1]).tolist() == pytest.approx([1.0, 2.0, 3.0])
    assert BCE(pos_weight="auto").needs_label_frequencies and RDrop(Focal(pos_weight="auto")).needs_label_frequencies
    assert not BCE().needs_label_frequencies and not ASL().needs_label_frequencies
    assert BCE(pos_weight="auto").initial_pos_weight(["a", "b"]).tolist() == [1.0, 1.0]


def test_layerwise_decay_component_gives_each_depth_its_rate(tiny_encoder):
    encoder = load_encoder(tiny_encoder)
    flat = EncoderGroups().groups(encoder, 1.0, 0.01)
    decayed = LayerwiseLRDecay(0.5).groups(encoder, 1.0, 0.01)
    assert sorted({g["lr"] for g in flat}) == [1.0] and len(flat) == 2
    assert sorted({g["lr"] for g in decayed}) == [0.25, 0.5, 1.0]  # embeddings, layer 0, layer 1 and the rest on top
    undecayed = LayerwiseLRDecay(1.0).groups(encoder, 1.0, 0.01)  # a factor of 1: BERT's two groups
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in undecayed] == [(g["lr"], g["weight_decay"], len(g["params"])) for g in flat]


# ---- plain data in the checkpoint, and back ------------------------------------------------------
def test_components_round_trip_through_plain_data():
    loss = LabelCorrelationMix(Focal(gamma=1.0, pos_weight="auto"), weight=0.4)
    data = component_config(loss)
    assert json.loads(json.dumps(data)) == data  # plain data: weights_only checkpoints can hold it
    rebuilt = component(data, Loss, BCE, "model.init_args.loss")
    assert isinstance(rebuilt, LabelCorrelationMix) and isinstance(rebuilt.loss, Focal)
    assert (rebuilt.weight, rebuilt.loss.gamma, rebuilt.loss.pos_weight) == (0.4, 1.0, "auto")
    with pytest.raises(ConfigError, match="not a Head"):
        component({"class_path": "emolightning.models.objectives.BCE"}, Head, ClsPooling, "model.init_args.head")


def test_a_checkpoint_rebuilds_its_components_without_the_cli(tiny_encoder, tmp_path):
    torch.manual_seed(0)
    model = EmotionClassifier(
        tiny_encoder,
        LABELS,
        lr=1e-3,
        head=LabelAttentionPooling(dropout=0.2),
        loss=RDrop(Focal(gamma=1.0, pos_weight="auto"), weight=0.5),
        encoder_groups=LayerwiseLRDecay(0.7),
        thresholds=Thresholds(strategy="shrunk", threshold=0.4),
    )
    model.set_label_frequencies([0.5] + [0.2] * (len(LABELS) - 1))
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "pytorch-lightning_version": "2.6.0"}, path)
    loaded = EmotionClassifier.load_from_checkpoint(path, map_location="cpu").eval()
    assert isinstance(loaded.criterion, RDrop) and isinstance(loaded.criterion.loss, Focal) and loaded.criterion.weight == 0.5
    assert isinstance(loaded.encoder_groups, LayerwiseLRDecay) and loaded.encoder_groups.decay == 0.7
    assert loaded.threshold_settings == Thresholds(strategy="shrunk", threshold=0.4) and loaded.dropout.p == 0.2
    assert torch.equal(loaded.pos_weight, model.pos_weight) and loaded.pos_weight[0].item() == 1.0 and loaded.pos_weight[1].item() == 2.0
    ids, mask = torch.tensor([[2, 7, 8, 3]]), torch.ones(1, 4, dtype=torch.long)
    model.eval()
    assert torch.equal(loaded(ids, mask), model(ids, mask))


# ---- chosen by class_path from a YAML config, and shown in --help ----------------------------------
COMPONENTS = [
    ("head", "emolightning.models.heads.MeanPooling", {"dropout": 0.25}, MeanPooling, "Dropout before the linear head"),
    ("head", "emolightning.models.heads.LabelAttentionPooling", {}, LabelAttentionPooling, "Dropout before the linear head"),
    ("head", "emolightning.models.heads.LabelPromptPooling", {}, LabelPromptPooling, "Dropout before the linear head"),
    ("loss", "emolightning.models.objectives.BCE", {"pos_weight": "auto"}, BCE, "sqrt(negatives"),
    ("loss", "emolightning.models.objectives.Focal", {"gamma": 1.5}, Focal, "Focusing exponent"),
    ("loss", "emolightning.models.objectives.ASL", {"clip": 0.1}, ASL, "costs nothing"),
    ("loss", "emolightning.models.objectives.LabelCorrelationMix", {"weight": 0.3, "loss": {"class_path": "ASL"}}, LabelCorrelationMix, "correlation loss"),
    ("loss", "emolightning.models.objectives.RDrop", {"weight": 2.0}, RDrop, "consistency term"),
    ("encoder_groups", "emolightning.models.optim.LayerwiseLRDecay", {"decay": 0.8}, LayerwiseLRDecay, "the one above it"),
]


@pytest.mark.parametrize(("key", "class_path", "init_args", "cls", "doc"), COMPONENTS, ids=[c[1].rsplit(".", 1)[1] for c in COMPONENTS])
def test_component_from_a_yaml_config(key, class_path, init_args, cls, doc, tiny_encoder, tmp_path):
    config = {"model": {"class_path": "emolightning.EmotionClassifier", "init_args": {"encoder": tiny_encoder, "label_names": LABELS, "lr": 1e-3}}}
    config["model"]["init_args"][key] = {"class_path": class_path, "init_args": init_args}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(EmotionClassifier, "model", fail_untyped=False)  # as LightningCLI adds the model
    parser.add_argument("--config", action="config")
    model = parser.instantiate(parser.parse_args(["--config", str(tmp_path / "config.yaml")])).model
    part = {"head": lambda m: m.hparams.head, "loss": lambda m: m.criterion, "encoder_groups": lambda m: m.encoder_groups}[key](model)
    if key == "head":
        assert part["class_path"] == class_path and model.pooling_name == cls.name
    else:
        assert type(part) is cls
    for name, value in init_args.items():
        stored = getattr(model.hparams, key)["init_args"][name]
        assert stored["class_path"].endswith(value["class_path"]) if isinstance(value, dict) else stored == value, name


@pytest.mark.parametrize(("key", "class_path", "doc"), [(c[0], c[1], c[4]) for c in COMPONENTS], ids=[c[1].rsplit(".", 1)[1] for c in COMPONENTS])
def test_component_options_are_in_help(key, class_path, doc, capsys):
    from emolightning.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["fit", "--model", "emolightning.EmotionClassifier", f"--model.init_args.{key}.help", class_path.rsplit(".", 1)[1]])
    assert done.value.code in (0, None)
    assert doc in " ".join(capsys.readouterr().out.split())


# ---- a run with non-default components: checkpoint, test, predict and export ---------------------
def test_non_default_components_round_trip_through_fit_test_and_export(tiny_encoder, ec_dir, tmp_path):
    from emolightning.inference.export import export_checkpoint

    recipe = [
        "--model.init_args.head",
        "LabelAttentionPooling",
        "--model.init_args.loss",
        "LabelCorrelationMix",
        "--model.init_args.loss.loss",
        "Focal",
        "--model.init_args.loss.loss.pos_weight",
        "auto",
        "--model.init_args.encoder_groups",
        "LayerwiseLRDecay",
        "--model.init_args.thresholds.strategy",
        "global",
    ]
    emolightning("fit", *tiny_args(tiny_encoder, ec_dir, tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", *recipe))
    run = next((tmp_path / "run" / "lightning_logs").glob("version_*"))
    (ckpt,) = (run / "checkpoints").glob("best-*.ckpt")
    stored = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert stored["hyper_parameters"]["loss"]["init_args"]["loss"]["init_args"]["pos_weight"] == "auto"
    assert stored["state_dict"]["pos_weight"].std() > 0  # filled from the training split's frequencies before fit
    model = EmotionClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    assert isinstance(model.criterion, LabelCorrelationMix) and isinstance(model.criterion.loss, Focal)
    assert model.pooling_name == "label_attention" and torch.equal(model.pos_weight, stored["state_dict"]["pos_weight"])
    for config in ([], ["--config", str(run / "config.yaml")]):  # the checkpoint stands alone, and with the run's config
        out = emolightning("test", *config, "--ckpt_path", str(ckpt), "--data.data_dir", ec_dir, "--trainer.enable_progress_bar", "false")
        assert "test/jaccard" in out.stdout + out.stderr
    directory = export_checkpoint(ckpt, tmp_path / "export")
    assert json.loads((directory / "config.json").read_text())["classifier_pooling"] == "label_attention"
