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


# The registries own the names of tasks and model kinds; other code asks an entry what it is.
REGISTRIES = ("pipeline/task.py", "pipeline/linear/kinds.py")


def _names() -> set[str]:
    from pipeline.linear.kinds import KINDS
    from pipeline.task import TASKS

    return set(TASKS) | set(KINDS)


def _name_tests(source: str, names: set[str]) -> list[int]:
    """Lines where a literal task or kind name is compared with, looked for among, or keys a table."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Dict):
            operands = [key for key in node.keys if key is not None]
        else:
            continue
        for operand in operands:
            items = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
            if any(isinstance(item, ast.Constant) and item.value in names for item in items):
                found.append(node.lineno)
                break
    return found


def test_no_code_outside_the_registries_tests_a_task_or_kind_by_name():
    names = _names()
    wrong = [f"{path.relative_to(ROOT)}:{line}" for folder in ("pipeline", "scripts")
             for path in sorted((ROOT / folder).rglob("*.py")) if str(path.relative_to(ROOT)) not in REGISTRIES
             for line in _name_tests(path.read_text(), names)]
    assert not wrong


def test_the_name_check_sees_comparisons_memberships_and_tables():
    names = _names()
    assert _name_tests('if task == "regression":\n    pass\n', names) == [1]
    assert _name_tests('ok = kind in ("svm", "softmax")\n', names) == [1]
    assert _name_tests('table = {"svm": "svm-ovr"}\n', names) == [1]
    assert _name_tests('model = get_kind("svm")\nif kind.task.several:\n    pass\n', names) == []
