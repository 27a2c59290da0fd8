"""What depends on the accelerator and the precision: the AdamW kernel, GPU padding, early GPU checks, and each
card's peak FLOP/s (the denominator of a model FLOPs utilisation, as benchmarks/gpu_precision.py reports it).

Each decision is a small function of plain values (a precision string, a device), so it is
testable on a CPU by passing the GPU's values, and a GPU-only path is not a blind spot.
"""

from __future__ import annotations

import re

import torch
from lightning.pytorch.utilities import rank_zero_warn

from .errors import ConfigError

MIXED = ("16-mixed", "bf16-mixed")


def adamw_options(precision: str, gradient_clip_val: float | None) -> dict:
    """Keyword arguments for torch.optim.AdamW: `fused=True`, or `foreach=True` when clipping under mixed precision.

    The fused AdamW updates every parameter in one kernel (the unfused step's cost: BENCHMARKS.md,
    section "Where a training step goes"), and it unscales fp16 gradients inside its own step.
    Lightning clips gradients before the step, so under `16-mixed`/`bf16-mixed` it refuses to clip
    for such an optimizer ("does not allow for gradient clipping"); the foreach AdamW leaves the
    unscaling to Lightning and clips fine, a little slower.
    """
    if precision in MIXED and gradient_clip_val:
        return {"foreach": True}
    return {"fused": True}


def pad_multiple(device: torch.device | None) -> int | None:
    """Batches padded to a multiple of 8 tokens on a GPU, else to their longest text.

    On a GPU every new padded length costs a one-off kernel selection (and fp16/bf16 tensor cores
    want dimensions divisible by 8), so rounding 70 possible tweet lengths up to 9 shapes saves
    more than the few pad tokens cost. On a CPU there is no such cost and padding is pure waste.
    """
    return 8 if device is not None and device.type == "cuda" else None


def check_gpu(device: torch.device, precision: str) -> None:
    """Fail early when this torch build has no kernels for the GPU; warn when bf16 would be emulated."""
    if device.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if not arch_supported(major, minor, torch.cuda.get_arch_list()):
        raise ConfigError(
            f"This torch build ({torch.__version__}, CUDA {torch.version.cuda}) has no kernels for the {name} (compute capability "
            f"{major}.{minor}, sm_{major}{minor}; the build has {' '.join(torch.cuda.get_arch_list())}). The CUDA 13 wheels dropped "
            "Volta (V100, sm_70): install a CUDA 12.x build, e.g. `pip install torch --index-url https://download.pytorch.org/whl/cu126`."
        )
    if precision.startswith("bf16") and not torch.cuda.is_bf16_supported(including_emulation=False):
        rank_zero_warn(
            f"precision {precision!r} on the {name}, which has no native bf16: it is emulated and slow. "
            "Use `--trainer.precision 16-mixed` (fp16 with a loss scaler) on this GPU (configs/trainer/t4.yaml)."
        )


def arch_supported(major: int, minor: int, arch_list: list[str]) -> bool:
    """Whether a build with `arch_list` (e.g. ['sm_80', 'sm_90', 'compute_90']) runs on compute capability major.minor.

    A cubin (sm_XY) runs on the same major version with an equal or higher minor; PTX (compute_XY)
    is compiled at load time for any equal or newer GPU.
    """
    for arch in arch_list:
        found = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", arch)  # sm_70, sm_90a, sm_100, compute_120
        if found is None:
            continue
        kind, arch_major, arch_minor = found.group(1), int(found.group(2)), int(found.group(3))
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def native_bf16_cpu(cpu_flags: set[str]) -> bool:
    """Whether a CPU with these /proc/cpuinfo flags computes bf16 natively (AMX tiles or AVX-512 BF16)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags)


def resolve_precision(device_type: str, cuda_capability: tuple[int, int] | None = None, cpu_flags: set[str] | frozenset[str] = frozenset()) -> str:
    """What `trainer.precision: auto` means on a device: the fastest precision it runs natively.

    bf16-mixed where bf16 is native (Ampere-or-newer GPUs, sm80+; CPUs with AMX or AVX-512 BF16),
    16-mixed on older CUDA GPUs (T4, V100: fp16 tensor cores, no bf16), 32-true elsewhere (a CPU
    without bf16 emulates it, slower than fp32).
    """
    if device_type == "cuda":
        return "bf16-mixed" if cuda_capability is not None and cuda_capability >= (8, 0) else "16-mixed"
    if device_type == "cpu" and native_bf16_cpu(set(cpu_flags)):
        return "bf16-mixed"
    return "32-true"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is absent, e.g. macOS)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def this_machine_precision(accelerator: str = "auto") -> str:
    """resolve_precision for the device a Trainer with `accelerator` would pick (the first GPU, else the CPU)."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return resolve_precision("cuda", torch.cuda.get_device_capability(0))
    if accelerator in ("auto", "cpu"):
        return resolve_precision("cpu", cpu_flags=cpu_flags())
    return "32-true"


def faster_backend(device_type: str, cpu_flags: set[str] | frozenset[str] = frozenset()) -> str | None:
    """The predict backend faster than the default fp32 one on a device, if any, for predict's log line to name.

    `bf16` on CPUs with native bf16 (AMX or AVX-512 BF16: BENCHMARKS.md, section "Predict backends"), `torch` on a
    GPU (at the run's mixed precision). Neither is the default: both give labels close to, not identical
    with, the fp32 model that `emolightning export` writes.
    """
    if device_type == "cpu":
        return "bf16" if native_bf16_cpu(set(cpu_flags)) else None
    return "torch" if device_type == "cuda" else None


# Peak dense (no 2:4 sparsity) tensor-core FLOP/s from NVIDIA's datasheets, SXM parts unless named.
# T4 and V100 have no bf16 or TF32 units: their TF32 entry is the plain fp32 peak, bf16 is None.
PEAK_FLOPS = {  # card: {fp32, tf32, fp16, bf16} in TFLOP/s
    "T4": {"fp32": 8.1, "tf32": 8.1, "fp16": 65.0, "bf16": None},
    "V100 PCIe": {"fp32": 14.0, "tf32": 14.0, "fp16": 112.0, "bf16": None},
    "V100": {"fp32": 15.7, "tf32": 15.7, "fp16": 125.0, "bf16": None},
    "A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "fp16": 756.0, "bf16": 756.0},
    "H100": {"fp32": 66.9, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4},
    "H200": {"fp32": 66.9, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4},
}


def card_of(device_name: str) -> str | None:
    """The PEAK_FLOPS key for a torch.cuda.get_device_name(), e.g. 'NVIDIA H100 80GB HBM3' -> 'H100'."""
    name = device_name.upper()
    for card in ("H200", "H100", "A100", "V100", "T4"):
        if card in name:
            return f"{card} PCIe" if "PCIE" in name and f"{card} PCIe" in PEAK_FLOPS else card
    return None


def peak_flops(card: str | None, precision: str, matmul_precision: str = "highest") -> float | None:
    """Peak FLOP/s of `card` for the matmuls a Lightning precision setting runs, or None if unknown."""
    if card is None:
        return None
    kind = {"16-mixed": "fp16", "bf16-mixed": "bf16"}.get(precision, "fp32" if matmul_precision == "highest" else "tf32")
    peak = PEAK_FLOPS[card][kind]
    return None if peak is None else peak * 1e12
