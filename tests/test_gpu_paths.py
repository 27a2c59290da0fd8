"""GPU code paths, shown on a CPU: mixed precision with clipping, the fp16 loss scaler and the NaN guard,
GPU padding, and the early GPU checks (by monkeypatching what torch.cuda reports)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from conftest import LABELS
from emolightning.data import EmotionDataModule
from emolightning.model import EmotionClassifier


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_gradient_clipping_works_at_every_precision(tiny_encoder, ec_dir, cache_dir, one_thread, precision):
    """Lightning refuses to clip for the fused AdamW under mixed precision (it unscales inside its step)."""
    data = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_encoder, cache_dir=cache_dir, batch_size=8, eval_batch_size=32)
    model = EmotionClassifier(tiny_encoder, LABELS, lr=1e-2, head_lr=1.0)  # large steps: gradients well above the clip value
    norms = []

    class Norms(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            norms.append(torch.nn.utils.get_total_norm([p.grad for p in pl_module.parameters() if p.grad is not None]).item())

    trainer = quiet_trainer(precision=precision, gradient_clip_val=1.0, max_epochs=1, limit_train_batches=3, limit_val_batches=0, callbacks=[Norms()])
    clipped = []
    original = trainer.precision_plugin.clip_gradients

    def recording_clip(optimizer, clip_val=0.0, gradient_clip_algorithm=None):
        original(optimizer, clip_val, gradient_clip_algorithm)
        clipped.append(torch.nn.utils.get_total_norm([p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]).item())

    trainer.precision_plugin.clip_gradients = recording_clip
    trainer.fit(model, data)
    assert trainer.global_step == 3
    optimizer = trainer.optimizers[0]
    assert bool(optimizer.defaults["fused"]) is (precision == "32-true") and bool(optimizer.defaults["foreach"]) is (precision != "32-true")
    assert len(clipped) == 3 and max(norms) > 1.0  # clipping had something to do ...
    assert all(n == pytest.approx(min(1.0, before), rel=1e-3) for n, before in zip(clipped, norms))  # ... and did it
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_adamw_stays_fused_unless_clipping_under_mixed_precision():
    from emolightning.hardware import adamw_options

    assert adamw_options("16-mixed", 1.0) == adamw_options("bf16-mixed", 0.5) == {"foreach": True}
    assert adamw_options("16-mixed", None) == adamw_options("bf16-mixed", 0) == adamw_options("32-true", 1.0) == {"fused": True}
