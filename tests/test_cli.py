"""The command line and the library stay apart: one parser per command, its defaults the settings' own, flags
only in messages the command line makes, no global state set by the library."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, blobs, write_images, write_store

CNN_CODES = shutil.which("cnn-codes", path=str(ROOT / ".venv" / "bin")) or shutil.which("cnn-codes")
FLAG = re.compile(r"(^|[\s(\"'`])--[a-z]")
SCRIPT = re.compile(r"\b[a-z_]+\.py\b")


def _library():
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        yield path, ast.parse(path.read_text())


def _docstrings(tree) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_library_messages_name_no_flags_or_scripts():
    """No string the library shows (errors, logs, printed summaries, reports) names a --flag or a script; the
    command line adds the flag to an error from the setting it names. Docstrings may point to the scripts."""
    offenders = []
    for path, tree in _library():
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                if "pip install" not in node.value and (FLAG.search(node.value) or SCRIPT.search(node.value)):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    for template in (ROOT / "pipeline" / "report" / "templates").glob("*.j2"):  # what reports say
        for number, line in enumerate(template.read_text().splitlines(), start=1):
            if re.search(r"(^|[\s(])--[a-z]", line) or SCRIPT.search(line):
                offenders.append(f"{template.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders


FORBIDDEN_CALLS = {"set_random_seed", "putenv", "set_seed"}  # the process's seeds and environment are the caller's


def test_the_library_sets_no_global_state():
    """No seed, environment variable or process-wide random state is set anywhere in pipeline/ (the entry points
    in scripts/ set them)."""
    offenders = []
    for path, tree in _library():
        for node in ast.walk(tree):
            target = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = ast.unparse(node.func.value)
                if node.func.attr in FORBIDDEN_CALLS or (node.func.attr == "seed" and owner in ("np.random", "random")):
                    target = ast.unparse(node.func)
                elif owner == "os.environ" and node.func.attr in ("setdefault", "update", "pop", "__setitem__"):
                    target = ast.unparse(node.func)
            elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                for t in getattr(node, "targets", [getattr(node, "target", None)]):
                    if isinstance(t, ast.Subscript) and ast.unparse(t.value) == "os.environ":
                        target = ast.unparse(t)
            if target:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {target}")
    assert not offenders


def test_importing_the_library_changes_no_global_state():
    code = """
import os, pkgutil, importlib, warnings, matplotlib, keras, pipeline
state = lambda: (list(warnings.filters), matplotlib.get_backend(), keras.config.dtype_policy().name, dict(os.environ))
before = state()
for m in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
    if not m.name.startswith("pipeline.scaleout"):  # Ray's own import sets its variables
        importlib.import_module(m.name)
from pipeline.backbones.loading import load_backbone
load_backbone("efficientnet_lite0", precision="mixed_bfloat16")
assert before == state(), [a for a, b in zip(before, state()) if a != b]
print("unchanged")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "unchanged" in done.stdout, done.stderr[-2000:]


def _settings_of():
    from pipeline.deploy.config import ExportConfig, PredictConfig
    from pipeline.escalate.config import AdviseConfig, RunConfig
    from pipeline.finetune.config import FinetuneConfig
    from pipeline.linear.config import FitConfig
    from pipeline.report.config import EvaluateConfig
    from pipeline.store.config import ExtractConfig

    return {"extract": ExtractConfig, "fit_svm": FitConfig, "predict": PredictConfig, "advise": AdviseConfig,
            "finetune": FinetuneConfig, "run": RunConfig, "evaluate": EvaluateConfig, "export": ExportConfig}


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def test_parsers_take_their_defaults_and_choices_from_the_settings():
    """Every option that sets a field of its command's settings has that field's default and offers its
    choices."""
    checked = 0
    for name, cls in _settings_of().items():
        fields = {f.name for f in dataclasses.fields(cls)}
        for action in importlib.import_module(f"pipeline.commands.{name}").build_parser("x")._actions:
            if action.dest not in fields:
                continue
            default = cls.default(action.dest)
            if default is dataclasses.MISSING:  # required: a positional, or a default the command computes
                continue
            assert _as_list(action.default) == _as_list(default), (name, action.dest, action.default, default)
            if cls.choices(action.dest) and action.choices is not None:
                assert set(cls.choices(action.dest)) <= set(action.choices), (name, action.dest)
            checked += 1
    assert checked >= 70, checked


def test_help_imports_no_tensorflow():
    """Building every command's parser (what --help does) imports no Keras or TensorFlow: help is instant."""
    code = ("import importlib, sys\n"
            f"for name in {tuple(_settings_of())!r}:\n"
            "    importlib.import_module(f'pipeline.commands.{name}').build_parser('x')\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'sklearn', 'h5py') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.skipif(CNN_CODES is None, reason="cnn-codes is installed by `pip install -e .` (make test does)")
def test_cnn_codes_shares_the_scripts_parsers_and_errors(tmp_path):
    listing = subprocess.run([CNN_CODES, "--help"], capture_output=True, text=True)
    assert listing.returncode == 0
    assert all(name in listing.stdout for name in ("extract", "fit", "predict", "advise", "finetune", "run",
                                                   "evaluate"))
    helped = subprocess.run([CNN_CODES, "fit", "--help"], capture_output=True, text=True)
    script = subprocess.run([sys.executable, str(ROOT / "scripts" / "fit_svm.py"), "--help"], capture_output=True,
                            text=True)

    def words(text, prog):  # the same options, help and examples; only the wrapping follows the name's length
        return text.replace(prog, "PROG").split()

    assert words(helped.stdout, "cnn-codes fit") == words(script.stdout, f"python {ROOT / 'scripts' / 'fit_svm.py'}")
    X, _, y = blobs((10, 10))
    write_store(tmp_path / "f.h5", {"x": X}, y, ["a", "b"])
    for command in ([CNN_CODES, "fit"], [sys.executable, str(ROOT / "scripts" / "fit_svm.py")]):
        done = subprocess.run([*command, str(tmp_path / "f.h5"), "--out", str(tmp_path / "run"), "--test-size",
                               "1.5"], capture_output=True, text=True)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1] == "error: --test-size: must be between 0 and 1, not 1.5"


@pytest.mark.slow
def test_commands_print_no_tensorflow_start_up_lines(tmp_path):
    """absl writes TensorFlow's start-up lines (oneDNN, CUDA drivers) to stderr whatever its log level; the
    entry point catches them and logs them at debug level."""
    write_images(tmp_path / "data", {"a": 2, "b": 2}, size=32)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "extract.py"), str(tmp_path / "data"), "--layers",
                           "stage3", "--out", str(tmp_path / "f.h5"), "--verbose"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "extracted" in done.stdout
    noise = re.compile(r"^[IWE]\d{4} |^WARNING: All log messages before absl")
    assert not [line for line in done.stderr.splitlines() if noise.search(line)], done.stderr
    assert "TensorFlow: " in done.stderr, "caught, and logged at debug level"


def test_a_warning_is_one_logged_line(caplog):
    import argparse
    import warnings

    from pipeline.commands import cli
    from sklearn.exceptions import ConvergenceWarning

    def main(args):
        warnings.warn("the solver stopped at max_iter", ConvergenceWarning, stacklevel=1)

    with pytest.raises(SystemExit) as e:
        cli.run(lambda prog: argparse.ArgumentParser(prog=prog), main, argv=[])
    assert e.value.code == 0
    assert [r.getMessage() for r in caplog.records] == ["warning: the solver stopped at max_iter (ConvergenceWarning)"]
