"""Lightning's Trainer with one more precision, `auto` (the default): the fastest one the device computes natively."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch import Trainer

from ..hardware import this_machine_precision

Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "32", "16", "bf16", "64", 32, 16, 64]


class EmotionTrainer(Trainer):
    """Customize every aspect of training via flags (Lightning's Trainer)."""  # the title of the `trainer.*` options in --help

    def __init__(self, *args, precision: Precision | None = "auto", use_distributed_sampler: bool = False, **kwargs) -> None:
        """Lightning's Trainer; `precision` may also be `auto`.

        Args:
            precision: `auto` picks bf16-mixed where bf16 is native (GPUs of compute capability 8.0 or
                newer; CPUs with AMX or AVX-512 BF16), 16-mixed on other CUDA GPUs (T4, V100) and 32-true
                elsewhere. Or any of Lightning's precisions, e.g. `32-true` for full fp32.
            use_distributed_sampler: Have Lightning wrap each loader's sampler in a DistributedSampler
                under DDP. Off: emolightning's data module deals each rank its share itself (the
                length-grouped training order included, which a wrapper would reshuffle).
        """
        if precision in ("auto", None):
            precision = resolve_auto(kwargs.get("accelerator", "auto"))
        super().__init__(*args, precision=precision, use_distributed_sampler=use_distributed_sampler, **kwargs)

    # LightningCLI lists each command by the first docstring line of its Trainer method, and Lightning's
    # docstrings break their first sentence across lines (`test` read "It's separated from fit to make
    # sure you never run on your"). These only pass their arguments on, under descriptions of our own.
    def fit(self, *args, **kwargs):
        """Train a model, validating every epoch; ends by printing the run folder and the test and predict commands."""
        return super().fit(*args, **kwargs)

    def validate(self, *args, **kwargs):
        """Score a checkpoint (--ckpt_path) on the validation split."""
        return super().validate(*args, **kwargs)

    def test(self, *args, **kwargs):
        """Score a checkpoint (--ckpt_path) on the test split with the official metrics."""
        return super().test(*args, **kwargs)

    def predict(self, *args, **kwargs):
        """Label texts (data.predict_file) with a checkpoint (--ckpt_path) at its tuned thresholds, in an E-c file (--output)."""
        return super().predict(*args, **kwargs)


def resolve_auto(accelerator) -> str:
    """What `precision: auto` means for a Trainer with this `accelerator` (a name, or an Accelerator object)."""
    return this_machine_precision(accelerator if isinstance(accelerator, str) else type(accelerator).__name__.removesuffix("Accelerator").lower())
