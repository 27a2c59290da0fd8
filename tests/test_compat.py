"""compat.py: every private Lightning/jsonargparse name it uses exists in the installed versions.

An upgrade that renames one fails here, naming it, instead of breaking a run (resume, "did you mean",
`predict --output`) somewhere later.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
from pathlib import Path

import jsonargparse
import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.combined_loader import CombinedLoader

from emolightning import compat

PACKAGE = Path(compat.__file__).parent


def owners() -> dict:
    """Each `where` of compat.PRIVATE_NAMES -> an object that should have the name."""
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with_subcommands = jsonargparse.ArgumentParser()
    with_subcommands.add_subcommands()
    return {
        "lightning.fabric.utilities.cloud_io": importlib.import_module("lightning.fabric.utilities.cloud_io"),
        "LightningCLI": LightningCLI,
        "ModelCheckpoint": ModelCheckpoint,
        "ModelCheckpoint()": ModelCheckpoint(),
        "Trainer().fit_loop": trainer.fit_loop,
        "CombinedLoader": CombinedLoader,
        "ArgumentParser() with subcommands": with_subcommands,
        "ArgumentParser()._subcommands_action": with_subcommands._subcommands_action,
        "ArgumentParser()": jsonargparse.ArgumentParser(),
        "ModelSummary()": ModelSummary(),
        "torch._dynamo.config": importlib.import_module("torch._dynamo.config"),
    }


def missing(objects: dict) -> list[str]:
    return [f"{where}.{name}" for where, name in compat.PRIVATE_NAMES if not hasattr(objects[where], name)]


def test_every_private_name_still_exists():
    gone = missing(owners())
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("lightning", "jsonargparse"))
    assert not gone, (
        f"With {versions}, these private names that emolightning/compat.py uses are gone: {gone}. "
        "Find what replaced them in that release and update compat.py (or pin the older version in pyproject.toml)."
    )


def test_a_removed_name_is_reported_by_name(monkeypatch):
    monkeypatch.delattr(ModelCheckpoint, "_monitor_candidates")
    assert missing(owners()) == ["ModelCheckpoint._monitor_candidates"]


@pytest.mark.parametrize("path", sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "compat.py"))
def test_no_module_but_compat_uses_a_private_name_of_lightning_or_jsonargparse(path):
    tree = ast.parse((PACKAGE / path).read_text())
    private = [
        f"line {node.lineno}: {alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("lightning", "jsonargparse")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    names = {name for _, name in compat.PRIVATE_NAMES}
    private += [f"line {node.lineno}: .{node.attr}" for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr in names]
    private += [f"line {node.lineno}: def {node.name}" for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name in names]
    assert not private, f"emolightning/{path} uses private Lightning/jsonargparse names; go through compat.py: {private}"
