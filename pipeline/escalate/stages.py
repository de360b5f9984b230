"""A run's finished stages, kept in its folder, so that a rerun with the same settings goes on where it stopped.

``stages.json`` holds, for each finished stage, the key of what decided its
result (the settings that shape it, the identity of the store it read, the
keys of the stages before it, this package's version) and the result itself.
A stage whose key matches is taken up and not done again; one whose key
differs (another seed, a changed image folder) is done again, and so is every
stage after it, since their keys hold its key. The file is written whole
through a rename after each stage, so a kill leaves the stages finished
before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pipeline

from ..errors import UserError
from ..run_files import STAGES

log = logging.getLogger(__name__)


def stage_key(**parts) -> str:
    """The key of a stage from what decides its result (JSON-able values, paths as text)."""
    content = json.dumps({"version": pipeline.__version__, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(content.encode()).hexdigest()


class Stages:
    """The finished stages of the run in ``folder``."""

    def __init__(self, folder: Path):
        self.folder, self.path = Path(folder), STAGES.path(folder)
        try:
            self.done = STAGES.read(folder) if self.path.exists() else {}
        except UserError as e:  # a record, not a result: the stages run again
            log.warning("%s: every stage runs again", e)
            self.done = {}

    def result(self, stage: str, key: str) -> dict | None:
        """The result of ``stage`` if it finished with this ``key``; else None."""
        entry = self.done.get(stage)
        if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("result"), dict):
            log.info("%s: taken up from %s (same settings and store)", stage, self.path)
            return entry["result"]
        return None

    def finish(self, stage: str, key: str, result: dict) -> None:
        """Record ``stage`` as finished with ``key`` and ``result``."""
        self.done[stage] = {"key": key, "result": result}
        STAGES.write(self.folder, self.done)
