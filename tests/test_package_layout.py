"""Rules of the package's layout, read from its source: inference modes and switches are
explicit APIs (no test double patches the package from inside), and no package exports a name
that hides one of its own modules."""

import ast
from pathlib import Path
from typing import Iterator, List

import pytest
from helpers import REPO_ROOT

PACKAGE_DIR = REPO_ROOT / "projects" / "GroupPose" / "grouppose"
MOCK_MODULES = ("mock", "unittest.mock")


def package_sources() -> List[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def imported_modules(tree: ast.AST) -> Iterator[str]:
    """Every module an ``import`` names, ``from unittest import mock`` as "unittest.mock"."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_package_imports_no_mock():
    offenders = [
        str(path.relative_to(PACKAGE_DIR)) for path in package_sources()
        if any(name in MOCK_MODULES
               for name in imported_modules(ast.parse(path.read_text(), str(path))))
    ]
    assert offenders == [], f"the package imports unittest.mock: {offenders}"


def exported_names(init_file: Path) -> List[str]:
    """The literal ``__all__`` of a package's ``__init__.py`` (empty without one)."""
    for node in ast.parse(init_file.read_text(), str(init_file)).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return []


@pytest.mark.parametrize(
    "init_file", sorted(PACKAGE_DIR.rglob("__init__.py")),
    ids=lambda path: str(path.parent.relative_to(PACKAGE_DIR.parent)),
)
def test_no_exported_name_hides_a_module(init_file):
    """``from .x import x`` makes ``package.x`` the function and the module unreachable by
    attribute (grouppose.layers.ms_deform_attn once was both)."""
    package = init_file.parent
    modules = {path.stem for path in package.glob("*.py")} | {
        path.parent.name for path in package.glob("*/__init__.py")
    }
    assert sorted(modules & set(exported_names(init_file))) == []


def test_layers_ms_deform_attn_is_the_op_function():
    import grouppose.layers
    import grouppose.layers.ms_deform_attn_op as op_module

    assert grouppose.layers.ms_deform_attn is op_module.ms_deform_attn
