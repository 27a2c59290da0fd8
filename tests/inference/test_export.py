"""`emolightning export`: a Hugging Face directory that gives emolightning's logits without emolightning."""

from __future__ import annotations

import json
import os
import random
import re
import stat
import subprocess
import sys

import lightning
import pytest
import torch

from emolightning.errors import ConfigError
from emolightning.inference.export import export_checkpoint
from emolightning.models.classifier import EmotionClassifier
from emolightning.models.heads import ClsPooling, LabelAttentionPooling, LabelPromptPooling

from conftest import CUES, FILLER, LABELS
from helpers import REPO, emolightning

HEADS = {"label_attention": LabelAttentionPooling, "label_prompt": LabelPromptPooling}

TEXTS = ["so delighted today", "furious and scared at work with my friend this morning", "adore", "the news was gross so very gross"]

# Runs with emolightning made unimportable: only transformers (and torch) may load the export.
LOADER = r"""
import json, sys

class NoEmolightning:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "emolightning":
            raise ImportError("emolightning is blocked in this process")

sys.meta_path.insert(0, NoEmolightning())
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

texts, out = json.loads(sys.argv[1]), {}
for directory in sys.argv[2:]:
    model = AutoModelForSequenceClassification.from_pretrained(directory, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    classify = pipeline("text-classification", model=directory, top_k=None, trust_remote_code=True)
    out[directory] = {"logits": logits.tolist(), "pipeline": classify(texts), "thresholds": model.config.thresholds,
                      "id2label": [model.config.id2label[i] for i in range(model.config.num_labels)], "problem_type": model.config.problem_type}
out["emolightning_loaded"] = any(name.split(".")[0] == "emolightning" for name in sys.modules)
print(json.dumps(out))
"""


def own_logits(ckpt, tokenizer: str) -> torch.Tensor:
    from emolightning.pretrained.encoders import load_tokenizer

    model = EmotionClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    batch = load_tokenizer(tokenizer)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"])


def save_minimal_checkpoint(model: EmotionClassifier, path) -> None:
    """What export reads of a checkpoint written by fit: hyperparameters and weights (no callbacks)."""
    torch.save(
        {
            "hyper_parameters": dict(model.hparams),
            "state_dict": model.state_dict(),
            "epoch": 0,
            "global_step": 0,
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )


@pytest.fixture(scope="module")
def cls_checkpoint(tiny_encoder, tmp_path_factory):
    """A `pooling: cls` model with 3 labels and hand-set thresholds, saved as a minimal checkpoint (no callbacks)."""
    torch.manual_seed(0)
    model = EmotionClassifier(encoder=tiny_encoder, label_names=LABELS[:3], lr=1e-3, head=ClsPooling())
    model.thresholds.copy_(torch.tensor([0.3, 0.55, 0.7]))
    path = tmp_path_factory.mktemp("cls") / "cls.ckpt"
    save_minimal_checkpoint(model, path)
    return path


def test_exported_model_loads_without_emolightning_and_gives_the_same_logits(trained_run, cls_checkpoint, tiny_encoder, tmp_path):
    mean_dir = export_checkpoint(trained_run["ckpt"], tmp_path / "mean")
    cls_dir = export_checkpoint(cls_checkpoint, tmp_path / "cls")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, json.dumps(TEXTS), str(mean_dir), str(cls_dir)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["emolightning_loaded"] is False
    for ckpt, directory, labels in ((trained_run["ckpt"], mean_dir, LABELS), (cls_checkpoint, cls_dir, LABELS[:3])):
        got, want = loaded[str(directory)], own_logits(ckpt, tiny_encoder)
        assert want.shape == (len(TEXTS), len(labels))
        assert (torch.tensor(got["logits"]) - want).abs().max() <= 1e-4
        # the pipeline applies a sigmoid per label (problem_type multi_label_classification)
        for row, scores in zip(torch.sigmoid(want), got["pipeline"]):
            by_label = {s["label"]: s["score"] for s in scores}
            assert sorted(by_label) == sorted(labels)
            assert max(abs(by_label[name] - p) for name, p in zip(labels, row.tolist())) <= 1e-4
        assert got["id2label"] == labels and got["problem_type"] == "multi_label_classification"
        stored = torch.load(ckpt, weights_only=True)["state_dict"]["thresholds"]
        assert got["thresholds"] == pytest.approx(stored.tolist(), abs=1e-6)
    assert loaded[str(cls_dir)]["thresholds"] == pytest.approx([0.3, 0.55, 0.7])


def test_export_directory_holds_weights_tokenizer_thresholds_and_card(trained_run, tmp_path):
    out = export_checkpoint(trained_run["ckpt"], tmp_path / "export")
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_emolightning.py", "thresholds.json", "README.md", "tokenizer_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".ckpt")) for name in files)
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_emolightning.EmolightningForSequenceClassification"
    assert config["label2id"] == {name: i for i, name in enumerate(LABELS)} and config["classifier_pooling"] == "mean"
    ckpt = torch.load(trained_run["ckpt"], weights_only=True)
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert list(thresholds) == LABELS and list(thresholds.values()) == pytest.approx(ckpt["state_dict"]["thresholds"].tolist(), abs=1e-6)
    card = (out / "README.md").read_text()
    score = next(v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))["best_model_score"]
    assert f"| val/jaccard | {float(score):.4f} | {float(score):.4f} |" in card
    assert f"| {LABELS[0]} | {thresholds[LABELS[0]]:.3f} |" in card and "trust_remote_code=True" in card


def test_export_errors_are_one_paragraph(trained_run, tmp_path, capsys):
    from emolightning.cli.main import main

    with pytest.raises(ConfigError, match="does not exist"):
        export_checkpoint(tmp_path / "missing.ckpt", tmp_path / "a")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ConfigError, match="not an emolightning EmotionClassifier checkpoint"):
        export_checkpoint(tmp_path / "foreign.ckpt", tmp_path / "b")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(SystemExit) as done:
        main(["export", "--ckpt_path", str(trained_run["ckpt"]), "--output", str(tmp_path / "full")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "is not empty" in err and "Traceback" not in err
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("pooling", ["label_attention", "label_prompt"])
def test_per_label_poolings_export_with_the_same_logits(pooling, tiny_encoder, tmp_path):
    """The exported class repeats the label-attention and label-prompt heads: same logits, no emolightning."""
    torch.manual_seed(0)
    model = EmotionClassifier(encoder=tiny_encoder, label_names=LABELS, lr=1e-3, head=HEADS[pooling]())
    with torch.no_grad():
        model.head.weight.normal_()
        if pooling == "label_attention":
            model.pooling.queries.normal_()
    path = tmp_path / f"{pooling}.ckpt"
    save_minimal_checkpoint(model, path)
    directory = export_checkpoint(path, tmp_path / "export")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", LOADER, json.dumps(TEXTS), str(directory)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    want = own_logits(path, tiny_encoder)
    assert want.std() > 0.1  # the head is random, not zero: agreement means something
    assert (torch.tensor(loaded[str(directory)]["logits"]) - want).abs().max() <= 1e-4


# Runs documented snippets with emolightning made unimportable: each job is (code, prelude, reader), `reader` an expression
# over the snippet's variables giving [probabilities per text per label, labels per text per label (bools)].
SNIPPETS = (
    LOADER.split("texts, out = json.loads")[0]
    + r"""
import numpy as np

out = []
for code, prelude, reader in json.loads(sys.argv[1]):
    space = {}
    exec(prelude + "\n" + code, space)
    probs, labels = eval(reader, space)
    out.append({"probs": np.atleast_2d(np.asarray(probs, dtype=float)).tolist(), "labels": np.atleast_2d(np.asarray(labels, dtype=bool)).tolist()})
print(json.dumps(out))
"""
)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def documented_block(text: str, starts: str) -> str:
    """The fenced python block of `text` that begins with the line `starts`."""
    return next(block for block in PYTHON_BLOCK.findall(text) if block.startswith(starts))


def long_texts() -> list[str]:
    rng = random.Random(3)
    words = FILLER + list(CUES.values())
    return [
        "so delighted today",
        " ".join(rng.choice(words) for _ in range(30)),  # between max_length (16) and the encoder's 64 positions
        " ".join(rng.choice(words) for _ in range(3000)),  # far beyond both
    ]


def test_documented_snippets_give_predicts_labels_for_texts_longer_than_max_length(trained_run, tmp_path):
    """The docs' pipeline snippet and the model card's torch and ONNX snippets, as written, on texts of 3 to 3,000 words,
    give `emolightning predict`'s probabilities and labels: the exported tokenizer cuts at the training max_length."""
    ckpt = torch.load(trained_run["ckpt"], weights_only=True)
    ckpt["datamodule_hyper_parameters"]["max_length"] = 16  # trained at 16 tokens: well below the tiny encoder's 64 positions
    short_ckpt = tmp_path / "trained-at-16.ckpt"
    torch.save(ckpt, short_ckpt)
    texts = long_texts()
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    emolightning(
        "predict",
        "--ckpt_path",
        str(short_ckpt),
        "--data.predict_file",
        str(tmp_path / "texts.txt"),
        "--output",
        str(tmp_path / "predictions.txt"),
        "--probabilities",
        "true",
        "--trainer.default_root_dir",
        str(tmp_path / "root"),
        "--trainer.enable_progress_bar",
        "false",
    )
    rows = [line.split("\t") for line in (tmp_path / "predictions.txt").read_text(encoding="utf-8").splitlines()[1:]]
    predicted = torch.tensor([[float(v) for v in row[2 + len(LABELS) :]] for row in rows])
    predicted_labels = torch.tensor([[v == "1" for v in row[2 : 2 + len(LABELS)]] for row in rows])
    assert len(rows) == len(texts)

    onnx = all(__import__("importlib").util.find_spec(m) for m in ("onnxruntime", "onnx"))
    directory = export_checkpoint(short_ckpt, tmp_path / "export", format="onnx" if onnx else "hf")
    docs = documented_block((REPO / "docs" / "predict-and-export.md").read_text(encoding="utf-8"), "from transformers import pipeline")
    docs = docs.replace('"exported/minilm-l6-ec"', json.dumps(str(directory)))
    docs = re.sub(r"^texts = .*$", "texts = TEXTS", docs, flags=re.M)
    card = (directory / "README.md").read_text(encoding="utf-8").replace('"path/to/this/directory"', json.dumps(str(directory)))
    card_torch = documented_block(card, "import torch").replace('"what a wonderful day"', "TEXT")
    names = "[config.id2label[i] for i in range(len(config.id2label))]"
    jobs = [[docs, f"TEXTS = {json.dumps(texts)}", f"[[p[n] for n in {names}] for p in probs], [[n in l for n in {names}] for l in labels]"]]
    jobs += [[card_torch, f"TEXT = {json.dumps(text)}", "probs.tolist(), labels.tolist()"] for text in texts]
    if onnx:
        card_onnx = documented_block(card, "import json, numpy as np, onnxruntime").replace('"what a wonderful day"', "TEXT")
        jobs += [[card_onnx, f"TEXT = {json.dumps(text)}\nDIR = {json.dumps(str(directory))}", "1 / (1 + np.exp(-logits)), labels"] for text in texts]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SNIPPETS, json.dumps(jobs)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    docs_result, per_text = results[0], results[1:]
    got = [torch.tensor(docs_result["probs"])] + [torch.cat([torch.tensor(r["probs"]) for r in per_text[i : i + 3]]) for i in range(0, len(per_text), 3)]
    got_labels = [torch.tensor(docs_result["labels"])] + [
        torch.cat([torch.tensor(r["labels"]) for r in per_text[i : i + 3]]) for i in range(0, len(per_text), 3)
    ]
    thresholds = torch.tensor(ckpt["state_dict"]["thresholds"])
    clear = (predicted - thresholds).abs() > 1e-5  # a probability that close to its threshold may round either way
    for probs, labels in zip(got, got_labels):
        assert (probs - predicted).abs().max() <= 2e-5
        assert torch.equal(labels[clear], predicted_labels[clear])


def test_exported_files_get_the_modes_of_the_umask(trained_run, tmp_path):
    """safetensors writes 0600 files: the export's files all read like any file the user writes (0644 under umask 022)."""
    before = os.umask(0o022)
    try:
        out = export_checkpoint(trained_run["ckpt"], tmp_path / "export")
    finally:
        os.umask(before)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()}
    assert modes["model.safetensors"] == oct(0o644)
    assert set(modes.values()) == {oct(0o644)}, modes
