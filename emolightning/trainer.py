"""Lightning's Trainer with one more precision, `auto` (the default): the fastest one the device computes natively."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch import Trainer

from .hardware import this_machine_precision

Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "32", "16", "bf16", "64", 32, 16, 64]


class EmotionTrainer(Trainer):
    def __init__(self, *args, precision: Precision | None = "auto", **kwargs) -> None:
        """Lightning's Trainer; `precision` may also be `auto`.

        Args:
            precision: `auto` picks bf16-mixed where bf16 is native (GPUs of compute capability 8.0 or
                newer; CPUs with AMX or AVX-512 BF16), 16-mixed on other CUDA GPUs (T4, V100) and 32-true
                elsewhere. Or any of Lightning's precisions, e.g. `32-true` for full fp32.
        """
        if precision in ("auto", None):
            precision = resolve_auto(kwargs.get("accelerator", "auto"))
        super().__init__(*args, precision=precision, **kwargs)


def resolve_auto(accelerator) -> str:
    """What `precision: auto` means for a Trainer with this `accelerator` (a name, or an Accelerator object)."""
    return this_machine_precision(accelerator if isinstance(accelerator, str) else type(accelerator).__name__.removesuffix("Accelerator").lower())
