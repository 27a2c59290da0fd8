"""`trainer.precision: auto`: the resolution rule, as a pure function of the device kind and its capabilities."""

from __future__ import annotations

import pytest

from emolightning.hardware import cpu_flags, faster_backend, resolve_precision


@pytest.mark.parametrize(
    ("device", "capability", "flags", "expected"),
    [
        ("cuda", (9, 0), set(), "bf16-mixed"),  # H100/H200
        ("cuda", (8, 0), set(), "bf16-mixed"),  # A100: the first with native bf16
        ("cuda", (7, 5), set(), "16-mixed"),  # T4
        ("cuda", (7, 0), set(), "16-mixed"),  # V100
        ("cuda", None, set(), "16-mixed"),
        ("cpu", None, {"avx2", "amx_bf16", "amx_tile"}, "bf16-mixed"),
        ("cpu", None, {"avx512f", "avx512_bf16"}, "bf16-mixed"),
        ("cpu", None, {"avx2", "avx512f"}, "32-true"),  # bf16 would be emulated
        ("cpu", None, set(), "32-true"),
        ("mps", None, set(), "32-true"),
    ],
)
def test_auto_precision_follows_the_native_number_format(device, capability, flags, expected):
    assert resolve_precision(device, capability, flags) == expected


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(str(tmp_path / "absent")) == set()


@pytest.mark.parametrize(
    ("device", "flags", "expected"),
    [("cpu", {"amx_bf16"}, "bf16"), ("cpu", {"avx512_bf16"}, "bf16"), ("cpu", {"avx2"}, None), ("cuda", {"amx_bf16"}, "torch"), ("mps", set(), None)],
)
def test_the_faster_backend_named_by_predict_is_bf16_only_on_cpus_with_native_bf16(device, flags, expected):
    assert faster_backend(device, flags) == expected


def test_the_trainer_resolves_auto_itself_outside_the_cli():
    from emolightning.hardware import this_machine_precision
    from emolightning.training.trainer import EmotionTrainer

    trainer = EmotionTrainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert trainer.precision == this_machine_precision("cpu")
    assert EmotionTrainer(accelerator="cpu", devices=1, precision="32-true", logger=False, enable_checkpointing=False).precision == "32-true"
