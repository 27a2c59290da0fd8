"""Mixed precision on CPU: bf16-mixed end to end, fp16 logits through the loss, and the GPU benchmark's smoke test.

Lightning runs `16-mixed` on a CPU as `bf16-mixed` (it has no fp16 AMP there), so fp16 is tested
the way Lightning runs it on a GPU: torch.autocast(float16) with a GradScaler, by hand.
"""

from __future__ import annotations

import logging
import math
import os

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from emolightning.data.datamodule import EmotionDataModule
from emolightning.models.classifier import EmotionClassifier

from conftest import LABELS
from helpers import REPO


class Recorder(L.Callback):
    """Dtypes seen inside the steps: the head's output, the probabilities EmotionScores receives, the loss."""

    def __init__(self, model: EmotionClassifier):
        self.losses, self.head_dtypes, self.prob_dtypes = [], set(), set()
        model.head.register_forward_hook(lambda module, args, out: self.head_dtypes.add(out.dtype))
        update = model.val_scores.update

        def recording_update(probs, target, index):
            self.prob_dtypes.add(probs.dtype)
            update(probs, target, index)

        model.val_scores.update = recording_update

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach())


class Lines(logging.Handler):
    """Collects the messages of rank_zero_info (the lightning.pytorch logger)."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_bf16_mixed_with_gradient_accumulation_on_cpu(tiny_encoder, ec_dir, cache_dir, one_thread):
    data = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_encoder, cache_dir=cache_dir, batch_size=4, eval_batch_size=16)
    model = EmotionClassifier(tiny_encoder, LABELS, lr=1e-3)
    recorder, lines = Recorder(model), Lines()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="bf16-mixed",
        accumulate_grad_batches=2,
        max_epochs=1,
        limit_train_batches=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    logging.getLogger("lightning.pytorch").addHandler(lines)
    try:
        trainer.fit(model, data)
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(lines)

    # 8 batches of 4, two per optimizer step: 4 steps of 8 texts
    assert "effective batch size 8 = 4 per device x 1 devices x 1 nodes x 2 accumulated; 4 optimizer steps" in lines.lines
    assert trainer.global_step == 4
    assert len(recorder.losses) == 8
    assert all(loss.dtype == torch.float32 and torch.isfinite(loss) for loss in recorder.losses)
    assert torch.bfloat16 in recorder.head_dtypes  # autocast was on: the head ran in bf16 ...
    assert recorder.prob_dtypes == {torch.float32}  # ... but the sigmoid and EmotionScores saw float32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights AdamW updates stay float32
    for key in ("val/loss", "val/jaccard", "val/f1_micro", "val/f1_macro", "val/tuned/jaccard"):
        value = trainer.callback_metrics[key]
        assert value.dtype == torch.float32 and torch.isfinite(value), key
    assert model.thresholds.dtype == torch.float32


def test_16_mixed_on_a_cpu_runs_as_bf16_mixed():
    # so configs/trainer/t4.yaml with --trainer.accelerator cpu is not fp16 on a laptop
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="16-mixed", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.precision_plugin.precision == "bf16-mixed"


def test_fp16_logits_give_a_finite_float32_loss(tiny_encoder, one_thread):
    model = EmotionClassifier(tiny_encoder, LABELS, lr=1e-3)
    # per row: -60000 with gold 1 costs 60000, +60000 with gold 1 costs 0, 3 with gold 0 costs
    # 3 + log(1 + e^-3) = 3.048587, eight 0s with gold 0 cost log 2 each: mean = 60008.593764 / 11
    row = [-60000.0, 60000.0, 3.0] + [0.0] * 8
    logits = torch.tensor([row] * 64, dtype=torch.float16)
    labels = torch.tensor([[1.0, 1.0] + [0.0] * 9] * 64)
    loss = model.loss(logits, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx((60000 + 3 + math.log1p(math.exp(-3)) + 8 * math.log(2)) / 11, rel=1e-6)
    # what the float32 cast avoids: in fp16 the batch's summed loss overflows (fp16 max is 65504)
    assert torch.isinf(F.binary_cross_entropy_with_logits(logits, labels.half(), reduction="sum"))


def test_fp16_autocast_with_grad_scaler_trains(tiny_encoder, one_thread):
    """What Lightning's 16-mixed does on a GPU, by hand on the CPU."""
    torch.manual_seed(0)
    model = EmotionClassifier(tiny_encoder, LABELS, lr=1e-3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    ids = torch.randint(5, 40, (8, 12))
    mask = torch.ones_like(ids)
    labels = (torch.rand(8, len(LABELS)) < 0.2).float()
    before = model.head.weight.detach().clone()
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.float16):
            logits = model(ids, mask)
            loss = model.loss(logits, labels)
        assert logits.dtype == torch.float16 and loss.dtype == torch.float32 and torch.isfinite(loss)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    assert scaler.get_scale() == 2.0**16  # no overflow, so the scale never dropped
    assert model.head.weight.dtype == torch.float32 and not torch.equal(model.head.weight, before)


def test_gpu_benchmark_card_table():
    from emolightning.hardware import card_of, peak_flops

    assert card_of("NVIDIA H100 80GB HBM3") == "H100"
    assert card_of("NVIDIA H100 PCIe") == "H100 PCIe"
    assert card_of("NVIDIA H200") == "H200"
    assert card_of("NVIDIA A100-SXM4-80GB") == "A100"
    assert card_of("Tesla V100-SXM2-16GB") == "V100"
    assert card_of("Tesla T4") == "T4"
    assert card_of("NVIDIA GeForce RTX 4090") is None
    assert peak_flops("A100", "bf16-mixed") == 312e12
    assert peak_flops("A100", "32-true") == 19.5e12
    assert peak_flops("A100", "32-true", "high") == 156e12  # TF32
    assert peak_flops("T4", "16-mixed") == 65e12
    assert peak_flops("T4", "bf16-mixed") is None
    assert peak_flops(None, "16-mixed") is None


def test_gpu_benchmark_smoke_on_cpu(tmp_path):
    """benchmarks/gpu_precision.py as gpu_check.sh runs it, on the CPU with tiny encoders: its rows, MFU and warm-up."""
    import json
    import subprocess
    import sys

    out = tmp_path / "rows.json"
    options = ["--device", "cpu", "--tiny", "--steps", "6", "--warmup", "1", "--batch_size", "4", "--card", "A100", "--output_json", str(out)]
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_precision.py", *options], cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    precisions = ("32-true", "16-mixed", "bf16-mixed")
    assert [(r["model"], r["precision"]) for r in rows] == [(m, p) for m in ("distilbert-base", "bert-base", "roberta-base") for p in precisions]
    for r in rows:
        assert r["samples_per_s"] > 0 and math.isfinite(r["final_loss"]) and 0 <= r["padding"] < 1
        # every padded length a timed step sees had its warm-up step; lengths rounded up to a multiple of 8 (the default)
        assert set(r["lengths"]["timed"]) <= set(r["lengths"]["warmed"]) and all(n % 8 == 0 for n in r["lengths"]["timed"]), r["lengths"]
    # the tiny BERT's matmul parameters, by hand: per layer q, k, v, o 4 x (32*32 + 32), FFN 32*64 + 64
    # and 64*32 + 32, two LayerNorms 2 x 64; 2 layers + the embedding LayerNorm 64 + the head 32*11 + 11
    assert 2 * (4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 64) + 64 + 32 * 11 + 11 == 17515
    bert_bf16 = next(r for r in rows if r["model"] == "bert-base" and r["precision"] == "bf16-mixed")
    assert bert_bf16["mfu"] == pytest.approx(6 * 17515 * bert_bf16["tokens_per_s"] / 312e12)
    assert "| model | params (M) | precision | samples/s |" in proc.stdout and proc.stdout.count("| bert-base |") == 3
