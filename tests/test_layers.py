"""The package layout is the data flow: every import (function-level ones too) points down the
pipeline, no module imports itself back through others, and each room imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search_spaces", "distill", "nas", "latency_tables", "experiments")
# lowest first: a module may import its own layer and the ones before it, never a later one
LAYERS = (
    ("latency_tables", "experiments", "nas.__init__", "distill.__init__", "search_spaces.__init__",
     "search_spaces.common"),
    ("search_spaces.space",),
    ("search_spaces.tracing",),
    ("search_spaces.modules",),
    ("search_spaces.students",),
    ("distill.data",),
    ("nas.latency",),
    ("nas.search",),
    ("distill.teachers",),
    ("distill.training",),
    ("nas.evaluation",),
    ("nas.deploy",),
    ("nas.cli",),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `path` imports anywhere in its body (`from a import b` counts a.b when b is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def _layer(module: str, is_package: bool) -> int:
    key = f"{module}.__init__" if is_package else module
    for i, prefixes in enumerate(LAYERS):
        if any(key == p or key.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} belongs to no layer: add its room to LAYERS")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _is_package(module: str) -> bool:
    return _modules()[module].name == "__init__.py"


def test_every_import_points_down_the_pipeline():
    upward = []
    for module, imports in _graph().items():
        own = _layer(module, _is_package(module))
        upward += [f"{module} -> {target}" for target in sorted(imports) if _layer(target, _is_package(target)) > own]
    assert not upward, "imports against the data flow:\n" + "\n".join(upward)


def test_no_import_cycles():
    try:
        TopologicalSorter(_graph()).static_order()
        order = list(TopologicalSorter(_graph()).static_order())
    except CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")
    assert len(order) == len(_modules())


def test_each_module_imports_in_a_fresh_interpreter_in_dependency_order():
    order = list(TopologicalSorter(_graph()).static_order())
    script = f"import importlib\nfor name in {order!r}:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


def test_space_layer_needs_no_torch():
    script = ("import sys, search_spaces.space as s; s.ArchConfig.sample(0, 'tracenet_tiny'); "
              "s.genome_space('tracenet_tiny'); assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
