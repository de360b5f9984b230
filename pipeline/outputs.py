"""Where a stage writes: never over what it did not make, never over its own inputs.

Every stage that writes checks its ``out`` when its settings are made
(:func:`check_out`), before any work. A folder it writes holds a marker
(:data:`MARKER`) naming the stage; a file is recognised by its own content (a
store by its attributes, a CSV by its header, an exported model by its card).
An ``out`` that exists, is not empty and is not recognised as the same stage's
earlier output is refused in one line, unless the settings say ``overwrite``;
an ``out`` that is, or holds, one of the stage's inputs is always refused.
:func:`replace_folder` swaps a finished folder in for the old one in one step.
"""

from __future__ import annotations

import csv
import ctypes
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterable

from .errors import UserError

MARKER = ".cnn-codes-output"  # inside a folder a stage wrote: {"stage": NAME}


def _resolved(path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def refuse_inputs(out, inputs: Iterable, param: str = "out") -> None:
    """Refuse an ``out`` that is one of ``inputs`` or a folder holding one (None inputs are skipped)."""
    target = _resolved(out)
    for given in inputs:
        if given is None:
            continue
        source = _resolved(given)
        if source == target or target in source.parents:
            raise UserError(f"{out} {'is' if source == target else 'holds'} the input {given}: write somewhere "
                            "else", param=param)


def written_by(folder: Path) -> str | None:
    """The stage whose marker ``folder`` holds, or None."""
    try:
        return json.loads((Path(folder) / MARKER).read_text(encoding="utf-8")).get("stage")
    except (OSError, ValueError, AttributeError):
        return None


def mark(folder: Path, stage: str) -> None:
    """Say that ``folder`` is ``stage``'s output (a rerun of the stage may write it again)."""
    (Path(folder) / MARKER).write_text(json.dumps({"stage": stage}) + "\n")


def claim(folder: Path, stage: str) -> Path:
    """Create ``folder`` (checked by :func:`check_out` already) and mark it as ``stage``'s."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if written_by(folder) != stage:
        mark(folder, stage)
    return folder


def check_out(out, stage: str, *, inputs: Iterable = (), overwrite: bool = False,
              recognise: Callable[[Path], bool] | None = None, param: str = "out") -> None:
    """Refuse in one line (a :class:`UserError` naming ``param``) to write ``out`` where that would destroy
    what ``stage`` did not make: ``out`` holds an input (always), or it exists, is not an empty folder, holds
    no marker of ``stage`` and is not what ``recognise`` recognises (unless ``overwrite``)."""
    if out is None:
        return
    if Path(out).name in ("", ".", ".."):
        raise UserError(f"{str(out)!r} names no file or folder of its own: give one, e.g. {stage}_out", param=param)
    refuse_inputs(out, inputs, param)
    out = Path(out)
    if not out.exists():
        if out.is_symlink():
            raise UserError(f"{out} is a broken symbolic link; remove it or write somewhere else", param=param)
        return
    if out.is_dir() and (written_by(out) == stage or not any(out.iterdir())):
        return
    try:
        ours = recognise is not None and recognise(out)
    except OSError:
        ours = False
    if ours or overwrite:
        return
    what = "a folder holding files" if out.is_dir() else "a file"
    raise UserError(f"{out} exists and is {what} that {stage} did not write: write somewhere else, or replace "
                    "it", param=param, remedy="overwrite")


def csv_header(path: Path) -> list[str]:
    """The first line of a text file as CSV cells (empty for anything else): how a stage recognises its CSV."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return next(csv.reader([f.readline(4096)]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` through a new temporary file renamed over it: a link planted at ``path`` is replaced, never
    followed, and a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_name(stem: str, suffix: str, limit: int = 120) -> str:
    """A file name made of ``stem`` (cut to ``limit`` bytes of UTF-8, path separators replaced) and ``suffix``:
    an image's name may be as long as the file system allows, a name made of it must still fit."""
    cut = stem.replace("/", "_").replace("\0", "_").encode("utf-8", "surrogateescape")[:limit]
    return cut.decode("utf-8", "ignore") + suffix


def remove(path: Path) -> None:
    """Remove a file, a link or a folder."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    return renameat2(-100, os.fsencode(a), -100, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_folder(out: Path, stage: str, write: Callable[[Path], None]) -> None:
    """Fill a new folder through ``write(folder)``, mark it as ``stage``'s, then swap it in for ``out`` in one
    step: a kill at any point leaves ``out`` as it was (or absent). Only this function's own temporary folders
    (``.NAME.*.tmp`` holding the marker) are ever removed besides ``out`` itself, which :func:`check_out`
    allowed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out, stage)
    new = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    new.mkdir()
    mark(new, stage)  # from the start, so a killed run's leftover is known as this stage's
    try:
        write(new)
        if (out.exists() or out.is_symlink()) and _exchange(new, out):
            remove(new)  # now the old output
        else:
            if out.exists() or out.is_symlink():
                old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
                os.replace(out, old)
                remove(old)
            os.replace(new, out)
    finally:
        if new.exists():
            remove(new)
        _remove_leftovers(out, stage)


def _remove_leftovers(out: Path, stage: str) -> None:
    """The temporary folders of killed runs of this function for ``out`` (they hold ``stage``'s marker)."""
    for stale in out.parent.glob(f".{out.name}.*.tmp"):
        if stale.is_dir() and not stale.is_symlink() and written_by(stale) == stage:
            shutil.rmtree(stale, ignore_errors=True)
