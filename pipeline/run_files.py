"""The JSON files of a run folder, each named once and written and read here: a reader checks that the file is
the object this version writes and says in one line what is wrong with one that is not (from another version,
cut short, edited), instead of a KeyError deep inside the stage that reads it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .outputs import write_bytes


@dataclass(frozen=True)
class RunFile:
    """One JSON file of a run folder: its ``name``, what it holds (``what``, for messages), its top level
    (``kind``: an object or a list) and the keys of an object every reader may count on (``keys``)."""

    name: str
    what: str
    keys: tuple[str, ...] = ()
    kind: type = dict

    def path(self, folder: Path) -> Path:
        return Path(folder) / self.name

    def write(self, folder: Path, data: Any) -> Path:
        """Write ``data`` (a result's ``to_json()``) into ``folder``, whole or not at all."""
        path = self.path(folder)
        write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
        return path

    def read(self, folder: Path, param: str | None = None) -> Any:
        """What :meth:`write` wrote into ``folder``, checked to hold :attr:`keys`; else one line naming the file."""
        path = self.path(folder)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path} is missing: {self.what} should be there", param=param) from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise UserError(f"{path} is not {self.what}: {e}", param=param) from None
        missing = [k for k in self.keys if not isinstance(data, dict) or k not in data]
        if missing or not isinstance(data, self.kind):
            raise UserError(f"{path} is not {self.what} as this version writes it"
                            + (f" (it lacks {', '.join(missing)})" if missing else ""), param=param)
        return data


METRICS = RunFile("metrics.json", "a fit's or a fine-tune's metrics", ("backbone", "results", "final"))
CLASSES = RunFile("classes.json", "a fine-tuned network's class names", kind=list)  # in its outputs' order
HISTORY = RunFile("history.json", "a fine-tune's history of epochs")
SUMMARY = RunFile("summary.json", "a run's summary", ("chosen", "candidates"))
STAGES = RunFile("stages.json", "a run's record of its finished stages")  # stage -> {key, result}
