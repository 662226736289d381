"""The package's layout: imports point down the layers or sideways within one, with no cycle.

Every import of a brainfl module counts, at module level or inside a function,
so a cycle cannot hide in a function-level import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "brainfl"
# Lowest first: a module may import its own layer's modules and those of the layers before it.
LAYERS = (
    "core",
    "settings",
    "data",
    "model",
    "inference",
    "evaluation",
    "report",
    "federation",
    "baselines",
    "cli",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def brainfl_imports(path: Path, modules: set[str], own_name: str) -> dict[str, list[int]]:
    """The brainfl modules ``path`` imports, with their lines (``from package import module``: the module)."""
    found: dict[str, list[int]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("brainfl.") and name != own_name:
                found.setdefault(name, []).append(node.lineno)
    return found


def import_graph() -> dict[str, dict[str, list[int]]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    graph = {module_name(path): brainfl_imports(path, modules, module_name(path)) for path in paths}
    # a package's __init__ is a docstring: importing "brainfl.data" means nothing but its modules
    return {
        name: {dep: lines for dep, lines in deps.items() if dep.count(".") > 1 or dep == "brainfl.cli"}
        for name, deps in graph.items()
    }


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def test_every_module_sits_in_a_layer():
    unplaced = [name for name in import_graph() if name.count(".") > 0 and layer(name) < 0]
    assert unplaced == [], f"modules outside the layers {LAYERS}: {unplaced}"


def test_imports_point_down_or_sideways():
    upward = [
        f"{module} ({LAYERS[layer(module)]}) imports {dep} ({LAYERS[layer(dep)]}) at line {lines[0]}"
        for module, deps in import_graph().items()
        for dep, lines in deps.items()
        if layer(dep) > layer(module)
    ]
    assert upward == []


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in graph.get(module, {}):
            if state.get(dep) == "open":
                cycles.append([*path[path.index(dep) :], dep] if dep in path else [module, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_subpackages_open_with_a_docstring():
    packages = [path for path in PACKAGE.rglob("__init__.py")]
    assert len(packages) >= len(LAYERS) - 1
    missing = [str(path) for path in packages if not ast.get_docstring(ast.parse(path.read_text()))]
    assert missing == []


def test_the_checker_sees_function_level_imports(tmp_path):
    """A function-level import counts like a top-level one (the cycle check relies on it)."""
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from brainfl.core import errors\n    import brainfl.data.layouts\n")
    modules = {"brainfl.core", "brainfl.core.errors", "brainfl.data", "brainfl.data.layouts"}
    assert set(brainfl_imports(path, modules, "brainfl.probe")) == {
        "brainfl.core",
        "brainfl.core.errors",
        "brainfl.data.layouts",
    }


def diagram() -> str:
    """The subpackages and the imports between them as a mermaid flowchart (docs/architecture.md)."""
    edges = sorted(
        {
            (module.split(".")[1], dep.split(".")[1])
            for module, deps in import_graph().items()
            for dep in deps
            if module.count(".") and module.split(".")[1] != dep.split(".")[1]
        },
        key=lambda edge: (LAYERS.index(edge[0]), LAYERS.index(edge[1])),
    )
    lines = ["```mermaid", "flowchart BT"]
    lines += [f"  {layer}[{'cli.py' if layer == 'cli' else layer + '/'}]" for layer in LAYERS]
    lines += [f"  {low} --> {high}" for high, low in ((a, b) for a, b in edges)]
    return "\n".join([*lines, "```"])


def test_the_documented_import_diagram_is_current():
    text = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    assert diagram() in text, "regenerate it: python3 tests/test_architecture.py"


if __name__ == "__main__":
    print(diagram())
