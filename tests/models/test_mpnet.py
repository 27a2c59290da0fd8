"""MPNet works wherever an encoder does: a tiny random MPNet with its own `<s>`/`</s>`/pad-1 tokenizer."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch

from conftest import CUES, FILLER
from helpers import REPO, emolightning, tiny_args

MPNET_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # the order of all-mpnet-base-v2's vocab: pad id 1


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory) -> str:
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizerFast

    out = tmp_path_factory.mktemp("tiny-mpnet")
    vocab = MPNET_SPECIALS + sorted(set(FILLER) | set(CUES.values()) | set("abcdefghijklmnopqrstuvwxyz"))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    MPNetTokenizerFast(str(out / "vocab.txt"), do_lower_case=True, unk_token="<unk>")  # positional: vocab_file (v4), vocab (v5).save_pretrained(out)
    config = MPNetConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=80, pad_token_id=1
    )
    MPNetModel(config).save_pretrained(out)
    return str(out)


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

    exported = export_checkpoint(best, tmp_path / "export")
    model = AutoModelForSequenceClassification.from_pretrained(exported, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    batch = tokenizer(["so delighted today", "crying at home"], padding=True, return_tensors="pt")
    assert batch["input_ids"][1, -1] == tokenizer.pad_token_id == 1 or batch["attention_mask"].all()
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 11) and torch.isfinite(logits).all()

    import onnxruntime

    onnx_dir = export_checkpoint(best, tmp_path / "onnx", format="onnx")
    session = onnxruntime.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
    assert abs(torch.from_numpy(session.run(None, feed)[0]) - logits).max() <= 1e-4


@pytest.mark.slow  # several processes or a full fit: CI runs the slow set too
def test_mpnet_teacher_distils_into_a_bert_tokenised_student(tiny_mpnet, tiny_encoder, ec_dir, tmp_path):
    common = ["--data.data_dir", ec_dir, "--data.cache_dir", str(tmp_path / "cache"), "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1"]
    emolightning("fit", *tiny_args(tiny_mpnet, ec_dir, tmp_path / "teacher", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"))
    teacher = glob.glob(str(tmp_path / "teacher" / "run" / "lightning_logs" / "version_*" / "checkpoints" / "best-*.ckpt"))[0]
    fit = emolightning(
        "fit", "--config", str(REPO / "configs" / "distill" / "mpnet-to-minilm-l6.yaml"), "--model.init_args.encoder", tiny_encoder,
        "--model.init_args.teacher", teacher, "--trainer.limit_train_batches", "3", "--trainer.default_root_dir", str(tmp_path / "student"),
        "--trainer.enable_model_summary", "false", *common,
    )  # fmt: skip
    assert "distillation: teacher" in fit.stdout + fit.stderr
    best = glob.glob(str(tmp_path / "student" / "lightning_logs" / "version_*" / "checkpoints" / "best-*.ckpt"))[0]
    state = torch.load(best, weights_only=True)["state_dict"]
    assert not [k for k in state if k.startswith("teacher.")]
    assert state["encoder.embeddings.word_embeddings.weight"].shape[1] == 32  # the BERT student, not the MPNet teacher
