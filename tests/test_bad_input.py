"""Bad input tried on purpose: every option of every command with bad values, and crafted bundles. Each answer is
one line and exit code 2, or a bounded run that succeeds; never a traceback, never a hang."""

from __future__ import annotations

import argparse
import importlib
import signal
from pathlib import Path

import pytest
from conftest import run_command, write_images
from pipeline.commands.cli import COMMANDS

# What each value type gets: the out-of-range, the absurd, the unparsable.
BAD = {int: ["-1", "0", "1000000000000", "18446744073709551616", "abc"],
       float: ["-1", "0", "nan", "inf", "1e308", "abc"],
       Path: ["/proc/nonexistent/x", "", "."],
       str: ["", "bogus", "+"]}
SECONDS = 120  # a bad value may cost a bounded run, never more


class Reached(Exception):
    """The command's settings were accepted and its stage was about to run."""


# Stages too long to run for every accepted value: the sweep checks that their settings refuse in one line.
STAGES = {"run": ("pipeline.escalate.run", "run"), "finetune": ("pipeline.finetune.stage", "finetune"),
          "evaluate": ("pipeline.report.grid", "evaluate"), "export": ("pipeline.deploy.export", "export"),
          "advise": ("pipeline.escalate.advise", "advise")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny images, their store and a bundle: what the commands need to get as far as their bad values."""
    root = tmp_path_factory.mktemp("bad_input")
    write_images(root / "data", {"a": 6, "b": 6}, size=32)
    assert run_command("extract", root / "data", "--out", root / "f.h5", "-q").returncode == 0
    assert run_command("fit_svm", root / "f.h5", "--out", root / "run", "--classifier", "softmax", "--folds", "2",
                       "--repeats", "1", "-q").returncode == 0
    return root


def _base(command: str, root: Path, out: Path) -> list:
    bundle = root / "run" / "softmax.skops"
    return {"extract": [root / "data", "--out", out / "x.h5"],
            "fit": [root / "f.h5", "--out", out / "fit", "--folds", "2", "--repeats", "1", "--classifier", "softmax"],
            "predict": [bundle, root / "data" / "a"],
            "suggest": [bundle, root / "data" / "a", "--labelled", root / "f.h5", "--out", out / "s.csv"],
            "advise": [root / "f.h5", "--sample", "4"],
            "export": [bundle, "--format", "onnx", "--out", out / "m.onnx"],
            "run": [root / "data", "--out", out / "r"],
            "finetune": [root / "data", "--out", out / "ft"],
            "evaluate": ["--data", root / "data", "--out", out / "e", "--features", out / "features"]}[command]


def _options(parser: argparse.ArgumentParser):
    """(flag, bad value) for every option that takes a value."""
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or isinstance(action, argparse._HelpAction):
            continue
        flag = max(action.option_strings, key=len)
        kind = action.type if action.type in BAD else str if action.type is None else float  # a parser: a size
        values = BAD.get(kind, BAD[str]) if action.choices is None else ["bogus"]
        for value in values:
            yield flag, [value] * (action.nargs if isinstance(action.nargs, int) else 1)


def _outcome(command: str, argv: list, monkeypatch) -> str:
    def timeout(*_):
        raise TimeoutError

    if command in STAGES:
        module, name = STAGES[command]

        def reached(*args, **kwargs):
            raise Reached

        monkeypatch.setattr(importlib.import_module(module), name, reached)
    signal.signal(signal.SIGALRM, timeout)
    signal.alarm(SECONDS)
    try:
        done = run_command(COMMANDS[command], *argv)
    except Reached:
        return "accepted"
    except TimeoutError:
        return "hang"
    except BaseException as e:  # noqa: BLE001 - what the sweep counts
        return f"traceback {type(e).__name__}: {e}"[:300]
    finally:
        signal.alarm(0)
    lines = done.stderr.strip().splitlines()
    if done.returncode == 2 and lines and "error: " in lines[-1] and "Traceback" not in done.stderr:
        return "refused"
    return "accepted" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr[-300:]}"


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_with_bad_values_is_one_line_or_a_bounded_run(command, world, tmp_path, monkeypatch):
    module = importlib.import_module(f"pipeline.commands.{COMMANDS[command]}")
    parser = module.build_parser(None)
    quiet = ["-q"] if "-q" in parser._option_string_actions else []
    (tmp_path / "base").mkdir()
    assert _outcome(command, [*_base(command, world, tmp_path / "base"), *quiet], monkeypatch) == "accepted"
    outcomes = {}
    for k, (flag, values) in enumerate(_options(parser)):
        out = tmp_path / str(k)
        out.mkdir()
        argv = [*_base(command, world, out), *quiet, flag, *values]
        outcomes[f"{flag} {' '.join(values)!r}"] = _outcome(command, argv, monkeypatch)
    bad = {case: what for case, what in outcomes.items() if what not in ("refused", "accepted")}
    assert not bad, bad
    assert sum(what == "refused" for what in outcomes.values()) > len(outcomes) / 3, outcomes


def _crafted(world: Path, tmp_path: Path, change) -> Path:
    """A copy of the fitted bundle whose metadata ``change`` edits, saved (and checksummed) as fit saves it."""
    from pipeline.linear.bundle import load_bundle, save_bundle

    bundle = load_bundle(world / "run" / "softmax.skops")
    change(bundle)
    return save_bundle(bundle, tmp_path / "crafted" / "softmax.skops")


@pytest.mark.parametrize("change", [
    lambda b: b.store_config.pop("backbone"),
    lambda b: b.store_config["resize"].update(extra=1),
    lambda b: b.store_config["resize"].update(size=-1),
    lambda b: b.store_config["resize"].update(size=60000),
    lambda b: b.store_config["resize"].update(size=8),
    lambda b: setattr(b, "class_names", ["a", "b", "c"]),
    lambda b: setattr(b, "class_names", ["a"]),
    lambda b: b.metrics.update(reject={"threshold": float("nan")}),
    lambda b: setattr(b, "layer", "nope"),
    lambda b: setattr(b, "store_config", None),
], ids=["no backbone", "extra resize key", "negative size", "huge size", "tiny size", "more names", "fewer names",
        "nan threshold", "unknown layer", "no store config"])
def test_a_crafted_bundle_is_one_line(world, tmp_path, change):
    bundle = _crafted(world, tmp_path, change)
    for script, argv in (("predict", (bundle, world / "data" / "a")), ("export", (bundle, "--format", "onnx",
                                                                                 "--out", tmp_path / "m.onnx"))):
        done = run_command(script, *argv, "-q")
        assert done.returncode == 2 and "damaged or was not written by this package" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_run_and_evaluate_name_their_own_epochs_setting(tmp_path):
    """Their fine-tuning defaults come from FinetuneConfig; a bad value is still named as the user gave it."""
    from pipeline.errors import UserError
    from pipeline.escalate.config import RunConfig
    from pipeline.finetune.config import FinetuneConfig
    from pipeline.report.config import EvaluateConfig

    for make in (lambda **kw: RunConfig(data=tmp_path, out=tmp_path / "r", **kw),
                 lambda **kw: EvaluateConfig(data=(tmp_path,), out=tmp_path / "e", **kw)):
        with pytest.raises(UserError) as caught:
            make(epochs=(-1, 5))
        assert caught.value.param == "epochs"
        assert make().epochs == (FinetuneConfig.default("head_epochs"), FinetuneConfig.default("finetune_epochs"))
    assert RunConfig(data=tmp_path, out=tmp_path / "r").tail_epochs == FinetuneConfig.default("tail_epochs")
