"""Ridge regression on cached codes: the fit stage's answer to a numeric target.

Nested like the classifiers: outer (repeated) k-fold gives R² and mean
absolute error; inside each outer training set ``RidgeCV`` chooses the penalty
by efficient leave-one-out over a log grid, never seeing the outer test fold.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import numpy as np
from joblib import Parallel, delayed
from sklearn.linear_model import RidgeCV
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import RepeatedKFold
from sklearn.pipeline import Pipeline

from .classify import Protocol, default_repeats, interval, scaler
from .errors import UserError

ALPHAS = tuple(np.logspace(-2, 5, 8))


def make_regressor(normalise: str = "standard") -> Pipeline:
    return Pipeline([("scale", scaler(normalise)), ("clf", RidgeCV(alphas=ALPHAS))])


def check_targets(X: np.ndarray, y: np.ndarray, folds: int, what: str) -> None:
    if not np.isfinite(y).all():
        raise UserError(f"{what} has NaN or infinite targets")
    if not np.isfinite(X).all():
        raise UserError(f"{what} has rows with NaN or infinite codes; re-extract them")
    if len(y) < max(folds, 3):
        raise UserError(f"{what} has {len(y)} images; regression with {folds}-fold cross-validation needs more")
    if np.ptp(y) == 0:
        raise UserError(f"{what}: every target is {y[0]}; there is nothing to regress")


def _outer_fold(X, y, train, test, normalise):
    started = time.perf_counter()
    model = make_regressor(normalise).fit(X[train], y[train])
    predicted = model.predict(X[test])
    return {"alpha": float(model.named_steps["clf"].alpha_), "r2": r2_score(y[test], predicted),
            "mae": mean_absolute_error(y[test], predicted), "seconds": time.perf_counter() - started}


def cross_validate_regression(X_by_layer, y, folds=5, repeats=None, normalise="standard", seed=0, jobs=None):
    """Nested cross-validation of ridge on every layer, on the same outer folds."""
    repeats = repeats or default_repeats(len(y))
    outer = list(RepeatedKFold(n_splits=folds, n_repeats=repeats, random_state=seed).split(y))
    protocol = Protocol(folds, repeats, "efficient leave-one-out (RidgeCV)", {"ridge": list(ALPHAS)},
                        normalise, None, seed)
    tasks = [(layer, f) for layer in X_by_layer for f in range(len(outer))]
    done = Parallel(n_jobs=jobs or os.cpu_count() or 1)(
        delayed(_outer_fold)(X_by_layer[layer], y, *outer[f], normalise) for layer, f in tasks)
    n_test = len(y) // folds
    results = []
    for layer in X_by_layer:
        mine = [r for (lay, _), r in zip(tasks, done) if lay == layer]
        results.append({
            "layer": layer, "classifier": "ridge",
            "r2": interval([r["r2"] for r in mine], len(y) - n_test, n_test, bounded=False),
            "mae": interval([r["mae"] for r in mine], len(y) - n_test, n_test, bounded=False),
            "chosen_alpha": {f"{a:g}": n for a, n in Counter(r["alpha"] for r in mine).most_common()},
            "fit_seconds": float(sum(r["seconds"] for r in mine)),
        })
    return results, protocol


def test_metrics(model, X, y) -> dict:
    predicted = model.predict(X)
    return {"images": int(len(y)), "r2": float(r2_score(y, predicted)),
            "mae": float(mean_absolute_error(y, predicted))}
