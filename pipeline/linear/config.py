"""The fit stage's settings (:mod:`pipeline.linear.fit`), and the names of the choices they take."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..outputs import check_out
from ..settings import MAX_JOBS, Settings, at_least, between, seed_setting, setting, share, within
from .kinds import CLASSIFIERS, classifiers

NORMALISATIONS = ("power", "standard", "l2")  # how codes are scaled (pipeline.linear.scaling)
BLOCK_SETTINGS = ("blocks", "auto")  # the stages of joined layers weighed as blocks: alone, or beside power


def plain(normalise: str | None) -> str | None:
    """The normalisation of the candidates not weighed as blocks (:mod:`pipeline.linear.blocks`) under the
    setting ``normalise``."""
    return "power" if normalise in BLOCK_SETTINGS else normalise
CLASS_WEIGHTS = ("auto", "none", "balanced")
VIEW_SETTINGS = ("auto", "on", "off")  # the store's views of each image (pipeline.linear.tta)
DEFAULT_REJECT_RATE = 0.05  # share of known images the saved "unknown" threshold rejects (pipeline.linear.reject)
DEFAULT_DUPLICATE_THRESHOLD = 0.95  # codes this similar are near-duplicates (pipeline.linear.duplicates)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_memory(text: str) -> int:
    """``"2G"``, ``"512MiB"``, ``"1.5GB"``, or bytes -> bytes (binary units)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    size = float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")
    if not 1 <= size < 2**60:  # nan fails too
        raise UserError(f"not a memory size: {str(text)[:40]!r} (e.g. 2G, 512M)", param="max_memory")
    return int(size)


@dataclass(frozen=True)
class FitConfig(Settings):
    """Settings of one fit run."""

    store: Path
    out: Path
    classifiers: tuple[str, ...] = setting(CLASSIFIERS, choices=classifiers)
    layers: tuple[str, ...] | None = None  # None: every stored layer, joined
    normalise: str | None = setting(None, choices=NORMALISATIONS + BLOCK_SETTINGS)  # None: the task's own
    folds: int = setting(5, check=within(2, 100))
    repeats: int | None = setting(None, check=within(1, 100))  # None: 3 under 1,000 images, else 1
    # auto: none and balanced compete when the classes differ 1.5x
    class_weight: str | None = setting("auto", choices=CLASS_WEIGHTS)
    views: str = setting("auto", choices=VIEW_SETTINGS)  # auto: with and without the store's views compete
    test_size: float | None = setting(None, check=between(0, 1))
    test_store: Path | None = None
    test_paths: tuple[str, ...] | None = None
    seed: int = seed_setting()
    jobs: int | None = setting(None, check=within(1, MAX_JOBS))
    max_memory: int | None = setting(None, check=at_least(1))  # bytes of codes above which the fit streams
    reject_rate: float = setting(DEFAULT_REJECT_RATE, check=share)
    # None or 0: not looked for
    duplicate_threshold: float | None = setting(DEFAULT_DUPLICATE_THRESHOLD, check=within(0, 1))
    overwrite: bool = False  # replace an out that fit did not write
    progress: bool = True  # a bar of the folds done, with the time left

    @property
    def plain(self) -> str | None:
        """The normalisation of the candidates not weighed as blocks (:mod:`pipeline.linear.blocks`)."""
        return plain(self.normalise)

    def check(self) -> None:
        if sum(t is not None for t in (self.test_store, self.test_size, self.test_paths)) > 1:
            raise UserError("give one way of testing: a test fraction, a test store or test paths",
                            param="test_store")
        check_out(self.out, "fit", inputs=(self.store, self.test_store), overwrite=self.overwrite)
