"""Start-up cost: `--version` answers without importing lightning, and the package itself imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from helpers import REPO

HEAVY = ("lightning", "transformers", "datasets", "wandb", "matplotlib")


def imported_after(statement: str) -> list[str]:
    """The HEAVY modules that `statement` imports, in a fresh interpreter."""
    code = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if sys.modules.get(m) is not None))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_the_package_and_its_entry_point_import_nothing_heavy():
    assert imported_after("import emolightning, emolightning.cli.launch") == []


def test_the_cli_imports_no_tracking_data_or_plotting_library():
    # with matplotlib installed, torchmetrics (under lightning) imports it for its optional plots; hide it
    # as an install without the [report] extra has none, so that any import of ours fails the run
    hide_matplotlib = (
        "import importlib.metadata as md; real = md.version; "
        "md.version = lambda name: (_ for _ in ()).throw(md.PackageNotFoundError(name)) if name == 'matplotlib' else real(name); "
        "sys.modules['matplotlib'] = None"
    )
    assert imported_after(f"{hide_matplotlib}; import emolightning.cli.main") == ["lightning", "transformers"]


def test_a_mistyped_command_is_answered_without_importing_the_cli():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "emolightning", "fitt"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "Did you mean `emolightning fit`?" in done.stderr
    assert " lightning\n" not in done.stderr and "emolightning.cli.main" not in done.stderr  # -X importtime lists every import


def test_a_public_name_is_still_importable_from_the_package():
    done = subprocess.run(
        [sys.executable, "-c", "from emolightning import EmotionDataModule; print(EmotionDataModule.__module__)"], cwd=REPO, capture_output=True, text=True
    )
    assert done.stdout.strip() == "emolightning.data.datamodule", done.stderr


@pytest.mark.slow
def test_version_answers_in_well_under_a_second_of_work():
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "emolightning", "--version"], cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and done.stdout.strip().startswith("emolightning "), done.stderr
    assert elapsed < 3.0, f"`emolightning --version` took {elapsed:.1f} s"  # generous on shared cores; it took 9-10 s with lightning imported first
