"""Ridge regression on cached codes: the fit stage's answer to a numeric target.

Nested like the classifiers: the outer folds give R² and MAE; inside each outer
training set ``RidgeCV`` chooses alpha by leave-one-out, never seeing the test fold.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
from joblib import delayed
from sklearn.model_selection import RepeatedKFold
from sklearn.pipeline import Pipeline

from .. import metrics
from ..errors import UserError
from ..results import CVResult, HeldOut, Protocol
from .cv import default_repeats
from .jobs import run_folds
from .kinds import get_kind
from .models import make_model

RIDGE = get_kind("ridge")


def make_regressor(normalise: str = "standard") -> Pipeline:
    """Ridge behind its feature scaling; its penalty is chosen by efficient leave-one-out when fitted."""
    return make_model(RIDGE.name, 1.0, normalise)


def fit_final(X: np.ndarray, y: np.ndarray, normalise: str = "standard") -> tuple[Pipeline, dict[str, float]]:
    """Ridge on all of ``X``, its penalty chosen by leave-one-out; the model and ``{C: 1/alpha, alpha}``."""
    model = make_regressor(normalise).fit(X, y)
    alpha = float(model.named_steps["clf"].alpha_)
    return model, {"C": 1 / alpha, "alpha": alpha}


def check_targets(X: np.ndarray, y: np.ndarray, folds: int, what: str) -> None:
    if not np.isfinite(y).all():
        raise UserError(f"{what} has NaN or infinite targets")
    if not np.isfinite(X).all():
        raise UserError(f"{what} has rows with NaN or infinite codes; re-extract them")
    if len(y) < max(folds, 3):
        raise UserError(f"{what} has {len(y)} images; regression with {folds}-fold cross-validation needs more")
    if np.ptp(y) == 0:
        raise UserError(f"{what}: every target is {y[0]}; there is nothing to regress")


def split_test(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random held-out split fixed by ``seed``: (training rows, test rows)."""
    rng = np.random.default_rng(seed)
    test = np.sort(rng.choice(len(y), size=max(1, round(test_size * len(y))), replace=False))
    return np.setdiff1d(np.arange(len(y)), test), test


def _outer_fold(X, y, train, test, normalise):
    started = time.perf_counter()
    model = make_regressor(normalise).fit(X[train], y[train])
    return {"alpha": float(model.named_steps["clf"].alpha_), "seconds": time.perf_counter() - started,
            **metrics.regression_scores(y[test], model.predict(X[test]))}


def cross_validate(X_by_layer, y, folds=5, repeats=None, normalise="standard", seed=0,
                   jobs=None, progress: bool = False) -> tuple[list[CVResult], Protocol]:
    """Nested cross-validation of ridge on every layer, on the same outer folds."""
    repeats = repeats or default_repeats(len(y))
    outer = list(RepeatedKFold(n_splits=folds, n_repeats=repeats, random_state=seed).split(y))
    protocol = Protocol(folds, repeats, "efficient leave-one-out (RidgeCV)", {RIDGE.name: list(RIDGE.grid)},
                        normalise, [], seed, metric="r2")
    tasks = [(layer, f) for layer in X_by_layer for f in range(len(outer))]
    done = run_folds((delayed(_outer_fold)(X_by_layer[layer], y, *outer[f], normalise) for layer, f in tasks), jobs,
                     progress, "nested CV")
    n_test = len(y) // folds
    results = []
    for layer in X_by_layer:
        mine = [r for (lay, _), r in zip(tasks, done) if lay == layer]
        results.append(CVResult(
            layer, RIDGE.name,
            {name: metrics.nadeau_bengio([r[name] for r in mine], len(y) - n_test, n_test, bounded=False)
             for name in ("r2", "mae")},
            {f"{a:g}": n for a, n in Counter(r["alpha"] for r in mine).most_common()}, hyper="alpha",
            fit_seconds=float(sum(r["seconds"] for r in mine))))
    return results, protocol


def held_out(model, X, y, data: str) -> HeldOut:
    return HeldOut(data, int(len(y)), metrics.regression_scores(y, model.predict(X)))
