"""The package's layers: each module imports only from its own layer or the ones below, and no import cycle.

core (errors, files, compat, hardware, metrics) < pretrained < data < models < training, inference, reporting < cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import emolightning

PACKAGE = Path(emolightning.__file__).parent
LAYERS = {"pretrained": 1, "data": 2, "models": 3, "training": 4, "inference": 4, "reporting": 4, "cli": 5}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    if module == "emolightning.__main__":  # `python -m emolightning`: the entry point, above everything
        return max(LAYERS.values()) + 1
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def imports() -> dict[str, set[str]]:
    """Module -> the emolightning modules it imports (module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
                # `from . import x` names a module x when there is one
                names = [f"{module}.{a.name}" for a in node.names if (PACKAGE.parent / f"{module}.{a.name}".replace(".", "/")).with_suffix(".py").exists()]
                targets.update(names or [module])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "emolightning":
                targets.add(node.module)
        targets.discard("emolightning")  # the package root only holds __version__ and lazy names
    return graph


def test_each_module_imports_only_its_own_layer_or_lower():
    upward = [f"{m} -> {t}" for m, targets in imports().items() for t in targets if layer(t) > layer(m)]
    assert not upward, f"imports from a higher layer: {sorted(upward)}"


def cycles_of(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle a depth-first walk of `graph` meets, each as the modules around it."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target in graph and not state.get(target):
                visit(target, path + [target])
        state[node] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module, [module])
    return cycles


def test_no_import_cycle():
    assert not cycles_of(imports()), f"import cycles: {cycles_of(imports())}"


def test_the_checks_see_an_upward_import_and_a_cycle():
    assert layer("emolightning.data.datamodule") < layer("emolightning.models.classifier") < layer("emolightning.cli.main")
    graph = imports()
    assert "emolightning.models.classifier" in graph["emolightning.cli.main"]  # relative imports are followed
    assert "emolightning.reporting.report" in graph["emolightning.cli.main"]  # so are imports inside functions
    assert cycles_of({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles_of({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
