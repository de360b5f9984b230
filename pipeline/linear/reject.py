"""Saying "unknown": a threshold on the top class probability, chosen from out-of-fold probabilities.

A deployed classifier otherwise names one of its classes for anything it is
shown. The threshold is set on probabilities of images the model never trained
on (out-of-fold, made as the saved model is), so that a chosen share of known
images (default 5%) falls under it: those are the known images it will wrongly
call unknown. What it does to images of classes never trained on is measured,
not promised (docs/benchmarks.md, "Unknown images").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .config import DEFAULT_REJECT_RATE

CURVE_POINTS = 50


def coverage_curve(y: np.ndarray, proba: np.ndarray, points: int = CURVE_POINTS) -> dict[str, list[float]]:
    """Accuracy on the images kept when the least confident are rejected, at ``points`` coverages from 1/n to
    all: the accuracy-against-coverage curve."""
    top = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    order = np.argsort(-top, kind="stable")
    accuracy = np.cumsum(correct[order]) / np.arange(1, len(y) + 1)
    at = np.unique(np.linspace(1, len(y), min(points, len(y))).round().astype(int)) - 1
    return {"coverage": ((at + 1) / len(y)).tolist(), "accuracy": accuracy[at].tolist(),
            "threshold": top[order][at].tolist()}


@dataclass(frozen=True)
class RejectRule:
    """Images whose top probability is under ``threshold`` are called unknown; on the out-of-fold probabilities
    that rejected ``rejected`` of the known images (target ``rate``), and the rest scored ``accuracy_kept``."""

    threshold: float
    rate: float
    rejected: float
    accuracy_kept: float
    accuracy_all: float

    def to_json(self) -> dict:
        return asdict(self)


def reject_rule(y: np.ndarray, proba: np.ndarray, rate: float = DEFAULT_REJECT_RATE) -> RejectRule:
    """The threshold under which a share ``rate`` of the out-of-fold top probabilities falls."""
    top = proba.max(axis=1)
    threshold = float(np.quantile(top, rate, method="lower")) if rate > 0 else 0.0
    kept = top >= threshold
    correct = proba.argmax(axis=1) == y
    return RejectRule(threshold, rate, float(1 - kept.mean()), float(correct[kept].mean()), float(correct.mean()))
