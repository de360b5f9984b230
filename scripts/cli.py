"""The command-line layer: what every command shares, and the ``cnn-codes`` command.

Each command is a module of ``scripts/`` (installed as ``pipeline.commands``)
with ``build_parser(prog)`` and ``main(args)``; ``python scripts/NAME.py`` and
``cnn-codes NAME`` parse with the same parser. Process-wide settings (logging,
warning filters, TensorFlow's log level, seeds) are made here, by the entry
points; the library (``pipeline/``) never imports the commands.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from typing import Callable

# Before TensorFlow is first imported (the commands import the library after this): no C++ start-up chatter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pipeline.errors import UserError  # noqa: E402

# cnn-codes NAME -> its module in scripts/ (pipeline.commands)
COMMANDS = {"extract": "extract", "fit": "fit_svm", "predict": "predict", "advise": "advise",
            "finetune": "finetune", "run": "run", "evaluate": "evaluate", "export": "export"}


def parser(description: str, examples: str, prog: str | None = None) -> argparse.ArgumentParser:
    """A parser whose epilog shows ``examples`` (``{prog}`` stands for the command as it was invoked)."""
    prog = prog or f"python {sys.argv[0]}"
    return argparse.ArgumentParser(
        prog=prog, description=description, epilog="examples:\n" + examples.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_ray(p: argparse.ArgumentParser) -> None:
    """The ``--ray`` option of the commands that scale out (README, "Scaling out")."""
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run on a Ray cluster: auto (the one `ray start` runs here), local (a new one in this "
                        "process) or HOST:PORT; needs the ray extra")


def add_engine(p: argparse.ArgumentParser) -> None:
    """The ``--engine`` option of every command that runs the frozen network (the names of
    ``pipeline.backbones.engine.ENGINES``, written out so that ``--help`` imports no Keras)."""
    p.add_argument("--engine", choices=("auto", "keras", "onnx"), default="auto",
                   help="what runs the frozen network: auto (default): ONNX Runtime on a CPU, Keras on a GPU")


def add_image_size(p: argparse.ArgumentParser) -> None:
    """The ``--image-size`` option of the commands that fine-tune (``pipeline.tail.default_size``, written out
    so that ``--help`` imports no Keras)."""
    p.add_argument("--image-size", type=int,
                   help="fine-tune at this resolution (default: the backbone's; in tail mode from 1,000 images, "
                        "5/7 of it, 160 px for 224)")


def add_views(p: argparse.ArgumentParser, then: str) -> None:
    """The ``--views`` option of the commands that extract codes (``pipeline.tta.VIEWS``); ``then``: what the
    command does with them."""
    from pipeline.tta import VIEWS

    p.add_argument("--views", nargs="+", choices=VIEWS, default=[],
                   help=f"also extract the codes of these views of each image (flip: mirrored left to right); {then} "
                        "(default: none)")


def add_duplicates(p: argparse.ArgumentParser) -> None:
    """The ``--duplicate-threshold`` option of the commands that cross-validate (the value of
    ``pipeline.duplicates.DEFAULT_THRESHOLD``, written out so that ``--help`` imports no SciPy)."""
    p.add_argument("--duplicate-threshold", type=float, default=0.95, metavar="SIMILARITY",
                   help="images whose codes are at least this similar are near-duplicates, kept inside one fold "
                        "(default 0.95; 0: do not look for them)")


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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("absl", "h5py", "PIL", "tf2onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notices are not the user's concern
    from PIL import Image

    # Bombs are refused with a recorded reason; Pillow's own warning would only be noise.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    set_verbosity(getattr(args, "quiet", False), getattr(args, "verbose", False))
    if getattr(args, "seed", None) is not None:
        import keras

        keras.utils.set_random_seed(args.seed)  # Python, numpy and the backend: shuffles and initialisation
    try:
        sys.exit(main(args) or 0)
    except UserError as e:
        where = _flag(p, e.param)
        print(f"error: {where + ': ' if where else ''}{e.message}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"error: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


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
