"""Fast CPU inference: the backends of `emolightning predict --backend`, and the ONNX export.

    emolightning predict --config RUN/config.yaml --ckpt_path RUN/checkpoints/best-*.ckpt --backend onnx

The backend swaps the encoder once the checkpoint's weights are in (`on_predict_start`); the label
prompt, the pooling, the head and the thresholds stay the fp32 PyTorch ones, so every pooling works
with every backend, and the writer still puts each row back in input order.

- `auto` (the default): `fp32`, so that predict gives the exported model's labels on every machine.
- `fp32`: the model as trained, in PyTorch in full fp32 whatever `trainer.precision` says: the same
  numbers as `emolightning export`'s model, and the reference the others are measured against.
- `torch`: PyTorch at `trainer.precision` (the run's config records the precision it trained at:
  `bf16-mixed` or `16-mixed` is faster on a GPU, close to but not identical with fp32).
- `onnx`: the encoder exported with `torch.onnx.export` and run by ONNX Runtime (fused attention,
  LayerNorm and GELU kernels): the same probabilities up to float rounding, so the same labels. Needs the
  `[onnx]` extra (onnxruntime, onnx, onnxscript). Every run pays the export first.
- `bf16`: the encoder's weights in bfloat16 (oneDNN uses AMX or AVX512-BF16 where the CPU has
  them), its output back in fp32 for the head: the fastest on such CPUs, with close but not identical
  labels (BENCHMARKS.md, section "Predict backends", gives the agreement with fp32 on the E-c dev split).

Every backend but `torch` runs the pooling, the head and the thresholds in fp32: the CLI sets
`trainer.precision: 32-true` for them (cli/main.py), so no autocast rounds the head's input.

int8 dynamic quantisation (torch.ao.quantization.quantize_dynamic, or ONNX Runtime's) is not
offered: on the E-c MiniLM it changed the labels of many dev tweets, per-channel weights included,
because a few LayerNorm output dimensions are outliers that per-tensor activation scales cannot
represent (BENCHMARKS.md, section "Predict backends").
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Literal

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from ..errors import ConfigError
from ..files import named_write_errors

Backend = Literal["auto", "fp32", "torch", "onnx", "bf16"]
BACKENDS: tuple[str, ...] = ("auto", "fp32", "torch", "onnx", "bf16")
# what `auto` is: predict's labels are the exported model's (fp32) unless a faster backend is asked for by name
AUTO_BACKEND = "fp32"
# the backends that run the head in fp32, so the Trainer's precision must not autocast it
FP32_HEAD_BACKENDS = ("fp32", "onnx", "bf16")
ONNX_INPUTS = ["input_ids", "attention_mask"]
ONNX_OPSET = 18


def require_onnx(what: str):
    """`onnxruntime`, imported, or a ConfigError naming the extra that provides it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ConfigError(
            f"{what} needs ONNX Runtime, which is not installed ({type(err).__name__}: {err}). "
            "Install the extra with `pip install 'emolightning[onnx]'` (onnxruntime, onnx, onnxscript), or leave `--backend` at its default (fp32 PyTorch)."
        ) from err
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
    except ImportError as err:
        raise ConfigError(
            f"{what} needs the `onnx` package, which is not installed ({type(err).__name__}: {err}). Install the extra with `pip install 'emolightning[onnx]'`."
        ) from err
    return onnxruntime


class ModelOutput(nn.Module):
    """A Hugging Face model as a plain function, (input_ids, attention_mask) -> one field of its output, for export_onnx:
    an encoder's `last_hidden_state` (`--backend onnx`) or a sequence classifier's `logits` (export.py's model.onnx)."""

    def __init__(self, model: nn.Module, field: str):
        super().__init__()
        self.model, self.field = model, field

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), self.field)


# What tracing a Hugging Face encoder says about code whose traced form is right for every input the export takes
# (tests/inference/test_inference.py runs the export at lengths and batch sizes other than the traced ones):
TRACE_NOTES = [
    # transformers' mask code compares the mask's length with the keys' length, equal for an encoder without a cache, and
    # sdpa checks `q_length > 1` only to choose causal attention, which an encoder never uses
    r"Converting a tensor to a Python boolean might cause the trace to be incorrect",
    # transformers builds the padding mask by indexing it with torch.arange, whose indices are never negative
    r"Exporting aten::index operator of advanced indexing",
]


def export_onnx(module: nn.Module, path: str, output_name: str, example_length: int = 8) -> str:
    """Write `module(input_ids, attention_mask)` to an ONNX file at `path`, batch and length dynamic.

    TorchScript tracing (`dynamo=False`) exports much faster than the dynamo exporter (BENCHMARKS.md,
    section "Predict backends"), and predict pays the export on every run; both give the same numbers.
    Tracing is still torch's documented exporter for fixed-rank inputs like these. Its warnings about
    transformers' mask code (TRACE_NOTES) hold for other inputs only, and none of those apply here.
    """
    ids = torch.ones(2, example_length, dtype=torch.long)
    mask = torch.ones(2, example_length, dtype=torch.long)
    mask[1, example_length // 2 :] = 0  # a padded row, so the mask path is traced too
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"}, output_name: {0: "batch"}}
    # each submodule's own mode, put back after: a wrapper built for the export (ModelOutput) is in training mode
    # by default, and restoring only its flag would switch the wrapped model's dropout on
    modes = {sub: sub.training for sub in module.modules()}
    module.eval()
    needed = sum(p.numel() * p.element_size() for p in module.parameters())
    with torch.no_grad(), named_write_errors(path, needed=needed), warnings.catch_warnings():  # a full disk (or TMPDIR, for --backend onnx): named
        for note in TRACE_NOTES:
            warnings.filterwarnings("ignore", message=note)
        torch.onnx.export(
            module, (ids, mask), path, input_names=ONNX_INPUTS, output_names=[output_name], dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False
        )
    for sub, training in modes.items():
        sub.training = training
    return path


def onnx_session(path: str, threads: int | None = None):
    """An ONNX Runtime CPU session for `path`, with torch's thread count unless given."""
    ort = require_onnx("Running an ONNX model")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its optimiser's notes need no action
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...) share no base class but Exception
        size = os.path.getsize(path) if os.path.isfile(path) else None
        raise ConfigError(
            f"The ONNX file '{path}' cannot be loaded ({'it does not exist' if size is None else f'{size:,} bytes'}; "
            f"{type(err).__name__}: {' '.join(str(err).split())[:200]}): it is cut short (a copy interrupted, a disk that filled while "
            "it was written) or not an ONNX model. Write it again (`emolightning export --format onnx`; for `--backend onnx`, with "
            "free space in the temporary folder, TMPDIR) and run again."
        ) from None


class EncoderOutput:
    """What the model reads from an encoder's output (`last_hidden_state`)."""

    def __init__(self, last_hidden_state: Tensor):
        self.last_hidden_state = last_hidden_state


class OnnxEncoder(nn.Module):
    """Stands in for a Hugging Face encoder: runs its ONNX export in ONNX Runtime, returns fp32 states."""

    def __init__(self, encoder: nn.Module, directory: str):
        super().__init__()
        require_onnx("`--backend onnx`")
        path = export_onnx(ModelOutput(encoder, "last_hidden_state"), os.path.join(directory, "encoder.onnx"), "last_hidden_state")
        self.session = onnx_session(path)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> EncoderOutput:
        feeds = {"input_ids": input_ids.cpu().long().numpy(), "attention_mask": attention_mask.cpu().long().numpy()}
        return EncoderOutput(torch.from_numpy(self.session.run(None, feeds)[0]))


class Bf16Encoder(nn.Module):
    """Runs an encoder with bfloat16 weights and returns its states in fp32, for the fp32 head."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder.to(torch.bfloat16)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> EncoderOutput:
        return EncoderOutput(self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float())


class InferenceBackend(Callback):
    def __init__(self, backend: Backend = "fp32"):
        # `auto` is resolved by the CLI, which also sets the precision these backends need (cli/main.py)
        """Swaps the model's encoder for the chosen predict backend once the checkpoint is loaded (module docstring).

        Args:
            backend: `fp32` (PyTorch in fp32), `torch` (PyTorch at trainer.precision), `onnx` (ONNX Runtime; the `[onnx]` extra) or `bf16`.
        """
        if backend not in BACKENDS or backend == "auto":
            raise ConfigError(f"`--backend {backend}` is not a predict backend: choose one of {', '.join(BACKENDS)}.")
        self.backend = backend
        self._workdir: tempfile.TemporaryDirectory | None = None
        if backend == "onnx":
            require_onnx("`--backend onnx`")  # before any work, not after the data is read

    def on_predict_start(self, trainer, pl_module) -> None:
        if self.backend in FP32_HEAD_BACKENDS and str(trainer.precision) not in ("32-true", "32"):
            raise ConfigError(
                f"`--backend {self.backend}` runs the head in fp32, but this Trainer runs at precision {trainer.precision}. "
                "Give the Trainer `precision='32-true'` (the emolightning command does that itself), or use `--backend torch`."
            )
        if self.backend in ("torch", "fp32"):
            return
        if trainer.strategy.root_device.type != "cpu":
            raise ConfigError(
                f"`--backend {self.backend}` is a CPU path; this predict runs on {trainer.strategy.root_device}. Use `--backend fp32` or `torch` there."
            )
        if self.backend == "onnx":
            self._workdir = tempfile.TemporaryDirectory(prefix="emolightning-onnx-")
            pl_module.encoder = OnnxEncoder(pl_module.encoder, self._workdir.name)
        else:
            pl_module.encoder = Bf16Encoder(pl_module.encoder)
        rank_zero_info(f"predict backend: {self.backend}")

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
