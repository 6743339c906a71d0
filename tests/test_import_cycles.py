"""The grouppose package has no import cycle, and grouppose.config is a leaf: nothing it imports,
directly or not, is in grouppose.modeling (the model reads the config, not the other way round).

The import graph is read from the source (ast): one node per module of the package (a package
is its ``__init__``), one edge per import of another of its modules at module level, also under
``if`` / ``try`` and in class bodies, and including ``if TYPE_CHECKING:`` blocks (a type-only
import still ties the two modules together). Importing ``a.b.c`` runs the ``__init__`` of
package ``a.b`` too, so the edge goes to those packages as well, except the importer's own
(they are loading already). Imports inside functions are left out: they run when the function
is called, once every module has loaded, and the package uses them only to load optional
dependencies lazily (onnx, Gradio, the compiled op).
"""

import ast
import importlib
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest
from helpers import REPO_ROOT

PACKAGE_ROOT = REPO_ROOT / "projects" / "GroupPose"
PACKAGE = "grouppose"
# The third-party packages of setup.py's optional extras (deploy, track, app): a module that
# needs one imports where the extra is installed (e.g. the upstream-Detectron2 environment
# has no Gradio), and is skipped elsewhere.
OPTIONAL_PACKAGES = {"onnx", "onnxruntime", "onnxscript", "norfair", "filterpy", "motmetrics",
                     "gradio"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: Dict[str, Path] = {
    module_name(path): path for path in sorted((PACKAGE_ROOT / PACKAGE).rglob("*.py"))
}


def module_level_imports(tree: ast.AST) -> Iterator[ast.stmt]:
    """The import statements of ``tree`` outside function bodies."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from module_level_imports(node)


def imported_modules(name: str, path: Path) -> Set[str]:
    """The package's modules that module ``name`` (at ``path``) imports."""
    found = set()
    for node in module_level_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:  # relative: from the module's package, level - 1 packages up
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        found.add(base)
        # `from package import submodule` imports the submodule too.
        found.update(f"{base}.{alias.name}" for alias in node.names)
    found |= {package for module in found for package in packages(module)}
    return {module for module in found
            if module in MODULES and module != name and module not in packages(name)}


def packages(module: str) -> List[str]:
    """The packages ``module`` is in: "a.b.c" -> ["a", "a.b"]."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


GRAPH: Dict[str, Set[str]] = {name: imported_modules(name, path) for name, path in MODULES.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle of ``graph`` as [a, b, ..., a], or [] if it has none."""
    done: Set[str] = set()
    path: List[str] = []

    def visit(module: str) -> List[str]:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return []
        path.append(module)
        for imported in sorted(graph[module]):
            cycle = visit(imported)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return []

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return []


def test_the_graph_sees_the_known_imports():
    assert "grouppose.modeling.levels" in GRAPH["grouppose.modeling.blocks"]
    # Importing grouppose.modeling.oks runs grouppose.modeling's __init__ first.
    assert "grouppose.modeling" in GRAPH["grouppose.evaluation.build"]
    # A relative import, and `from package import submodule`.
    assert "grouppose.modeling.backbone.swin" in GRAPH["grouppose.modeling.backbone"]
    assert "grouppose.config" in GRAPH["grouppose"]


def test_find_cycle_names_the_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    graph["c"] = {"d"}
    assert find_cycle(graph) == []


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def dependencies(module: str) -> Set[str]:
    """Every module of the package that importing ``module`` imports, directly or not."""
    seen, pending = set(), [module]
    while pending:
        for imported in GRAPH[pending.pop()] - seen:
            seen.add(imported)
            pending.append(imported)
    return seen


def test_config_imports_nothing_from_modeling():
    imported = sorted(dependencies("grouppose.config"))
    modeling = [m for m in imported if m.startswith("grouppose.modeling")]
    assert not modeling, f"grouppose.config imports {modeling}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in OPTIONAL_PACKAGES:
            raise
        pytest.skip(f"{module} needs the optional {e.name}, which is not installed")
