"""One cross-validation plan for every stage that compares linear candidates: the fit stage (and run.py's linear
stage, which is a fit), and the evaluation grid build it from their settings and run it the same way, so the
same settings give the same figures wherever they are computed (settings -> plan -> results)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..results import CVResult, Protocol
from . import blocks, cv


@dataclass(frozen=True)
class CVPlan:
    """The candidates' classifiers, folds, scalings, class weightings, seed and parallelism, as a stage's
    settings give them (:meth:`of`: a ``FitConfig`` or an ``EvaluateConfig``, which name them alike)."""

    classifiers: tuple[str, ...]
    folds: int
    repeats: int | None
    normalise: str
    plain: str
    class_weight: str | None
    seed: int
    jobs: int | None
    progress: bool

    @classmethod
    def of(cls, cfg) -> "CVPlan":
        return cls(tuple(cfg.classifiers), cfg.folds, cfg.repeats, cfg.normalise, cfg.plain, cfg.class_weight,
                   cfg.seed, cfg.jobs, cfg.progress)

    def run(self, X: dict[str, np.ndarray], y: np.ndarray, names: list[str], widths: dict[str, tuple[int, ...]],
            groups: np.ndarray | None, views: Sequence[tuple[str, ...]] = ((),)) -> tuple[list[CVResult], Protocol]:
        """Nested cross-validation of every candidate on the codes ``X`` of each layer (``widths``: the stored
        layers each one joins, for the scalings that weigh them as blocks), ``groups`` kept inside one fold."""
        return cv.cross_validate(X, y, names, self.classifiers, self.folds, self.repeats,
                                 blocks.competing(self.normalise, widths, self.plain),
                                 cv.class_weightings(y, self.class_weight), self.seed, self.jobs, groups,
                                 views=views, progress=self.progress)

    def ungrouped(self, candidate: CVResult, X: np.ndarray, y: np.ndarray, names: list[str], scaling,
                  metric: str) -> float:
        """``candidate``'s primary score were no images kept together (what keeping groups inside one fold
        changed), on its codes ``X`` scaled as it is (``scaling``)."""
        plain, _ = cv.cross_validate({candidate.layer: X}, y, names, (candidate.classifier,), self.folds,
                                     self.repeats, scaling, (candidate.class_weight,), self.seed, self.jobs,
                                     metric=metric, views=(tuple(candidate.views),))
        return plain[0].primary.mean
