"""What romosaic imports is what pyproject.toml declares."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_normalize(Requirement(r).name) for r in project["dependencies"]}
    extras = {_normalize(Requirement(r).name)
              for group in project["optional-dependencies"].values() for r in group}
    return core, extras


def _imports(path):
    """Top-level module names imported by a file, each with whether it is optional.

    An import inside a function or a ``try`` block is optional: it runs only
    when that code does, or its failure is handled.
    """
    found = []

    def visit(node, optional):
        for child in ast.iter_child_nodes(node):
            child_optional = optional or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Try)
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], optional) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], optional))
            visit(child, child_optional)

    visit(ast.parse(path.read_text()), False)
    return found


def _third_party_imports():
    """Module name → list of (file, optional) for each import outside the standard library."""
    by_module = {}
    for path in sorted((ROOT / "romosaic").rglob("*.py")):
        for module, optional in _imports(path):
            if module in sys.stdlib_module_names or module == "romosaic":
                continue
            by_module.setdefault(module, []).append((path.relative_to(ROOT).as_posix(), optional))
    return by_module


def test_every_import_is_declared():
    core, extras = _declared()
    distributions = packages_distributions()
    missing, not_core = [], []
    for module, uses in _third_party_imports().items():
        if module == "psutil":
            continue  # a fallback behind try/except where /proc is missing; never required
        names = {_normalize(d) for d in distributions.get(module, [module])}
        if not names & (core | extras):
            missing.append(f"{module} ({', '.join(sorted({f for f, _ in uses}))})")
        elif not all(optional for _, optional in uses) and not names & core:
            not_core.append(module)
    assert not missing, f"imported but not declared: {missing}"
    assert not not_core, f"imported unconditionally but only an optional extra: {not_core}"


def test_scikit_image_is_core_and_imported_only_to_deblend():
    # deblend is on by default, so its watershed must be installed; it is
    # imported only when a catalog is made (startup of strun stays fast).
    core, _ = _declared()
    assert "scikit-image" in core
    assert _third_party_imports()["skimage"] == [("romosaic/catalog/detection.py", True)]


@pytest.mark.parametrize("name", ["configobj", "pandas", "pyarrow"])
def test_named_dependencies_are_core(name):
    core, _ = _declared()
    assert name in core
