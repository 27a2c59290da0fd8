"""On a real CUDA GPU (skipped without one; benchmarks/gpu_check.sh runs them): the early GPU check and the fp16 loss
scaler with the NaN guard. test_gpu_paths.py shows the same paths on a CPU, with torch.cuda monkeypatched."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch

from emolightning.data.datamodule import EmotionDataModule
from emolightning.models.classifier import EmotionClassifier

from conftest import LABELS
from helpers import run_if


@run_if(min_gpus=1)
def test_this_torch_build_runs_on_the_gpu():
    from emolightning.hardware import check_gpu

    check_gpu(torch.device("cuda", 0), "16-mixed")  # raises a ConfigError when the build has no kernels for it


@run_if(min_gpus=1, bf16=True)
def test_bf16_on_a_gpu_with_native_bf16_does_not_warn():
    from emolightning.hardware import check_gpu

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_gpu(torch.device("cuda", 0), "bf16-mixed")


def gpu_fp16_fit(tiny_encoder, ec_dir, cache_dir, steps: int, broken) -> L.Trainer:
    """Lightning's 16-mixed on the GPU with emolightning's guard; `broken(model, global_step, loss)` gives each training step's loss."""
    from emolightning.training.nan_guard import FiniteLossGuard

    class Broken(EmotionClassifier):
        def training_step(self, batch, batch_idx):
            return broken(self, self.trainer.global_step, super().training_step(batch, batch_idx))

    data = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_encoder, cache_dir=cache_dir, batch_size=4, eval_batch_size=32)
    model = Broken(tiny_encoder, LABELS, lr=1e-3)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision="16-mixed",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[FiniteLossGuard()],
    )
    trainer.fit(model, data)
    return trainer


@run_if(min_gpus=1)
def test_fp16_on_a_gpu_one_overflow_the_scaler_survives_does_not_stop_the_run(tiny_encoder, ec_dir, cache_dir):
    trainer = gpu_fp16_fit(tiny_encoder, ec_dir, cache_dir, 8, lambda model, step, loss: loss * float("inf") if step == 3 else loss)
    assert trainer.global_step == 8
    assert trainer.precision_plugin.scaler.get_scale() == 32768.0  # halved once, by the skipped step


@run_if(min_gpus=1)
def test_fp16_on_a_gpu_persistent_nan_gradients_stop_the_run(tiny_encoder, ec_dir, cache_dir):
    from emolightning.errors import TrainingError
    from emolightning.training.nan_guard import MAX_SKIPPED_STEPS

    def nan_gradients(model, step, loss):
        if step >= 2 and not hasattr(model, "hooked"):  # a finite loss whose gradients are NaN: the scaler skips every step from here on
            model.hooked = next(p for p in model.parameters() if p.requires_grad).register_hook(lambda grad: grad * float("nan"))
        return loss

    with pytest.raises(TrainingError, match=f"skipped the last {MAX_SKIPPED_STEPS} optimizer steps"):
        gpu_fp16_fit(tiny_encoder, ec_dir, cache_dir, 40, nan_gradients)
