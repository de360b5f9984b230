"""What every command-line entry point shares: logging set-up and one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from .errors import UserError


def parser(description: str, examples: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def run(main: Callable[[], int | None]) -> None:
    """Call ``main``; a :class:`UserError` or OS error becomes ``error: ...`` on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    for noisy in ("absl", "h5py", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notices are not the user's concern
    try:
        sys.exit(main() or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"error: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


def set_verbosity(quiet: bool, verbose: bool) -> None:
    logging.getLogger().setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
