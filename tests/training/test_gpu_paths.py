"""GPU code paths, shown on a CPU: mixed precision with clipping, the fp16 loss scaler and the NaN guard,
GPU padding, and the early GPU checks (by monkeypatching what torch.cuda reports)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from emolightning.data.datamodule import EmotionDataModule
from emolightning.models.classifier import EmotionClassifier

from conftest import LABELS


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


def padded_lengths(loader) -> list[int]:
    return [batch["input_ids"].shape[1] for batch in loader]


def test_batches_are_padded_to_a_multiple_of_8_on_a_gpu(tiny_encoder, ec_dir, cache_dir):
    from types import SimpleNamespace

    def data(**kwargs):
        dm = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_encoder, cache_dir=cache_dir, batch_size=4, eval_batch_size=8, predict_chunk_batches=2, **kwargs)
        dm.prepare_data()
        dm.setup("fit")
        dm.setup("predict")
        return dm

    def shapes(dm) -> dict[str, list[int]]:
        return {"train": padded_lengths(dm.train_dataloader()), "val": padded_lengths(dm.val_dataloader()), "predict": padded_lengths(dm.predict_dataloader())}

    on_cpu = shapes(data())  # no trainer, or a CPU one: each batch to its own longest text
    assert all(any(n % 8 for n in lengths) for lengths in on_cpu.values()), on_cpu
    gpu = data()
    gpu.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), global_rank=0, world_size=1)
    gpu.setup("predict")  # the stream learns the padding when it is made
    on_gpu = shapes(gpu)
    for split, lengths in on_gpu.items():
        assert len(lengths) == len(on_cpu[split])
        # rounded up, never more than 7 tokens added
        assert all(n % 8 == 0 and 0 <= n - m < 8 for n, m in zip(sorted(lengths), sorted(on_cpu[split]))), (split, lengths, on_cpu[split])
    assert len(set(on_gpu["train"])) < len(set(on_cpu["train"]))  # fewer distinct shapes
    explicit = data(pad_to_multiple_of=1)
    explicit.trainer = gpu.trainer
    assert padded_lengths(explicit.val_dataloader()) == on_cpu["val"]  # the option overrides the device's default


@pytest.fixture
def fake_gpu(monkeypatch):
    """What torch.cuda reports, set by the test: (name, capability, arch list, native bf16)."""

    def install(name: str, capability: tuple[int, int], arch_list: list[str], bf16: bool):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch_list)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation)

    return install


CUDA13_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]  # no sm_70: Volta dropped


def test_a_gpu_missing_from_the_torch_build_fails_early_with_the_fix(fake_gpu, tiny_encoder, ec_dir, monkeypatch):
    from emolightning.errors import ConfigError
    from emolightning.hardware import check_gpu

    fake_gpu("Tesla V100-SXM2-16GB", (7, 0), CUDA13_ARCHS, bf16=False)
    with pytest.raises(ConfigError, match=r"V100-SXM2-16GB \(compute capability 7.0, sm_70.*install a CUDA 12.x build.*cu126"):
        check_gpu(torch.device("cuda", 0), "16-mixed")
    fake_gpu("Tesla V100-SXM2-16GB", (7, 0), ["sm_70", "sm_75", "sm_80", "sm_90"], bf16=False)  # a CUDA 12.x build
    check_gpu(torch.device("cuda", 0), "16-mixed")
    fake_gpu("NVIDIA A10G", (8, 6), ["sm_80", "sm_90"], bf16=True)  # sm_80 cubins run on 8.6
    check_gpu(torch.device("cuda", 0), "bf16-mixed")
    check_gpu(torch.device("cpu"), "bf16-mixed")  # nothing to check on a CPU

    # the CLI checks the trainer's device before any data or model work
    import emolightning.cli.main as cli

    seen = []

    class Checked(Exception):
        pass

    def record(device, precision):
        seen.append((device, precision))
        raise Checked

    monkeypatch.setattr(cli, "check_gpu", record)
    with pytest.raises(Checked):
        cli.run_cli(
            [
                "fit",
                "--config",
                "configs/quickstart.yaml",
                "--model.init_args.encoder",
                tiny_encoder,
                "--trainer.precision",
                "bf16-mixed",
                "--data.data_dir",
                ec_dir,
            ]
        )
    assert seen == [(torch.device("cpu"), "bf16-mixed")]


def test_bf16_on_a_gpu_without_native_bf16_warns_and_points_to_16_mixed(fake_gpu):
    from emolightning.hardware import check_gpu

    fake_gpu("Tesla T4", (7, 5), CUDA13_ARCHS, bf16=False)
    with pytest.warns(UserWarning, match=r"'bf16-mixed' on the Tesla T4, which has no native bf16: it is emulated and slow.*16-mixed"):
        check_gpu(torch.device("cuda", 0), "bf16-mixed")
    fake_gpu("NVIDIA A100-SXM4-80GB", (8, 0), CUDA13_ARCHS, bf16=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_gpu(torch.device("cuda", 0), "bf16-mixed")
        fake_gpu("Tesla T4", (7, 5), CUDA13_ARCHS, bf16=False)
        check_gpu(torch.device("cuda", 0), "16-mixed")


def fp16_trainer(steps: int, callbacks=()) -> L.Trainer:
    """Lightning's 16-mixed as on a GPU (fp16 autocast and a GradScaler), on the CPU; with emolightning's guard."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    from emolightning.training.nan_guard import FiniteLossGuard

    plugin = MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))
    return quiet_trainer(plugins=[plugin], max_steps=steps, limit_val_batches=0, callbacks=[FiniteLossGuard(), *callbacks])


def fp16_fit(tiny_encoder, ec_dir, cache_dir, steps: int, broken) -> tuple[L.Trainer, EmotionClassifier, list[float]]:
    """Fits with `broken(model, global_step)` called before each forward; returns the scales after each step."""

    class Broken(EmotionClassifier):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return broken(self, self.trainer.global_step, loss)

    scales = []

    class Scales(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            scales.append(trainer.precision_plugin.scaler.get_scale())

    data = EmotionDataModule(data_dir=ec_dir, tokenizer=tiny_encoder, cache_dir=cache_dir, batch_size=4, eval_batch_size=32)
    model = Broken(tiny_encoder, LABELS, lr=1e-3)
    trainer = fp16_trainer(steps, [Scales()])
    try:
        trainer.fit(model, data)
    finally:
        trainer.scales = scales
    return trainer, model, scales


def test_fp16_one_overflow_the_scaler_survives_does_not_stop_the_run(tiny_encoder, ec_dir, cache_dir, one_thread):
    # an fp16 overflow in the forward at step 3: the loss is inf, the gradients too; the scaler skips that step
    trainer, model, scales = fp16_fit(tiny_encoder, ec_dir, cache_dir, 8, lambda m, step, loss: loss * float("inf") if step == 3 else loss)
    assert trainer.global_step == 8 and len(scales) == 8
    assert scales == [65536.0] * 3 + [32768.0] * 5  # halved once, by the skipped step
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fp16_persistent_nan_gradients_stop_the_run_when_the_scaler_gives_up(tiny_encoder, ec_dir, cache_dir, one_thread):
    from emolightning.errors import TrainingError

    MAX_SKIPPED_STEPS = 20  # nan_guard.MAX_SKIPPED_STEPS

    def nan_gradients(model, step, loss):
        if step >= 2:  # a finite loss whose gradients are NaN: the scaler skips every step from here on
            model.head.weight.register_hook(lambda grad: grad * float("nan")) if not hasattr(model, "hooked") else None
            model.hooked = True
        return loss

    with pytest.raises(TrainingError) as stopped:
        fp16_fit(tiny_encoder, ec_dir, cache_dir, 40, nan_gradients)
    message = str(stopped.value)
    assert f"the fp16 loss scaler skipped the last {MAX_SKIPPED_STEPS} optimizer steps" in message
    assert f"down to {65536 / 2**MAX_SKIPPED_STEPS:g}" in message  # 0.0625
    # steps 0-1 stepped; from step 2 on every step was skipped: the 20th skip ends global step 2 + 20
    assert f"after global step {2 + MAX_SKIPPED_STEPS}" in message
