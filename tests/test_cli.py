"""The command line and the library stay apart: one parser per command, flags only in messages the CLI makes."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, blobs, write_store

CNN_CODES = shutil.which("cnn-codes", path=str(ROOT / ".venv" / "bin")) or shutil.which("cnn-codes")


def test_library_errors_name_no_flags_or_scripts():
    """Every UserError raised in pipeline/ is free of --flags and script names; the CLI adds the flag."""
    offenders = []
    for path in (ROOT / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "UserError":
                text = "".join(str(c.value) for c in ast.walk(node) if isinstance(c, ast.Constant)
                               and isinstance(c.value, str))
                if "pip install" not in text and (" --" in f" {text}" or ".py" in text):  # pip's flags may stay
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders


def test_importing_the_library_changes_no_global_state():
    code = """
import warnings, matplotlib, keras
before = (list(warnings.filters), matplotlib.get_backend(), keras.config.dtype_policy().name)
import pipeline.extract, pipeline.fit, pipeline.finetune, pipeline.evaluate, pipeline.report.render, pipeline.advise
from pipeline.backbones.loading import load_backbone
load_backbone("efficientnet_lite0", precision="mixed_bfloat16")
after = (list(warnings.filters), matplotlib.get_backend(), keras.config.dtype_policy().name)
assert before == after, (before, after)
print("unchanged")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "unchanged" in done.stdout, done.stderr[-2000:]


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
