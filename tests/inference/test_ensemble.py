"""Ensembles of checkpoints (averaging.py, manifest.py, ensemble.py, ensemble_build.py) and ensemble teachers (distill.py), on tiny random models.

Averages and thresholds are checked against values worked out by hand; `predict` runs through the
real command with two members that tokenise differently.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import shutil
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from emolightning import EmotionClassifier
from emolightning.errors import ConfigError
from emolightning.inference import ensemble as ens
from emolightning.inference import ensemble_build as command
from emolightning.inference import manifest as mf
from emolightning.metrics import THRESHOLD_STRATEGIES
from emolightning.models import averaging
from emolightning.models.heads import ClsPooling, MeanPooling
from emolightning.models.thresholds import Thresholds

from conftest import LABELS, make_rows, write_official
from helpers import emolightning, reordered_tokenizer, save_classifier, tiny_args


def logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.fixture(scope="module")
def members(tiny_encoder, tmp_path_factory) -> dict:
    """Two random tiny classifiers saved as checkpoints: `a` with the fixture's tokenizer, `b` with a reordered one (other ids, same words)."""
    root = tmp_path_factory.mktemp("members")
    other = reordered_tokenizer(tiny_encoder, root / "other-tokenizer")
    torch.manual_seed(1)
    a = save_classifier(EmotionClassifier(tiny_encoder, LABELS, lr=1e-3, head=MeanPooling()), root / "a.ckpt", {"max_length": 64})
    torch.manual_seed(2)
    b = save_classifier(EmotionClassifier(other, LABELS, lr=1e-3, head=ClsPooling(), thresholds=Thresholds(strategy="global")), root / "b.ckpt")
    return {"root": root, "a": a, "b": b, "other": other}


# ---- averaging ----------------------------------------------------------------------------
def test_averages_and_weights_by_hand():
    p1, p2 = torch.tensor([[0.5, 0.2]]), torch.tensor([[0.75, 0.6]])
    assert torch.allclose(averaging.average_probabilities([p1, p2]), torch.tensor([[0.625, 0.4]]))
    assert torch.allclose(averaging.average_probabilities([p1, p2], [3, 1]), torch.tensor([[0.5625, 0.3]]))  # 0.75 x p1 + 0.25 x p2
    # the logits of the averaged probabilities: sigmoid(0) = 0.5 and sigmoid(log 3) = 0.75
    z1, z2 = torch.tensor([[0.0]]), torch.tensor([[math.log(3)]])
    assert averaging.average_logits([z1, z2]).item() == pytest.approx(logit(0.625), abs=1e-6)
    assert averaging.average_logits([z1, z2], [3, 1]).item() == pytest.approx(logit(0.5625), abs=1e-6)
    assert torch.allclose(averaging.average_logits([torch.tensor([[1.5, -2.0]])]), torch.tensor([[1.5, -2.0]]), atol=1e-6)  # one member: its own logits
    # saturated members stay finite: mean of sigmoid(100) and sigmoid(-100) is 0.5, logit 0; two at 100 stay at 100
    assert averaging.average_logits([torch.tensor([[100.0]]), torch.tensor([[-100.0]])]).item() == pytest.approx(0.0, abs=1e-6)
    assert averaging.average_logits([torch.tensor([[100.0]]), torch.tensor([[100.0]])]).item() == pytest.approx(100.0, abs=1e-3)
    # softmax teachers: the log of the averaged distributions
    s1, s2 = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3), 0.0]])  # (0.5, 0.5) and (0.75, 0.25)
    assert torch.allclose(torch.softmax(averaging.average_logits([s1, s2], multi_label=False), -1), torch.tensor([[0.625, 0.375]]))
    with pytest.raises(ConfigError, match="2 positive numbers"):
        averaging.average_probabilities([p1, p2], [1, 0])


def gold_of(ec_dir: str) -> torch.Tensor:
    lines = Path(ec_dir, "2018-E-c-En-dev.txt").read_text().splitlines()[1:]
    return torch.tensor([[int(v) for v in line.split("\t")[2:]] for line in lines], dtype=torch.float)


def fake_members(monkeypatch, by_path: dict[str, tuple[float, float]], gold: torch.Tensor) -> None:
    """Members whose dev probability is `pos` on every gold-positive (row, label) and `neg` on every other (no model runs)."""

    def load(path, device="cpu"):
        return SimpleNamespace(path=path, thresholds=torch.full((len(LABELS),), 0.5))

    def probs(model, texts, max_length, batch_size=64):
        assert len(texts) == len(gold)
        pos, neg = by_path[model.path]
        return gold * pos + (1 - gold) * neg

    monkeypatch.setattr(command, "load_classifier", load)
    monkeypatch.setattr(command, "member_probs", probs)


@pytest.mark.parametrize("weights, threshold", [(None, 0.4), ([3, 1], 0.45)])
def test_thresholds_are_tuned_on_the_averaged_dev_probabilities(members, ec_dir, tmp_path, monkeypatch, weights, threshold):
    # a: positives 0.5, negatives 0.1; b: positives 0.34, negatives 0.3. Alone, a's best cut is 0.5 (any of (0.1, 0.5]: the
    # one closest to 0.5) and b's 0.325. Averaged: positives 0.42, negatives 0.2 -> every grid point in (0.2, 0.42] scores
    # Jaccard 1 and 0.4 is the closest to 0.5; weighted 3:1: positives 0.46, negatives 0.15 -> 0.45.
    gold = gold_of(ec_dir)
    fake_members(monkeypatch, {members["a"]: (0.5, 0.1), members["b"]: (0.34, 0.3)}, gold)
    out = tmp_path / "ensemble.json"
    manifest, _ = command.build([members["a"], members["b"]], str(out), weights, "per_label", data_dir=ec_dir)
    assert manifest.thresholds == pytest.approx([threshold] * len(LABELS), abs=1e-6)
    saved = json.loads(out.read_text())
    assert saved["thresholds"] == pytest.approx([threshold] * len(LABELS), abs=1e-6) and saved["threshold_strategy"] == "per_label"
    assert [m["weight"] for m in saved["members"]] == ([0.5, 0.5] if weights is None else [0.75, 0.25])
    assert saved["dev"]["scores"]["tuned_in_sample"]["jaccard"] == 1.0
    # at 0.5 nothing is predicted: Jaccard is the share of dev tweets with no gold label (a correct "neutral")
    assert saved["dev"]["scores"]["fixed"]["jaccard"] == pytest.approx((gold.sum(dim=1) == 0).float().mean().item())


def test_members_with_different_strategies_need_one_chosen(members, ec_dir, tmp_path, monkeypatch):
    fake_members(monkeypatch, {members["a"]: (0.5, 0.1), members["b"]: (0.34, 0.3)}, gold_of(ec_dir))
    with pytest.raises(ConfigError, match="--threshold_strategy"):  # a tunes per label, b one global threshold
        command.build([members["a"], members["b"]], str(tmp_path / "e.json"), data_dir=ec_dir)


# ---- the manifest -------------------------------------------------------------------------
def test_manifest_round_trip_with_paths_relative_to_it(members, tmp_path):
    folder = tmp_path / "ens"
    folder.mkdir()
    shutil.copy(members["a"], folder / "a.ckpt")
    (folder / "runs").mkdir()
    shutil.copy(members["b"], folder / "runs" / "b.ckpt")
    manifest = mf.Manifest(
        str(folder / "ensemble.json"),
        [mf.Member(str(folder / "a.ckpt"), 0.25, "enc-a", 64), mf.Member(str(folder / "runs" / "b.ckpt"), 0.75, "enc-b", 128)],
        LABELS,
        [0.5 - 0.01 * i for i in range(len(LABELS))],
        "shrunk",
        0.5,
    )
    mf.write_manifest(manifest)
    assert [m["checkpoint"] for m in json.loads((folder / "ensemble.json").read_text())["members"]] == ["a.ckpt", "runs/b.ckpt"]
    moved = shutil.move(str(folder), str(tmp_path / "elsewhere"))  # the folder travels with its members
    back = mf.read_manifest(str(Path(moved) / "ensemble.json"))
    assert back.members == [mf.Member(str(Path(moved) / "a.ckpt"), 0.25, "enc-a", 64), mf.Member(str(Path(moved) / "runs" / "b.ckpt"), 0.75, "enc-b", 128)]
    assert (back.label_names, back.thresholds, back.threshold_strategy, back.threshold) == (LABELS, manifest.thresholds, "shrunk", 0.5)


def test_members_run_one_at_a_time_unless_kept_loaded(members, tmp_path, monkeypatch):
    manifest = mf.Manifest(
        str(tmp_path / "e.json"), [mf.Member(members["a"], 1.0, "", 64), mf.Member(members["b"], 1.0, "", 128)], LABELS, [0.5] * len(LABELS), "per_label", 0.5
    )
    mf.write_manifest(manifest)
    loads, alive, real_load = [], [], ens.load_classifier

    def load(path, device="cpu"):
        gc.collect()
        loads.append(path)
        alive.append(sum(ref() is not None for ref in refs))  # members still in memory when the next is built
        model = real_load(path, device)
        refs.append(weakref.ref(model))
        return model

    monkeypatch.setattr(ens, "load_classifier", load)
    for keep, expected_loads in ((False, 4), (True, 2)):
        loads.clear(), alive.clear()
        refs: list = []
        model = ens.EnsembleClassifier(str(tmp_path / "e.json"), LABELS, batch_size=4, keep_members_loaded=keep)
        for chunk in (["so delighted today", "scared"], ["crying at home"]):
            probs = model(chunk)
            assert probs.shape == (len(chunk), len(LABELS))
        assert loads == [members["a"], members["b"]] * (expected_loads // 2)
        assert alive == ([0, 0, 0, 0] if not keep else [0, 1])  # one at a time: the previous member is freed before the next is built
    # the averaged probabilities are the members' own, one text at a time
    texts = ["so delighted today", "scared of the news", ""]
    got = ens.EnsembleClassifier(str(tmp_path / "e.json"), LABELS)(texts)
    expected = (one_by_one(members["a"], texts) + one_by_one(members["b"], texts)) / 2
    assert torch.allclose(got, expected, atol=2e-6)


def test_members_whose_tokenizers_really_differ_each_read_their_own_ids(members, tiny_mpnet, tmp_path):
    """A BERT-style member and an MPNet-style one (other word ids, specials, pad id and segmentation): each member
    tokenises the texts itself, so the ensemble's probabilities are the mean of each member's own, text by text; a
    member fed the other's ids would give other numbers."""
    torch.manual_seed(3)
    mpnet = save_classifier(EmotionClassifier(tiny_mpnet, LABELS, lr=1e-3, head=MeanPooling()), tmp_path / "mpnet.ckpt", {"max_length": 64})
    manifest = mf.Manifest(
        str(tmp_path / "mixed.json"), [mf.Member(members["a"], 1.0, "", 64), mf.Member(mpnet, 1.0, "", 64)], LABELS, [0.5] * len(LABELS), "per_label", 0.5
    )
    mf.write_manifest(manifest)
    texts = ["so delighted with my friend today", "scared", "crying at home over the news", ""]
    got = ens.EnsembleClassifier(manifest.path, LABELS, batch_size=3)(texts)  # batches of 3: padded rows in both tokenisations
    expected = (one_by_one(members["a"], texts) + one_by_one(mpnet, texts)) / 2
    assert torch.allclose(got, expected, atol=2e-6)


def one_by_one(checkpoint: str, texts: list[str]) -> torch.Tensor:
    """A member's probabilities, one text at a time with its own tokenizer (no padding, no batching)."""
    from emolightning.pretrained.encoders import load_tokenizer

    model = EmotionClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    tokenizer = load_tokenizer(model.hparams.encoder)
    with torch.no_grad():
        rows = [torch.sigmoid(model(**{k: v for k, v in tokenizer([t], return_tensors="pt").items() if k != "token_type_ids"}))[0] for t in texts]
    return torch.stack(rows)


# ---- through the real command ------------------------------------------------------------
def test_two_member_ensemble_predicts_in_input_order_through_the_cli(members, tiny_encoder, ec_dir, tmp_path, capsys):
    from emolightning.cli.main import main

    out = tmp_path / "ens" / "ensemble.json"
    main(["ensemble", members["a"], members["b"], "--data_dir", ec_dir, "--out", str(out), "--threshold_strategy", "per_label", "--device", "cpu"])
    assert "Wrote" in capsys.readouterr().out
    manifest = mf.read_manifest(str(out))
    assert [m.encoder for m in manifest.members] == [tiny_encoder, members["other"]] and [m.max_length for m in manifest.members] == [64, 128]

    rows = make_rows(21, 7, "p")
    source = write_official(tmp_path / "input.txt", rows, unlabelled=True)
    pred = tmp_path / "pred.txt"
    # chunks of 4 x 2 texts: 3 steps, each member built 3 times, rows put back in input order
    args = [
        "--data.predict_file",
        str(source),
        "--data.eval_batch_size",
        "4",
        "--data.predict_chunk_batches",
        "2",
        "--output",
        str(pred),
        "--probabilities",
        "true",
        "--trainer.precision",
        "32-true",  # compared with fp32 below; `auto` is bf16 on CPUs with native bf16
    ]
    emolightning("predict", *tiny_args(tiny_encoder, ec_dir, tmp_path, "--ckpt_path", str(out), *args))
    lines = [line.split("\t") for line in pred.read_text(encoding="utf-8").splitlines()]
    assert lines[0] == ["ID", "Tweet", *LABELS, *[f"p_{n}" for n in LABELS]]
    assert [line[:2] for line in lines[1:]] == [[row_id, text] for row_id, text, _ in rows]
    texts = [text for _, text, _ in rows]
    expected = (one_by_one(members["a"], texts) + one_by_one(members["b"], texts)) / 2
    probs = torch.tensor([[float(v) for v in line[2 + len(LABELS) :]] for line in lines[1:]])
    assert torch.allclose(probs, expected, atol=2e-6)
    labels = torch.tensor([[int(v) for v in line[2 : 2 + len(LABELS)]] for line in lines[1:]])
    thresholds = torch.tensor(manifest.thresholds)
    clear = (expected - thresholds).abs() > 1e-5
    assert torch.equal(labels[clear], (expected >= thresholds).int()[clear])

    # test scores the test split with the averaged probabilities, at 0.5 and at the manifest's thresholds: the official scores
    # of the members' fp32 probabilities (one text at a time) against the gold file, by the independent scorer of ec_reference.py
    from ec_reference import assert_scores, gold_table, stage_scores

    emolightning("test", *tiny_args(tiny_encoder, ec_dir, tmp_path, "--ckpt_path", str(out), "--trainer.precision", "32-true"))
    saved = json.loads((out.parent / "test_scores.json").read_text())
    test_texts, gold = gold_table(Path(ec_dir, "2018-E-c-En-test-gold.txt"), LABELS)
    averaged = ((one_by_one(members["a"], test_texts) + one_by_one(members["b"], test_texts)) / 2).tolist()
    assert saved["checkpoint"] == "ensemble.json"
    assert_scores(saved["scores"], stage_scores("test", gold, averaged, LABELS, list(manifest.thresholds)), 1e-6, "the ensemble's test_scores.json")


def test_an_ensemble_predicts_on_a_cpu_with_native_bf16_and_refuses_an_encoder_backend(members, tiny_encoder, ec_dir, tmp_path, monkeypatch, capsys):
    from emolightning.cli import main as cli

    out = tmp_path / "ensemble.json"
    cli.main(["ensemble", members["a"], members["b"], "--data_dir", ec_dir, "--out", str(out), "--threshold_strategy", "global", "--device", "cpu"])
    source = write_official(tmp_path / "input.txt", make_rows(5, 3, "q"), unlabelled=True)
    args = ["--ckpt_path", str(out), "--data.predict_file", str(source), "--output", str(tmp_path / "pred.txt")]
    # `--backend auto` resolves to bf16 on such a CPU, which swaps one model's encoder: an ensemble has none and runs on torch
    monkeypatch.setattr(cli, "cpu_flags", lambda: {"avx512_bf16"})
    cli.main(["predict", *tiny_args(tiny_encoder, ec_dir, tmp_path, *args)])
    assert len((tmp_path / "pred.txt").read_text(encoding="utf-8").splitlines()) == 6
    err = error_of(["predict", *tiny_args(tiny_encoder, ec_dir, tmp_path, *args, "--backend", "bf16")], capsys)
    assert "`--backend bf16`" in err and "ensemble manifest" in err and "Leave --backend at auto" in err


def error_of(argv: list[str], capsys) -> str:
    from emolightning.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err, err
    message = err[err.index("emolightning: error: ") :]
    assert message.count("\n") == 2, message  # one paragraph, then the traceback hint
    return " ".join(message.split())


def test_bad_input_is_one_paragraph_naming_the_file_and_the_fix(members, tiny_encoder, ec_dir, tmp_path, capsys):
    other_labels = LABELS[:-1] + ["calm"]
    c = save_classifier(EmotionClassifier(tiny_encoder, other_labels, lr=1e-3), tmp_path / "c.ckpt")
    err = error_of(["ensemble", members["a"], c, "--data_dir", ec_dir, "--out", str(tmp_path / "e.json")], capsys)
    assert f"'{c}' predicts the labels" in err and "same labels in the same order" in err
    err = error_of(["ensemble", members["a"], str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "e.json")], capsys)
    assert "missing.ckpt" in err and "does not exist" in err
    (tmp_path / "list.txt").write_text("# no members yet\n\n")
    assert "got no checkpoints" in error_of(["ensemble", str(tmp_path / "list.txt"), "--out", str(tmp_path / "e.json")], capsys)
    (tmp_path / "list2.txt").write_text(f"{members['a']}\nnot-there.ckpt\n")
    assert "list2.txt, line 2" in error_of(["ensemble", str(tmp_path / "list2.txt"), "--out", str(tmp_path / "e.json")], capsys)
    assert "listed twice" in error_of(["ensemble", members["a"], members["a"], "--out", str(tmp_path / "e.json")], capsys)
    assert not (tmp_path / "e.json").exists()  # nothing written by a failed build

    common = tiny_args(tiny_encoder, ec_dir, tmp_path)
    err = error_of(["predict", *common, "--ckpt_path", str(tmp_path / "nope.json")], capsys)
    assert "nope.json" in err and "emolightning ensemble" in err
    (tmp_path / "broken.json").write_text('{"format": "emolightning-ensemble",\n "members": [}\n')
    assert "broken.json, line 2: not valid JSON" in error_of(["test", *common, "--ckpt_path", str(tmp_path / "broken.json")], capsys)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    manifest = mf.Manifest(str(lonely / "e.json"), [mf.Member(str(lonely / "gone.ckpt"), 1.0, tiny_encoder, 64)], LABELS, [0.5] * len(LABELS), "per_label", 0.5)
    mf.write_manifest(manifest)
    assert "member checkpoint 'gone.ckpt'" in error_of(["validate", *common, "--ckpt_path", str(lonely / "e.json")], capsys)
    err = error_of(["fit", *common, "--ckpt_path", str(lonely / "e.json")], capsys)
    assert "ensemble manifest" in err and "validate" in err
    # data whose labels are not the ensemble's
    shutil.copy(members["a"], lonely / "gone.ckpt")
    mf.write_manifest(mf.Manifest(manifest.path, manifest.members, other_labels, manifest.thresholds, "per_label", 0.5))
    err = error_of(["validate", *common, "--ckpt_path", manifest.path], capsys)
    assert "predicts the labels" in err and "data.label_columns" in err


DAMAGED = {
    "member cut short": ("member", lambda data: data[: len(data) // 2], "the member checkpoint 'a.ckpt'", "not a zip archive"),
    "member empty": ("member", lambda data: b"", "the member checkpoint 'a.ckpt'", "empty (0 bytes)"),
    "manifest cut short": ("manifest", lambda data: data[: len(data) // 2], "e.json, line", "not valid JSON"),
    "manifest empty": ("manifest", lambda data: b"", "e.json, line 1", "not valid JSON"),
    "manifest without thresholds": (
        "manifest",
        lambda data: data.replace(b'"thresholds"', b'"thresholdz"'),
        "not a complete ensemble manifest",
        "'thresholds'",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_manifest_or_member_is_named_before_any_member_loads(members, tiny_encoder, ec_dir, tmp_path, capsys, case):
    which, damage, names, words = DAMAGED[case]
    folder = tmp_path / "ens"
    folder.mkdir()
    shutil.copy(members["a"], folder / "a.ckpt")
    manifest = mf.Manifest(str(folder / "e.json"), [mf.Member(str(folder / "a.ckpt"), 1.0, tiny_encoder, 64)], LABELS, [0.5] * len(LABELS), "per_label", 0.5)
    mf.write_manifest(manifest)
    damaged = folder / ("a.ckpt" if which == "member" else "e.json")
    damaged.write_bytes(damage(damaged.read_bytes()))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    err = error_of(["predict", *tiny_args(tiny_encoder, ec_dir, tmp_path), "--ckpt_path", manifest.path, "--output", str(tmp_path / "p.txt")], capsys)
    assert names in err and words in err and ("rebuild" in err.lower() or "Build it" in err), err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before and not (tmp_path / "p.txt").exists()  # nothing altered


# ---- an ensemble teacher -----------------------------------------------------------------
def test_ensemble_teacher_soft_targets_and_cache_are_the_averaged_output(members, tiny_encoder, ec_dir, tmp_path):
    from emolightning import EmotionDataModule, EmotionDistiller
    from emolightning.models.distill import Teacher
    from emolightning.models.losses import soft_target_loss

    torch.manual_seed(3)
    c = save_classifier(EmotionClassifier(tiny_encoder, LABELS, lr=1e-3, head=ClsPooling()), tmp_path / "c.ckpt")
    teachers = [members["a"], c]  # one tokenizer; b tokenises differently, which a batch's one teacher tokenisation cannot serve
    student = EmotionDistiller(tiny_encoder, LABELS, lr=1e-3, teacher=teachers, head=MeanPooling(), cache_teacher_logits=True, cosine_weight=0.1)
    assert not student.use_cosine and student.cache_logits  # no single hidden state to align with
    with pytest.raises(ConfigError, match="tokenise differently"):
        EmotionDistiller(tiny_encoder, LABELS, lr=1e-3, teacher=[members["a"], members["b"]])
    with pytest.raises(ConfigError, match="empty list"):
        EmotionDistiller(tiny_encoder, LABELS, lr=1e-3, teacher=[])

    data = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_encoder, cache_dir=str(tmp_path / "cache"), batch_size=8)
    data.prepare_data(), data.setup("fit")
    split = data.splits["train"]
    # by hand: each teacher alone, one row at a time; the soft target is the logit of the mean probability
    singles = [Teacher(path) for path in teachers]
    with torch.no_grad():
        per_row = []
        for i in range(len(split)):
            ids = split[i]["input_ids"].long()[None]
            p = [torch.sigmoid(t(ids, torch.ones_like(ids), hidden=False)[0][0]) for t in singles]
            mean = (p[0] + p[1]) / 2
            per_row.append(torch.log(mean / (1 - mean)))
    expected = torch.stack(per_row)

    batch = next(iter(data.train_dataloader()))
    logits, hidden = student.teacher_outputs(batch)
    assert hidden is None and torch.allclose(logits, expected[batch["index"]], atol=1e-5)

    student._trainer = SimpleNamespace(global_rank=0, world_size=1, precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext))
    student.fill_teacher_cache(split, data.train_dataloader().collate_fn, batch_size=16)
    assert student._teacher_logits.shape == (len(split), len(LABELS))
    assert torch.allclose(student._teacher_logits, expected, atol=1e-5)  # the cache holds the averaged output
    cached, _ = student.teacher_outputs(batch)
    assert torch.equal(cached, student._teacher_logits[batch["index"]])
    loss = soft_target_loss(torch.zeros_like(cached), cached, 2.0)
    assert torch.isfinite(loss) and loss > 0


def test_ensemble_teacher_through_the_cli(members, tiny_encoder, ec_dir, tmp_path):
    from emolightning.cli.main import run_cli

    torch.manual_seed(4)
    c = save_classifier(EmotionClassifier(tiny_encoder, LABELS, lr=1e-3, head=ClsPooling()), tmp_path / "c.ckpt")
    cli = run_cli(
        [
            "fit",
            *tiny_args(tiny_encoder, ec_dir, tmp_path),
            "--model.class_path",
            "emolightning.EmotionDistiller",
            "--model.init_args.teacher",
            f"[{members['a']}, {c}]",
            "--model.init_args.cache_teacher_logits",
            "true",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
        ]
    )
    assert cli.model.distillation["teacher"] == [members["a"], c] and len(cli.model.teacher.members) == 2
    assert cli.model._teacher_logits.shape == (96, len(LABELS))
    best = next(Path(tmp_path, "run").rglob("best-*.ckpt"))
    assert not [k for k in torch.load(best, weights_only=True)["state_dict"] if k.startswith("teacher.")]  # the student alone


def test_benchmark_prints_single_seed_mean_and_the_ensemble_with_held_out_thresholds(tmp_path):
    import subprocess
    import sys

    from helpers import REPO

    # Worked out by hand. 60 dev tweets; each seed's probabilities are 0.98 (predicted) or 0.02 (not), so every threshold of the
    # 0.05 .. 0.95 grid makes the same decisions and the held-out thresholds change nothing. Seed 1 gets every label of tweets
    # i mod 6 in {0, 1, 2} wrong (30 tweets), seed 2 those of {3, 4} (20), seed 3 those of {5} (10). A tweet whose every label is
    # wrong scores Jaccard 0 (its union is all 11 labels), the others 1: 1/2, 2/3 and 5/6, mean 2/3. Jaccard is a mean over tweets
    # and the two halves of a halving are the same size, so each halving's held-out Jaccard is the whole split's.
    # Averaged, each decision has 2 or 3 seeds right: gold labels at (0.98 + 0.98 + 0.02) / 3 = 0.66 or 0.98, the others at 0.34
    # or 0.02. Any cut in (0.34, 0.66] is right everywhere, and ties go to the one nearest 0.5, which is 0.5 for every strategy:
    # the ensemble scores 1 on every held-out half (each label has gold positives in every half of 30, on this data).
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(60, len(LABELS), generator=g) < 0.5).to(torch.uint8)
    wrong_rows = {1: (0, 1, 2), 2: (3, 4), 3: (5,)}
    for seed, rows in wrong_rows.items():
        decisions = target.clone()
        flip = torch.tensor([i % 6 in rows for i in range(60)])
        decisions[flip] = 1 - decisions[flip]
        (tmp_path / f"seed{seed}").mkdir()
        torch.save({"probs": 0.02 + 0.96 * decisions.float(), "target": target, "labels": LABELS}, tmp_path / f"seed{seed}" / "dev_probs.pt")
    proc = subprocess.run(
        [sys.executable, "benchmarks/ensemble.py", "--runs", *[str(tmp_path / f"seed{s}") for s in wrong_rows], "--halvings", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(proc.stdout.split("RESULT ")[1])
    for strategy in THRESHOLD_STRATEGIES:
        assert result["ensemble"][strategy] == pytest.approx({"jaccard": 1.0, "f1_micro": 1.0, "f1_macro": 1.0}), strategy
        assert result["single_mean"][strategy]["jaccard"] == pytest.approx((1 / 2 + 2 / 3 + 5 / 6) / 3), strategy
    assert proc.stdout.count("| ensemble of 3 |") == len(THRESHOLD_STRATEGIES)  # one row per threshold strategy
    # the single seeds' table cells: mean ± standard deviation of 50, 66.67 and 83.33 points
    assert proc.stdout.count("| 66.67 ± 16.67 |") == len(THRESHOLD_STRATEGIES)


def test_recipes_teachers_glob_over_run_dirs_skips_their_log_files(tmp_path):
    """`--teachers 'runs/recipes/baseline/seed*'` also matches seedN.log beside each run dir: only checkpoints may become teachers."""
    import shlex
    import subprocess
    import sys

    from helpers import REPO

    expected = []
    for seed in (1, 2):
        ckpt = tmp_path / f"seed{seed}" / "lightning_logs" / "version_0" / "checkpoints" / "best-2-9.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"")
        (tmp_path / f"seed{seed}.log").write_text("training log\n")
        expected.append(str(ckpt))

    def teachers(*arguments: str) -> str:
        """The teacher list in the fit command benchmarks/recipes.py would run for `--teachers ARGUMENTS`."""
        options = ["--data_dir", str(tmp_path), "--out", str(tmp_path / "out"), "--recipes", "distill_ensemble", "--seeds", "1", "--dry_run"]
        proc = subprocess.run(
            [sys.executable, "benchmarks/recipes.py", *options, "--teachers", *arguments], cwd=REPO, capture_output=True, text=True, check=True
        )
        (command,) = proc.stdout.splitlines()
        words = shlex.split(command)
        return words[words.index("--model.init_args.teacher") + 1]

    assert teachers(str(tmp_path / "seed*")) == "[" + ", ".join(expected) + "]"
    assert teachers(expected[1]) == f"[{expected[1]}]"
