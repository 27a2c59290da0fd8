"""MPNet works wherever an encoder does: conftest's tiny random MPNet, whose `<s>`/`</s>`/pad-1 tokenizer shares no id and no segmentation with tiny_encoder's."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch

from conftest import LABELS, make_rows
from helpers import REPO, callback_option, emolightning, env_with_tests_on_path, tiny_args


def test_mpnet_batches_carry_its_specials_pad_id_and_max_length(tiny_mpnet, ec_dir, tmp_path):
    from emolightning.data.datamodule import EmotionDataModule

    data = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_mpnet, cache_dir=str(tmp_path / "cache"), batch_size=8, max_length=10)
    data.prepare_data()
    data.setup("fit")
    padded = 0
    for loader in (data.train_dataloader(), data.val_dataloader()):
        for batch in loader:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            assert ids.shape[1] <= 10
            assert (ids[:, 0] == 0).all()  # <s>
            assert all(ids[i, n - 1] == 2 for i, n in enumerate(mask.sum(1).tolist()))  # </s> kept even when truncated
            assert (ids[mask == 0] == 1).all()  # padded with <pad> = 1, not BERT's 0
            padded += int((mask == 0).sum())
    assert padded > 0


@pytest.mark.slow  # several processes or a full fit: CI runs the slow set too
def test_tiny_mpnet_fits_predicts_and_exports(tiny_mpnet, ec_dir, tmp_path):
    emolightning(
        "fit", *tiny_args(tiny_mpnet, ec_dir, tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--model.init_args.lr", "1e-3")
    )
    run = Path(glob.glob(str(tmp_path / "run" / "lightning_logs" / "version_*"))[0])
    best = glob.glob(str(run / "checkpoints" / "best-*.ckpt"))[0]
    out = tmp_path / "predictions.txt"
    test_file = Path(ec_dir) / "2018-E-c-En-test-gold.txt"
    emolightning(
        "predict", "--config", str(run / "config.yaml"), "--ckpt_path", best, "--data.predict_file", str(test_file), "--output", str(out),
        "--trainer.default_root_dir", str(tmp_path / "predict"), "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    rows = out.read_text().splitlines()
    assert len(rows) == 31 and rows[0].split("\t")[:2] == ["ID", "Tweet"]

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from emolightning.inference.export import export_checkpoint
    from emolightning.models.checkpoints import load_classifier

    exported = export_checkpoint(best, tmp_path / "export")
    model = AutoModelForSequenceClassification.from_pretrained(exported, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    texts = ["so delighted with my friend today", "crying"]  # of different lengths: the second is padded
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == AutoTokenizer.from_pretrained(tiny_mpnet)(texts, padding=True)["input_ids"]  # the checkpoint's own tokenizer
    assert (
        not batch["attention_mask"].all() and (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all() and tokenizer.pad_token_id == 1
    )
    with torch.no_grad():
        logits = model(**batch).logits
        own = load_classifier(best)(batch["input_ids"], batch["attention_mask"])  # the checkpoint's own model, as `predict` runs it
    assert logits.shape == (2, 11) and own.std() > 1e-3
    assert (logits - own).abs().max().item() <= 1e-5

    import onnxruntime

    onnx_dir = export_checkpoint(best, tmp_path / "onnx", format="onnx")
    session = onnxruntime.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
    assert abs(torch.from_numpy(session.run(None, feed)[0]) - logits).max() <= 1e-4


@pytest.mark.slow  # several processes or a full fit: CI runs the slow set too
def test_mpnet_teacher_distils_into_a_bert_tokenised_student_on_its_own_token_ids(tiny_mpnet, tiny_encoder, ec_dir, tmp_path):
    """The MPNet teacher given as its checkpoint file: the data tokenises for it without being told, and the cached teacher
    logits are the teacher's own on the MPNet tokenizer's ids of each training text (computed here, one text at a time)."""
    from transformers import AutoTokenizer

    from emolightning.models.checkpoints import load_classifier

    common = ["--data.data_dir", ec_dir, "--data.cache_dir", str(tmp_path / "cache"), "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1"]
    emolightning("fit", *tiny_args(tiny_mpnet, ec_dir, tmp_path / "teacher", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"))
    teacher = glob.glob(str(tmp_path / "teacher" / "run" / "lightning_logs" / "version_*" / "checkpoints" / "best-*.ckpt"))[0]
    record = str(tmp_path / "record-{rank}.pt")
    fit = emolightning(
        "fit", "--config", str(REPO / "configs" / "distill" / "mpnet-to-minilm-l6.yaml"), "--model.init_args.encoder", tiny_encoder,
        "--model.init_args.teacher", teacher, "--trainer.limit_train_batches", "3", "--trainer.default_root_dir", str(tmp_path / "student"),
        "--trainer.enable_model_summary", "false", "--trainer.precision", "32-true", callback_option("RecordTeacher", path=record), *common,
        env=env_with_tests_on_path(),
    )  # fmt: skip
    assert f"data.teacher_tokenizer: {tiny_mpnet}" in fit.stdout + fit.stderr
    best = glob.glob(str(tmp_path / "student" / "lightning_logs" / "version_*" / "checkpoints" / "best-*.ckpt"))[0]
    state = torch.load(best, weights_only=True)["state_dict"]
    assert not [k for k in state if k.startswith("teacher.")]
    assert state["encoder.embeddings.word_embeddings.weight"].shape[1] == 32  # the BERT student, not the MPNet teacher

    cache = torch.load(record.format(rank=0), weights_only=False)["cache"]
    model, tokenizer = load_classifier(teacher), AutoTokenizer.from_pretrained(tiny_mpnet)
    with torch.no_grad():
        expected = torch.cat([model(**tokenizer([text], return_tensors="pt").data) for _, text, _ in make_rows(96, 0, "train")])
    assert cache.shape == expected.shape == (96, len(LABELS)) and expected.std(0).min() > 1e-3
    assert (cache - expected).abs().max().item() < 1e-5
