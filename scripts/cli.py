"""The command-line layer: what every command shares, and the ``cnn-codes`` command.

Each command is a module of ``scripts/`` (installed as ``pipeline.commands``)
with ``build_parser(prog)`` and ``main(args)``; ``python scripts/NAME.py`` and
``cnn-codes NAME`` parse with the same parser, whose defaults and choices are
the stage settings' own (:mod:`pipeline.settings`). Commands import a stage's
code inside ``main``, so that ``--help`` imports no TensorFlow. Process-wide
settings (logging, warning filters, TensorFlow's log level, Ray's
authentication) are made here, by the entry points; the library
(``pipeline/``) never imports the commands. ``--seed`` needs no global seed:
every split, shuffle, draw and initialisation takes it explicitly.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

# Before TensorFlow is first imported (the commands import the library after this): no C++ start-up chatter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class _QuietTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """TensorFlow's first import, and its first look for a GPU, with the C++ side's stderr caught: absl prints
    its start-up lines (oneDNN, CUDA drivers) whatever ``TF_CPP_MIN_LOG_LEVEL`` says. They are logged at debug
    level (``--verbose`` shows them), or printed as they came if the import fails. A command that never needs
    TensorFlow never imports it."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        saved = os.dup(2)
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                self.loader.exec_module(module)
                module.config.list_physical_devices("GPU")
            except BaseException:
                os.dup2(saved, 2)
                caught.seek(0)
                sys.stderr.write(caught.read().decode(errors="replace"))
                raise
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines():
                logging.getLogger(__name__).debug("TensorFlow: %s", line)


if "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _QuietTensorFlow())

from pipeline.errors import UserError  # noqa: E402
from pipeline.finetune.config import FULL_SIZE_BELOW  # noqa: E402
from pipeline.settings import Settings  # noqa: E402

# cnn-codes NAME -> its module in scripts/ (pipeline.commands)
COMMANDS = {"extract": "extract", "fit": "fit_svm", "predict": "predict", "advise": "advise",
            "finetune": "finetune", "run": "run", "evaluate": "evaluate", "export": "export",
            "suggest": "suggest"}


def parser(description: str, examples: str, prog: str | None = None) -> argparse.ArgumentParser:
    """A parser whose epilog shows ``examples`` (``{prog}`` stands for the command as it was invoked)."""
    prog = prog or f"python {sys.argv[0]}"
    return argparse.ArgumentParser(
        prog=prog, description=description, epilog="examples:\n" + examples.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def option(p, settings: type[Settings], name: str, *flags: str, **kwargs) -> None:
    """Add the option of the setting ``name`` of ``settings``: its default and choices come from the settings
    (write ``%(default)s`` in the help to show the default); ``flags`` default to ``--name-with-dashes``."""
    kwargs.setdefault("default", settings.default(name))
    if settings.choices(name) is not None and kwargs.get("action") is None:
        kwargs.setdefault("choices", settings.choices(name))
    kwargs.setdefault("dest", name)
    p.add_argument(*(flags or (f"--{name.replace('_', '-')}",)), **kwargs)


def settings(cls: type[Settings], args: argparse.Namespace, **values):
    """``cls`` made from the parsed ``args`` (those of its fields the parser has; lists become tuples), then
    ``values``; a bad value is the library's one-line error, naming the flag."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    return cls(**{**given, **values})


def progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def add_ray(p: argparse.ArgumentParser) -> None:
    """The ``--ray`` option of the commands that scale out (docs/scaleout.md)."""
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run on a Ray cluster: auto (the one `ray start` runs here), local (a new one in this "
                        "process) or HOST:PORT; needs the ray extra")


def add_engine(p: argparse.ArgumentParser, settings: type[Settings], help_text: str | None = None) -> None:
    """The ``--engine`` option of every command that runs the frozen network."""
    option(p, settings, "engine", help=help_text or "what runs the frozen network: auto (default): ONNX Runtime on "
                                                     "a CPU, Keras on a GPU")


def add_image_size(p: argparse.ArgumentParser, settings: type[Settings]) -> None:
    """The ``--image-size`` option of the commands that fine-tune."""
    option(p, settings, "image_size", type=int,
           help=f"fine-tune at this resolution (default: the backbone's; in tail mode from {FULL_SIZE_BELOW:,} "
                "images, 5/7 of it, 160 px for 224)")


def add_overwrite(p: argparse.ArgumentParser, settings: type[Settings], what: str = "--out") -> None:
    """The ``--overwrite`` option of every command that writes: without it, an existing output that the command
    did not write is refused, never replaced."""
    option(p, settings, "overwrite", action="store_true",
           help=f"replace {what} even where it exists and was not written by this command (never where it holds "
                "an input)")


def add_allow_outside(p: argparse.ArgumentParser, settings: type[Settings]) -> None:
    """The ``--allow-outside`` option of every command that reads a manifest."""
    option(p, settings, "allow_outside", action="store_true",
           help="let a CSV manifest name images outside its own folder (../ or absolute paths; refused otherwise)")


def add_views(p: argparse.ArgumentParser, settings: type[Settings], then: str) -> None:
    """The ``--views`` option of the commands that extract codes; ``then``: what the command does with them."""
    option(p, settings, "views", nargs="+",
           help=f"also extract the codes of these views of each image (flip: mirrored left to right); {then} "
                "(default: none)")


def add_duplicates(p: argparse.ArgumentParser, settings: type[Settings]) -> None:
    """The ``--duplicate-threshold`` option of the commands that cross-validate."""
    option(p, settings, "duplicate_threshold", type=float, metavar="SIMILARITY",
           help="images whose codes are at least this similar are near-duplicates, kept inside one fold "
                "(default %(default)s; 0: do not look for them)")


def _prepare_ray(address: str) -> None:
    """Before Ray is first imported: a cluster started with a token (``ray start`` left one in ~/.ray) is joined
    with it, as ``ray start`` decides; Ray Data's own progress bars and per-job lines give way to the command's."""
    if address != "local" and "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        import ray.data
    except ImportError:
        return  # the library says what to install
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def _flag(p: argparse.ArgumentParser, param: str | None) -> str | None:
    """The option (or positional name) the user types for the setting ``param``."""
    for action in p._actions:
        if action.dest == param:
            return max(action.option_strings, key=len) if action.option_strings else action.metavar or param
    return param


def run(build_parser: Callable[[str | None], argparse.ArgumentParser], main: Callable, prog: str | None = None,
        argv: list[str] | None = None) -> None:
    """Parse, set up the process, call ``main(args)``; a :class:`UserError` or OS error becomes
    ``error: ...`` on stderr and exit code 2."""
    p = build_parser(prog)
    try:  # a value's type may check it with the settings' own one-line error (a memory size)
        args = p.parse_args(argv)
    except UserError as e:
        p.error(f"{_flag(p, e.param)}: {e.message}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("absl", "h5py", "PIL", "tf2onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notices are not the user's concern
    from PIL import Image

    # Bombs are refused with a recorded reason; Pillow's own warning would only be noise.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.showwarning = _log_warning
    set_verbosity(getattr(args, "quiet", False), getattr(args, "verbose", False))
    if getattr(args, "ray", None):
        _prepare_ray(args.ray)
    try:
        sys.exit(main(args) or 0)
    except UserError as e:
        where, remedy = _flag(p, e.param), _flag(p, e.remedy) if e.remedy else None
        print(f"error: {where + ': ' if where else ''}{e.message}{f' ({remedy})' if remedy else ''}",
              file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"error: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning is one logged line, its category and message (not the source line that raised it)."""
    logging.getLogger("warnings").warning("warning: %s (%s)", message, category.__name__)


def set_verbosity(quiet: bool, verbose: bool) -> None:
    logging.getLogger().setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> None:
    """``cnn-codes COMMAND ...``: the scripts' commands under one name."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        docs = {name: importlib.import_module(f"pipeline.commands.{m}").__doc__ or "" for name, m in COMMANDS.items()}
        lines = [f"  {name:{width}}  {doc.strip().splitlines()[0]}" for name, doc in docs.items()]
        print("usage: cnn-codes COMMAND [options]  (cnn-codes COMMAND --help for each)\n\ncommands:\n"
              + "\n".join(lines), file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    module = importlib.import_module(f"pipeline.commands.{COMMANDS[argv[0]]}")
    run(module.build_parser, module.main, prog=f"cnn-codes {argv[0]}", argv=argv[1:])
