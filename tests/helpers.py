"""What several test modules share: the repository root, the real `emolightning` command and the tiny-run arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
# real DDP on CPU: 2 gloo processes of batch 4 each
DDP = ["--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2", "--data.batch_size", "4"]


def emolightning(*args: str, cwd=REPO, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "emolightning", *args], cwd=cwd, capture_output=True, text=True, env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"emolightning {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def callback_option(name: str, **init_args) -> str:
    """`--trainer.callbacks+=...` adding the test-only callback `name` of tests/fault_injection.py (a subprocess needs `env_with_tests_on_path()` in its env)."""
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"fault_injection.{name}", "init_args": init_args})


def env_with_tests_on_path() -> dict:
    """The environment entry that lets a subprocess import tests/fault_injection.py."""
    return {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def tiny_options(tiny_encoder: str, data_dir: str, root: Path) -> list[str]:
    """The options that point a run at the tiny encoder and the test data, with its cache in root/cache and its runs in root/run."""
    return [
        "--model.init_args.encoder",
        tiny_encoder,
        "--data.data_dir",
        data_dir,
        "--data.cache_dir",
        str(root / "cache"),
        "--trainer.default_root_dir",
        str(root / "run"),
    ]


def tiny_args(tiny_encoder: str, data_dir: str, root: Path, *extra: str) -> list[str]:
    """configs/quickstart.yaml on the tiny encoder and the test data, without progress bar and model summary (in-process or in a subprocess)."""
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    return ["--config", str(REPO / "configs" / "quickstart.yaml"), *tiny_options(tiny_encoder, data_dir, root), *quiet, *extra]


def predict_args(trained_run: dict, root: Path, *extra: str) -> list[str]:
    """`predict` with the model and config of conftest's `trained_run`, its Trainer files in root/root, no progress bar.

    The fp32 model on the torch backend unless `extra` says otherwise: the tests compare with fp32 probabilities, and on a CPU
    with native bf16 the defaults (`precision: auto` recorded in the run's config, `--backend auto`) would run in bf16.
    """
    return [
        "predict",
        "--config",
        str(trained_run["config"]),
        "--ckpt_path",
        str(trained_run["ckpt"]),
        "--trainer.default_root_dir",
        str(root / "root"),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.precision",
        "32-true",
        "--backend",
        "torch",
        *extra,
    ]


def print_config(*configs: str, capsys) -> str:
    """`emolightning fit --config ... --print_config`, in-process (parsing only, nothing loaded)."""
    from emolightning.cli.main import run_cli

    args = ["fit"] + [x for c in configs for x in ("--config", str(REPO / c))] + ["--print_config"]
    with pytest.raises(SystemExit) as done:
        run_cli(args)
    assert done.value.code in (0, None)
    return capsys.readouterr().out


def save_classifier(model, path: Path, data_hparams: dict | None = None) -> str:
    """An EmotionClassifier saved as an emolightning checkpoint without training (what load_from_checkpoint and export read)."""
    import lightning as L
    import torch

    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "pytorch-lightning_version": L.__version__}
    if data_hparams is not None:
        ckpt["datamodule_hyper_parameters"] = data_hparams
    torch.save(ckpt, path)
    return str(path)


def reordered_tokenizer(tiny_encoder: str, out: Path) -> str:
    """A copy of the tiny encoder whose WordPiece vocabulary lists the same words in reverse order: other token ids for every text."""
    import shutil

    from transformers import BertTokenizerFast

    words = Path(tiny_encoder, "vocab.txt").read_text().split()
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(words[:5] + words[5:][::-1]) + "\n")
    # `vocab=`: transformers 5 ignores `vocab_file=` and would map every word to [UNK]
    BertTokenizerFast(vocab=str(out / "vocab.txt"), do_lower_case=True).save_pretrained(out)
    for file in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny_encoder, file), out)
    return str(out)


def run_if(min_gpus: int = 0, min_cuda_capability: tuple[int, int] | None = None, bf16: bool = False):
    """Lightning's RunIf for this suite: the test is marked `gpu` (benchmarks/gpu_check.sh runs `pytest -m gpu`) and skipped,
    with the reason, unless the machine has `min_gpus` CUDA GPUs, the first of compute capability `min_cuda_capability` or
    newer and, with `bf16`, native bf16. Tests that monkeypatch torch.cuda to play a GPU on the CPU need none of this."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = []
    if gpus < min_gpus:
        missing.append(f"needs {min_gpus} CUDA GPU{'s' if min_gpus > 1 else ''}, found {gpus}")
    elif gpus and min_cuda_capability is not None and torch.cuda.get_device_capability(0) < tuple(min_cuda_capability):
        missing.append(
            f"needs compute capability {'.'.join(map(str, min_cuda_capability))}, the GPU has {'.'.join(map(str, torch.cuda.get_device_capability(0)))}"
        )
    if bf16 and not (gpus and torch.cuda.is_bf16_supported(including_emulation=False)):
        missing.append("needs a GPU with native bf16")

    def mark(test):
        return pytest.mark.gpu(pytest.mark.skipif(bool(missing), reason="; ".join(missing))(test))

    return mark
