"""compat.py: the few private framework names emolightning uses exist in the installed versions, and no other module uses any.

An upgrade that renames one fails here, naming it, instead of breaking a run (the best checkpoints'
contents, `predict --output`, `--ckpt_path ENSEMBLE.json`) somewhere later. And a private name used
outside compat.py (`self._trainer` of a LightningModule, `torch._dynamo`, `from lightning... import _x`)
fails here too, naming the file and line: it would escape both this check and the version bounds.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from emolightning import compat

PACKAGE = Path(compat.__file__).parent
# names with a leading underscore that are public API: namedtuple's methods
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


def owners() -> dict:
    """Each `where` of compat.PRIVATE_NAMES -> an object that should have the name (a dotted `where` not listed is a module)."""
    return {"LightningCLI": LightningCLI, "ModelCheckpoint": ModelCheckpoint}


def owner(where: str):
    return owners()[where] if where in owners() else importlib.import_module(where)


def missing() -> list[str]:
    gone = []
    for where, name in compat.PRIVATE_NAMES:
        try:
            found = hasattr(owner(where), name)
        except ImportError:
            found = False
        if not found:
            gone.append(f"{where}.{name}")
    return gone


def test_every_private_name_still_exists():
    gone = missing()
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("lightning", "jsonargparse", "torch"))
    assert not gone, (
        f"With {versions}, these private names that emolightning/compat.py uses are gone: {gone}. "
        "Find what replaced them in that release and update compat.py (or pin the older version in pyproject.toml)."
    )


def test_a_removed_name_is_reported_by_name(monkeypatch):
    monkeypatch.delattr(ModelCheckpoint, "_save_checkpoint")
    assert missing() == ["ModelCheckpoint._save_checkpoint"]


def test_a_justified_handful():
    assert len(compat.PRIVATE_NAMES) <= 6, f"compat.py lists {len(compat.PRIVATE_NAMES)} private names: find a public way for some"


# ---- the scan: which private names a module uses ------------------------------------------------
def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORE


@functools.cache
def trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.rglob("*.py"))}


def class_names(all_trees) -> dict[str, tuple[set, set]]:
    """Each class of the package -> (the private names its own code defines: methods, class attributes, `self._x = ...`; its bases' names)."""
    classes: dict[str, tuple[set, set]] = {}
    for tree in all_trees.values():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            names, bases = classes.setdefault(node.name, (set(), set()))
            bases.update(b.id if isinstance(b, ast.Name) else b.attr for b in node.bases if isinstance(b, (ast.Name, ast.Attribute)))
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(sub.name)
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target] if isinstance(sub, (ast.AnnAssign, ast.AugAssign)) else []
                for target in targets:
                    for item in target.elts if isinstance(target, ast.Tuple) else [target]:
                        if isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) and item.value.id in ("self", "cls"):
                            names.add(item.attr)
                        elif isinstance(item, ast.Name):
                            names.add(item.id)
    return classes


def own_names(classes: dict, name: str | None, seen: tuple = ()) -> set:
    """The private names that class `name` or its bases in this package define (not those a framework base class defines)."""
    if name not in classes or name in seen:
        return set()
    names, bases = classes[name]
    return names.union(*(own_names(classes, base, (*seen, name)) for base in bases))


def private_uses(tree: ast.Module, classes: dict) -> list[tuple[int, str, str]]:
    """(line, private name, code) for each private name of another package (or object) that `tree` uses."""
    found = []

    def visit(node, cls):
        if isinstance(node, ast.ClassDef):
            cls = node.name
        if isinstance(node, ast.ImportFrom) and node.level == 0 and not (node.module or "").startswith("emolightning"):
            parts = [p for p in node.module.split(".") if is_private(p)] + [a.name for a in node.names if is_private(a.name)]
            found.extend((node.lineno, part, ast.unparse(node)) for part in parts)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, part, ast.unparse(node)) for a in node.names for part in a.name.split(".") if is_private(part))
        elif isinstance(node, ast.Attribute) and is_private(node.attr):
            # self._x / cls._x: ours when this class (or one of its bases in the package) defines _x; LightningModule's self._trainer is not
            ours = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls") and node.attr in own_names(classes, cls)
            if not ours:
                found.append((node.lineno, node.attr, ast.unparse(node)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr", "setattr", "delattr"):
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and is_private(name.value):
                found.append((node.lineno, name.value, ast.unparse(node)))
        for child in ast.iter_child_nodes(node):
            visit(child, cls)

    visit(tree, None)
    return found


MODULES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "compat.py")


@pytest.mark.parametrize("path", MODULES)
def test_no_module_but_compat_uses_a_private_name_of_another_package(path):
    all_trees = trees()
    tree = all_trees[PACKAGE / path]
    used = [f"line {line}: {code}" for line, _, code in private_uses(tree, class_names(all_trees))]
    listed = {name for _, name in compat.PRIVATE_NAMES}
    used += [f"line {node.lineno}: def {node.name}" for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name in listed]
    assert not used, (
        f"emolightning/{path} uses private names of other packages (or objects): {used}. Use a public API, pass the module what it "
        "needs, or, where no public API does it, go through compat.py (listed in PRIVATE_NAMES, with the reason)."
    )


def test_compat_uses_only_the_names_it_lists():
    all_trees = trees()
    listed = {part for where, name in compat.PRIVATE_NAMES for part in (name, *where.replace("()", "").split("."))}
    unlisted = sorted(
        {f"line {line}: {code}" for line, name, code in private_uses(all_trees[PACKAGE / "compat.py"], class_names(all_trees)) if name not in listed}
    )
    assert not unlisted, f"emolightning/compat.py uses private names that PRIVATE_NAMES does not list (so no test checks them): {unlisted}"


def test_the_scan_finds_what_it_must():
    code = """
import torch._dynamo
from lightning.pytorch.utilities._pytree import tree_flatten
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
class Model(LightningModule):
    _mine = 1
    def __init__(self):
        self._cache = {}
    def step(self, other):
        return self._trainer, self._cache, self._mine, other._cache, getattr(self, "_trainer"), torch._dynamo.config, point._replace(x=1)
"""
    found = sorted({name for _, name, _ in private_uses(ast.parse(code), class_names({Path("m.py"): ast.parse(code)}))})
    assert found == ["_cache", "_dynamo", "_is_local_file_protocol", "_pytree", "_trainer"]
