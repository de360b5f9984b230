"""Every score the project reports and every interval around one: one definition each.

Which labels macro-F1 averages over is the one rule here: **the classes present
in the true labels**. A class the evaluated images lack cannot be scored (its
recall is undefined), while a wrong prediction of such a class still counts, as
a miss of the true class. Under stratified folds every class is present, so
this equals scikit-learn's default there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.metrics import (
    f1_score,
    mean_absolute_error,
    precision_recall_fscore_support,
    r2_score,
)


@dataclass(frozen=True)
class Score:
    """A figure with its spread and 95% interval; ``folds`` holds the per-fold values it came from, if any."""

    mean: float
    std: float = 0.0
    ci95: tuple[float, float] | None = None
    folds: tuple[float, ...] | None = None

    def to_json(self) -> dict:
        out = {"mean": self.mean, "std": self.std}
        if self.ci95 is not None:
            out["ci95"] = list(self.ci95)
        if self.folds is not None:
            out["folds"] = list(self.folds)
        return out

    @classmethod
    def from_json(cls, data: dict) -> "Score":
        return cls(float(data["mean"]), float(data.get("std", 0.0)),
                   None if data.get("ci95") is None else tuple(map(float, data["ci95"])),
                   None if data.get("folds") is None else tuple(map(float, data["folds"])))


def accuracy(y_true, y_pred) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else 0.0


def macro_f1(y_true, y_pred) -> float:
    """Unweighted mean of the F1 of the classes present in ``y_true`` (the module's rule)."""
    return float(f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0))


def per_class(y_true, y_pred, class_names) -> dict:
    """Precision, recall, F1 and support of every class in ``class_names`` (index order)."""
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(len(class_names)), zero_division=0)
    return {name: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])}
            for k, name in enumerate(class_names)}


CLASSIFICATION = {"accuracy": accuracy, "macro_f1": macro_f1}


def classification_scores(y_true, y_pred) -> dict[str, float]:
    return {name: score(y_true, y_pred) for name, score in CLASSIFICATION.items()}


def regression_scores(y_true, y_pred) -> dict[str, float]:
    y_pred = np.asarray(y_pred, np.float64).ravel()
    return {"r2": float(r2_score(y_true, y_pred)), "mae": float(mean_absolute_error(y_true, y_pred))}


def nadeau_bengio(values, n_train: int, n_test: int, bounded: bool = True) -> Score:
    """Mean over folds with the Nadeau-Bengio corrected 95% t interval: the naive one widened by ``sqrt(1/J +
    n_test/n_train)`` for overlapping training sets; ``bounded`` clips it to [0, 1]."""
    values = np.asarray(values, float)
    j = len(values)
    sd = float(values.std(ddof=1)) if j > 1 else 0.0
    half = float(stats.t.ppf(0.975, j - 1) * np.sqrt(1 / j + n_test / n_train) * sd) if j > 1 else 0.0
    mean = float(values.mean())
    low, high = mean - half, mean + half
    if bounded:
        low, high = max(0.0, low), min(1.0, high)
    return Score(mean, sd, (low, high), tuple(round(float(v), 6) for v in values))


def bootstrap(y: np.ndarray, predicted: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict[str, Score]:
    """Accuracy and macro-F1 on one test set with 95% percentile bootstrap intervals over its images."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(y), (resamples, len(y)))
    acc = (y[draws] == predicted[draws]).mean(axis=1)
    present = np.unique(y)  # the rule, fixed by the full set so every resample averages the same classes
    f1 = np.array([f1_score(y[d], predicted[d], labels=present, average="macro", zero_division=0) for d in draws])
    full = classification_scores(y, predicted)
    return {name: Score(full[name], float(v.std(ddof=1)), (float(np.percentile(v, 2.5)),
                                                         float(np.percentile(v, 97.5))))
            for name, v in (("accuracy", acc), ("macro_f1", f1))}


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``p`` measured on ``n`` trials."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


@dataclass(frozen=True)
class PairedDifference:
    """How much more often B is right than A on the same images: the difference of accuracies, its percentile
    bootstrap interval at ``level`` (images resampled in pairs) and McNemar's exact two-sided p-value."""

    a: float
    b: float
    difference: float
    interval: tuple[float, float]
    level: float
    p_value: float
    images: int

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "difference": self.difference, "interval": list(self.interval),
                "level": self.level, "p_value": self.p_value, "images": self.images}

    @classmethod
    def from_json(cls, data: dict) -> "PairedDifference":
        return cls(float(data["a"]), float(data["b"]), float(data["difference"]), tuple(data["interval"]),
                   float(data["level"]), float(data["p_value"]), int(data["images"]))


def paired_difference(right_a: np.ndarray, right_b: np.ndarray, level: float = 0.9, resamples: int = 2000,
                      seed: int = 0) -> PairedDifference:
    """B's accuracy minus A's from each image's right-or-wrong under both (``right_a``, ``right_b``: booleans).

    Pairing removes the images' own difficulty from the comparison: only the images where the two disagree
    move it. McNemar's exact test is the binomial test of those discordant images."""
    right_a, right_b = np.asarray(right_a, bool), np.asarray(right_b, bool)
    if right_a.shape != right_b.shape or right_a.ndim != 1 or not len(right_a):
        raise ValueError("paired_difference needs two equal-length, non-empty vectors")
    delta = right_b.astype(float) - right_a.astype(float)
    draws = np.random.default_rng(seed).integers(0, len(delta), (resamples, len(delta)))
    means = delta[draws].mean(axis=1)
    tail = (1 - level) / 2
    b_only, a_only = int((right_b & ~right_a).sum()), int((right_a & ~right_b).sum())
    p = float(stats.binomtest(b_only, b_only + a_only).pvalue) if b_only + a_only else 1.0
    return PairedDifference(float(right_a.mean()), float(right_b.mean()), float(delta.mean()),
                            (float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))), level, p,
                            len(delta))
