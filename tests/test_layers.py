"""The package layers hold: guard < attacks < certify < experiments, with no upward import
anywhere (module level, inside functions, or as a ``"module:attribute"`` / ``importlib`` string)
and no import cycle among a package's modules at module level."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANK = {"guard": 0, "attacks": 1, "certify": 2, "experiments": 3}


def _modules() -> dict[str, Path]:
    out = {}
    for package in RANK:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _named(node: ast.AST) -> list[str]:
    """Project modules a node imports or names as a dotted string."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        head = node.value.split(":")[0]
        if head.split(".")[0] in RANK and " " not in head and "." in head:
            return [head]
    return []


def _upward(source: str, where: str, package: str) -> list[str]:
    return [f"{where}:{node.lineno}: {package} -> {name}"
            for node in ast.walk(ast.parse(source)) for name in _named(node)
            if name.split(".")[0] in RANK and RANK[name.split(".")[0]] > RANK[package]]


def test_no_upward_imports_or_names():
    found = [hit for name, path in _modules().items()
             for hit in _upward(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), name.split(".")[0])]
    assert found == []


def test_a_planted_upward_import_is_found():
    source = 'def f():\n    from certify.cli import main\n\nSUITE = "experiments.suites:build"\nimport guard.base\n'
    assert _upward(source, "bad.py", "attacks") == ["bad.py:2: attacks -> certify.cli",
                                                    "bad.py:4: attacks -> experiments.suites"]


def _module_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in tree.body:  # module level only: deferred imports cannot form an import-time cycle
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        names = _named(node)
        if isinstance(node, ast.ImportFrom) and names:  # "from package import submodule" imports the submodule
            names = [f"{names[0]}.{a.name}" if f"{names[0]}.{a.name}" in modules else names[0] for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1 and not d.startswith(m + "."):  # a package importing its own submodule is no cycle
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


def test_no_import_cycles_inside_a_package():
    modules = _modules()
    graph = {m: {d for d in _module_level_imports(p, modules) if d.split(".")[0] == m.split(".")[0] and d != m}
             for m, p in modules.items()}
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]  # the detector fires


def _deferred(source: str, where: str) -> list[str]:
    """Imports of project modules inside a function (they hide the dependency graph and its cycles)."""
    hits = []
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            hits += [f"{where}:{node.lineno}: {name}" for node in ast.walk(fn)
                     if isinstance(node, ast.Import | ast.ImportFrom)
                     for name in _named(node) if name.split(".")[0] in RANK]
    return hits


def test_no_project_import_inside_a_function():
    found = [hit for path in _modules().values()
             for hit in _deferred(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert found == []
    assert _deferred("import torch\ndef f():\n    import cvxpy\n    from guard.base import Defense\n", "x.py") == [
        "x.py:4: guard.base"]


def test_no_public_name_shadows_a_submodule():
    """``from certify import suites`` must stay the module: a package export of that name would hide it."""
    for package in RANK:
        exported = set(getattr(importlib.import_module(package), "__all__", ()))
        submodules = {m.name for m in pkgutil.iter_modules([str(ROOT / package)])}
        assert exported & submodules == set(), package
