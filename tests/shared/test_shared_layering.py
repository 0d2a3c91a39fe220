"""The package layering holds: each top-level package imports only the ones below it.

shared/ is the contract both sides build on, so it imports none of them;
hal_drivers/ sits on shared/ alone; the robot (edge_agent/) and the learner
(cloud/) never import each other, so either can be installed and changed
without the other. Checked on the source (every import statement, also those
inside functions, and literal ``import_module``/``__import__`` calls), so an
import that only runs on some path is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "shared": {"cloud", "edge_agent", "hal_drivers", "bench", "harness", "tests"},
    "hal_drivers": {"cloud", "edge_agent", "bench", "harness", "tests"},
    "edge_agent": {"cloud", "bench", "harness", "tests"},
    "cloud": {"edge_agent", "bench", "harness", "tests"},
}


def imported_packages(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``tree``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module" or getattr(node.func, "id", None)
                   in ("import_module", "__import__"))):
            found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for line, top in imported_packages(tree):
            if top in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_it_sits_on(package):
    assert (ROOT / package / "__init__.py").exists()
    assert violations(package) == []


def test_the_checker_sees_every_kind_of_import():
    src = (
        "import edge_agent.policy_holder\n"
        "def f():\n    from cloud.app import make_app\n"
        "from . import sibling\n"
        "import importlib\nimportlib.import_module('hal_drivers.sim')\n"
        "__import__('bench')\n"
    )
    tops = [top for _, top in sorted(imported_packages(ast.parse(src)))]
    assert tops == ["edge_agent", "cloud", "importlib", "hal_drivers", "bench"]
