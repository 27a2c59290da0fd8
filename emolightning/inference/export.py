"""`emolightning export`: a checkpoint -> a Hugging Face model directory that needs no emolightning.

    emolightning export --ckpt_path runs/.../best-*.ckpt --output exported/minilm-ec

The directory holds config.json (the encoder's config plus id2label/label2id,
`problem_type: multi_label_classification`, `classifier_pooling`, the tuned `thresholds` and an
`auto_map`), model.safetensors, the tokenizer, `modeling_emolightning.py`, thresholds.json and a
README.md model card. No standard transformers class computes what EmotionClassifier computes (see
modeling_emolightning.py), so the model class ships in the directory and loading needs
`trust_remote_code=True`:

    AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)
    pipeline("text-classification", model=DIR, top_k=None, trust_remote_code=True)

`--format onnx` also writes model.onnx (input_ids, attention_mask -> logits, batch and length
dynamic; backends.py), for ONNX Runtime without torch; it needs the `[onnx]` extra.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Literal

import torch

from ..errors import ConfigError
from ..files import folder_beside, give_umask_modes, named_write_errors
from ..models.checkpoints import classifier_checkpoint
from ..models.components import component
from ..models.heads import ClsPooling, Head
from ..models.thresholds import checkpoint_thresholds
from .backends import ModelOutput, export_onnx, require_onnx

MODELING_FILE = Path(__file__).with_name("modeling_emolightning.py")
MODEL_CLASS = "EmolightningForSequenceClassification"


POOLING_WORDS = {
    "cls": "first token",
    "mean": "mean over real tokens",
    "label_attention": "one attention query per label",
    "label_prompt": "label names put before the text, each label read from its name's tokens",
}


def monitored_scores(ckpt: dict) -> list[dict]:
    """What the ModelCheckpoint callbacks stored: the monitored metric of these weights and the best."""
    rows = []
    for key, state in (ckpt.get("callbacks") or {}).items():
        if not key.startswith("ModelCheckpoint") or not isinstance(state, dict) or not state.get("monitor"):
            continue
        # current_score is set just before each save, so it is the score of the weights in this file
        current, best = state.get("current_score"), state.get("best_model_score")
        rows.append(
            {
                "metric": state["monitor"],
                "checkpoint": None if current is None else float(current),
                "best": None if best is None else float(best),
            }
        )
    return rows


def checkpoint_head(hparams: dict) -> Head:
    """The head component of a checkpoint's hyperparameters."""
    return component(hparams.get("head"), Head, ClsPooling, "model.init_args.head")


def hf_config(hparams: dict, thresholds: list[float]):
    from transformers import AutoConfig

    config = AutoConfig.for_model(**hparams["encoder_config"])
    labels = list(hparams["label_names"])
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.problem_type = "multi_label_classification"
    head = checkpoint_head(hparams)
    config.classifier_pooling = head.name
    if head.name == "label_prompt":  # the prompt is part of the model: the export carries its ids
        from ..models.heads import label_prompt_ids
        from ..pretrained.encoders import load_tokenizer

        tokenizer = load_tokenizer(hparams["encoder"])
        config.label_prompt_ids, config.label_prompt_spans = label_prompt_ids(tokenizer, labels)
        config.label_prompt_sep_id = tokenizer.sep_token_id
    config.classifier_dropout = float(head.dropout)
    config.thresholds = thresholds
    config.architectures = [MODEL_CLASS]
    config.auto_map = {"AutoModelForSequenceClassification": f"modeling_emolightning.{MODEL_CLASS}"}
    # the checkpoint's weights are float32 (mixed precision keeps fp32 masters); an encoder
    # config saved in fp16 would otherwise make from_pretrained cast them down
    config.dtype = "float32"
    return config


ONNX_CARD = [
    "",
    "## ONNX Runtime",
    "",
    "`model.onnx` computes the same logits (input_ids and attention_mask in, `logits` out) without torch:",
    "",
    "```python",
    "import json, numpy as np, onnxruntime",
    "from transformers import AutoTokenizer",
    "",
    'session = onnxruntime.InferenceSession(f"{DIR}/model.onnx", providers=["CPUExecutionProvider"])',
    'batch = AutoTokenizer.from_pretrained(DIR)(["what a wonderful day"], padding=True, truncation=True, return_tensors="np")',
    'logits = session.run(None, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})[0]',
    'labels = 1 / (1 + np.exp(-logits)) >= np.array(list(json.load(open(f"{DIR}/thresholds.json")).values()))',
    "```",
]


def model_card(ckpt: dict, ckpt_path: Path, thresholds: list[float], onnx: bool = False) -> str:
    hparams = ckpt["hyper_parameters"]
    labels = list(hparams["label_names"])
    pooling = checkpoint_head(hparams).name
    max_length = trained_max_length(ckpt)
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags: [emolightning, emotion, multi-label-classification, text-classification]",
        "---",
        "",
        f"# Multi-label emotion classifier ({len(labels)} labels)",
        "",
        f"Exported by `emolightning export` from `{ckpt_path.name}` (epoch {ckpt.get('epoch')}, step {ckpt.get('global_step')}).",
        f"Encoder `{hparams['encoder']}`, pooling `{pooling}` "
        f"({POOLING_WORDS.get(pooling, pooling)}) -> dropout -> linear, one sigmoid per label; trained on texts cut at {max_length} tokens.",
        "",
        "## Use",
        "",
        "The model class lives in `modeling_emolightning.py` in this directory (torch and transformers only;",
        "no standard class pools like this model), so loading needs `trust_remote_code=True`:",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline",
        "",
        'DIR = "path/to/this/directory"',
        'classify = pipeline("text-classification", model=DIR, top_k=None, truncation=True, trust_remote_code=True)',
        'scores = classify("what a wonderful day")  # one sigmoid probability per label',
        "",
        "model = AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True).eval()",
        "tokenizer = AutoTokenizer.from_pretrained(DIR)",
        'batch = tokenizer(["what a wonderful day"], padding=True, truncation=True, return_tensors="pt")',
        "probs = torch.sigmoid(model(**batch).logits)",
        "labels = probs >= torch.tensor(model.config.thresholds)  # the tuned thresholds below",
        "```",
        "",
        f"`truncation=True` cuts a text at {max_length} tokens (the tokenizer's `model_max_length`), as training and `emolightning predict` did;",
        "without it a longer text gets other probabilities, or stops the model at its last position.",
        'The pipeline logs that the class is "not supported for text-classification" (it lists built-in classes only); it works all the same.',
        "",
        "## Labels and thresholds",
        "",
        "A label is predicted when its probability is at least its threshold (tuned on the validation split",
        "for sample-averaged Jaccard; also in `thresholds.json` and `config.thresholds`).",
        "",
        "| label | threshold |",
        "|---|---|",
        *[f"| {name} | {t:.3f} |" for name, t in zip(labels, thresholds)],
        "",
        "## Validation metrics",
        "",
    ]
    scores = monitored_scores(ckpt)
    if scores:
        lines += ["| metric | this checkpoint | best of the run |", "|---|---|---|"]
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        lines += [f"| {s['metric']} | {fmt(s['checkpoint'])} | {fmt(s['best'])} |" for s in scores]
        lines += [
            "",
            f"`val/*` metrics use the fixed threshold {checkpoint_thresholds(hparams).threshold}; sample-averaged Jaccard is SemEval-2018 E-c's official metric.",
        ]
    else:
        lines += ["The checkpoint holds no monitored validation metric."]
    if onnx:
        lines += ONNX_CARD
    return "\n".join(lines) + "\n"


def trained_max_length(ckpt: dict) -> int:
    """The `data.max_length` the checkpoint's model was trained and predicts at (the data module's default if it did not record one)."""
    recorded = (ckpt.get("datamodule_hyper_parameters") or {}).get("max_length")
    if recorded:
        return int(recorded)
    from ..data.datamodule import EmotionDataModule

    return int(inspect.signature(EmotionDataModule).parameters["max_length"].default)


def exported_tokenizer(encoder: str, max_length: int):
    """The encoder's tokenizer, cutting texts at `max_length` tokens as emolightning does (its last special token kept).

    `model_max_length` is what `truncation=True` cuts at, in the pipeline and in a tokenizer call; the fast
    tokenizer's own truncation (tokenizer.json) does the same for whoever uses the `tokenizers` library directly.
    Without it, a text longer than the encoder's positions stops the model, and one shorter than those but longer
    than `max_length` gets other probabilities than `emolightning predict` gives.
    """
    from ..pretrained.encoders import load_tokenizer

    tokenizer = load_tokenizer(encoder)
    tokenizer.model_max_length = max_length
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.enable_truncation(max_length=max_length)
    return tokenizer


def export_checkpoint(ckpt_path: str | Path, output_dir: str | Path, overwrite: bool = False, format: Literal["hf", "onnx"] = "hf") -> Path:
    """Write the Hugging Face directory for `ckpt_path` into `output_dir`, with `format="onnx"` also model.onnx; returns its path."""
    from .modeling_emolightning import EmolightningForSequenceClassification

    ckpt_path, out = Path(ckpt_path), Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(
            f"The export directory '{out}' (option --output) exists and is not empty. Choose a new directory, or pass --overwrite to replace its files."
        )
    if format == "onnx":
        require_onnx("`emolightning export --format onnx`")  # before anything is written
    ckpt = classifier_checkpoint(ckpt_path)
    hparams, state = ckpt["hyper_parameters"], ckpt["state_dict"]
    fixed = checkpoint_thresholds(hparams).threshold
    thresholds = [round(float(t), 6) for t in state.get("thresholds", torch.full((len(hparams["label_names"]),), float(fixed)))]
    config = hf_config(hparams, thresholds)

    # load the checkpoint's weights into the exported class itself: strict loading proves that
    # every tensor has its place, and save_pretrained writes the safetensors HF expects
    model = EmolightningForSequenceClassification(config)
    weights = {k: v.float() for k, v in state.items() if k.startswith(("encoder.", "head.", "pooling."))}
    result = model.load_state_dict(weights, strict=False)
    # encoders whose position_ids buffer is not persistent are the only tolerated difference
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"The checkpoint '{ckpt_path}' does not match its encoder config (missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}). Was it written by another emolightning version?"
        )

    tokenizer = exported_tokenizer(hparams["encoder"], trained_max_length(ckpt))
    # the files are written into a hidden folder beside `out`, then each is renamed into it: a full disk or a
    # read-only folder stops with a StorageError naming `out` and leaves no half file (and an earlier export's files whole)
    needed = sum(t.numel() * 4 for t in weights.values()) * (2 if format == "onnx" else 1)
    with named_write_errors(str(out), needed=needed), folder_beside(str(out)) as work_folder:
        work = Path(work_folder)
        model.save_pretrained(work)
        shutil.copyfile(MODELING_FILE, work / MODELING_FILE.name)
        tokenizer.save_pretrained(work)
        (work / "thresholds.json").write_text(json.dumps(dict(zip(hparams["label_names"], thresholds)), indent=2) + "\n")
        if format == "onnx":
            export_onnx(ModelOutput(model, "logits"), str(work / "model.onnx"), "logits")
        (work / "README.md").write_text(model_card(ckpt, ckpt_path, thresholds, onnx=format == "onnx"), encoding="utf-8")
        give_umask_modes(str(work))  # safetensors writes model.safetensors 0600
        for file in work.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())  # on disk before a name in `out` points at it
        out.mkdir(exist_ok=True)
        for file in sorted(work.iterdir()):
            os.replace(file, out / file.name)
    return out
