"""The house rules, enforced: layers one way (no upward import, no cycle), files and functions a person can hold.

Layers, lowest first (README, "Architecture"): ``histo_bench`` < ``ingest`` < ``models`` < ``pipelines`` <
``benchmark`` < the CLI modules (any module named ``cli`` / ``cli_*`` / ``__main__``, or inside a ``cli`` package).
Imports are read with ``ast``, function-local ones included, so a lazy import cannot hide a layer violation.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("histo_bench", "ingest", "models", "pipelines", "benchmark")
CLI_LAYER = len(LAYERS)
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in LAYERS for p in sorted((root / pkg).rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    if any(p in ("cli", "__main__") or p.startswith("cli_") for p in parts[1:]):
        return CLI_LAYER
    return LAYERS.index(parts[0])


def imports(path: Path, module: str, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported project module, line) for every import statement in the file, at any depth."""
    found = []
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            found += [(f"{target}.{a.name}", node.lineno) for a in node.names if f"{target}.{a.name}" in known]
    return [(m, line) for m, line in found if m.split(".")[0] in LAYERS]


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def violations(root: Path = ROOT) -> list[str]:
    """Every upward import (``module:line -> target``) and every import cycle among project modules."""
    known = project_modules(root)
    found, graph = [], {}
    for module, path in known.items():
        graph[module] = set()
        for target, line in imports(path, module, known):
            if layer(target) > layer(module):
                found.append(f"{module}:{line} imports {target}, a higher layer")
            resolved = _resolve(target, known)
            if resolved and resolved != module and not module.startswith(resolved + "."):
                graph[module].add(resolved)
    found += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph)]
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, comps, counter = {}, {}, [], set(), [], 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        comps.append(sorted(comp) + [min(comp)])
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return comps


def test_imports_go_down_the_layers_and_close_no_cycle():
    assert violations() == []


@pytest.mark.parametrize("bad_import, expected", [
    ("from benchmark.harness import time_callable\n", "imports benchmark.harness, a higher layer"),
    ("def f():\n    from pipelines.training import engine\n", "imports pipelines.training, a higher layer"),
    ("import ingest.cli\n", "imports ingest.cli, a higher layer"),
])
def test_the_layer_check_catches_an_upward_import(tmp_path, bad_import, expected):
    """The check itself can fail: a copy of the packages with one upward import (top level or function-local)."""
    import shutil

    for pkg in LAYERS:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "ingest" / "upward.py").write_text(bad_import)
    assert any(expected in v and v.startswith("ingest.upward:") for v in violations(tmp_path))


def test_the_layer_check_catches_a_cycle(tmp_path):
    (tmp_path / "models").mkdir()
    for pkg in LAYERS:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "models" / "a.py").write_text("from models import b\n")
    (tmp_path / "models" / "b.py").write_text("def f():\n    import models.a\n")
    assert violations(tmp_path) == ["import cycle: models.a -> models.b -> models.a"]


def _sources():
    return [p for pkg in (*LAYERS, "tests") for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_no_file_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}


def test_no_function_over_80_lines():
    long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1 - len(node.decorator_list)
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = n
    assert long == {}
