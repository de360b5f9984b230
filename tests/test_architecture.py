"""The house: pipeline/ in wings that say what they own, imports pointing one way, small modules."""

from __future__ import annotations

import ast

from conftest import ROOT

# Lowest first: a module may import its own wing and the wings before it, never one after it.
WINGS = ["base", "data", "backbones", "store", "linear", "finetune", "deploy", "escalate", "report", "scaleout"]
MAX_LINES = 400


def _wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in WINGS else "base"


def _imports(source: str, package: str) -> list[tuple[int, str]]:
    """The ``pipeline`` modules a module of ``package`` imports, made absolute."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            else:
                names = [node.module]
            found += [(node.lineno, n) for n in names if n and n.startswith("pipeline")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("pipeline")]
    return found


def test_imports_point_down_the_wings_and_never_at_the_command_line():
    wrong = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        mine = _wing(".".join(path.relative_to(ROOT).with_suffix("").parts))
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        for line, module in _imports(path.read_text(), package):
            if module.startswith("pipeline.commands"):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports the command line ({module})")
            elif module != "pipeline" and WINGS.index(_wing(module)) > WINGS.index(mine):
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({mine}) imports {module} ({_wing(module)})")
    assert not wrong


def test_every_wing_says_what_it_owns_and_imports_nothing():
    for wing in WINGS[1:]:
        init = ROOT / "pipeline" / wing / "__init__.py"
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{wing}/__init__.py has no docstring"
        assert all(isinstance(node, ast.Expr) for node in tree.body), f"{wing}/__init__.py runs code"


def test_modules_stay_small():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "pipeline").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long


def test_the_wing_check_sees_upward_and_sideways_imports():
    """The check itself: a data module importing the fit stage points up; a linear one importing the store
    points down; a wing's own modules are level."""
    ((_, up),) = _imports("from ..linear.fit import fit\n", "pipeline.data")
    ((_, down),) = _imports("from ..store.reader import read_store\n", "pipeline.linear")
    ((_, level),) = _imports("from . import cv\n", "pipeline.linear")
    assert up == "pipeline.linear.fit" and WINGS.index(_wing(up)) > WINGS.index("data")
    assert down == "pipeline.store.reader" and WINGS.index(_wing(down)) < WINGS.index("linear")
    assert level == "pipeline.linear.cv" and _wing(level) == "linear"
