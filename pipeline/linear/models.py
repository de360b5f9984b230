"""A model of each kind as it is trained and saved: the codes' scaling, then the kind's estimator, with Platt
sigmoids around it for the kinds whose scores are not probabilities (:mod:`pipeline.linear.kinds`)."""

from __future__ import annotations

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline

from . import tta
from .blocks import resolve
from .kinds import get_kind
from .scaling import scaler


def make_model(kind: str, hyper: float | dict, normalise="power", class_weight=None) -> Pipeline:
    """The model of ``kind`` behind its feature scaling, as a scikit-learn Pipeline; ``hyper``: its C, or
    ``{"C": C}`` with the kind's variant (:attr:`~pipeline.linear.kinds.ModelKind.variants`)."""
    kind = get_kind(kind)
    hyper = hyper if isinstance(hyper, dict) else {"C": hyper}
    clf = kind.build(hyper["C"], class_weight).set_params(**{k: hyper[k] for k in kind.variants[0]})
    return Pipeline([("scale", scaler(normalise)), ("clf", clf)])


def _calibration_folds(y: np.ndarray, groups: np.ndarray | None):
    """Platt scaling's folds: stratified 3-fold (fewer for a small class), each group inside one fold; None where a
    class present has one image or one group only, which no fold can both train and calibrate on."""
    present = np.unique(y)
    if groups is None:
        per_class = min(int(np.sum(y == c)) for c in present)
        return min(3, per_class) if per_class >= 2 else None
    per_class = min(len(np.unique(groups[y == c])) for c in present)
    return list(StratifiedGroupKFold(min(3, per_class)).split(y, y, groups)) if per_class >= 2 else None


def fit_with_C(kind: str, C: float | dict, X: np.ndarray, y: np.ndarray, normalise="power", class_weight=None,
               groups: np.ndarray | None = None):
    """The saved model of ``kind`` at a given C (or ``{"C": C, **variant}``), trained on every view of ``X``: a
    calibrated kind (the SVM) Platt-calibrated on 3 inner folds (``groups``, and the views of each image, kept
    inside one; on its training rows where a class has one image or group), others as they are; a
    :class:`~pipeline.linear.blocks.Blocks` scaling not yet chosen is chosen on these rows."""
    normalise = resolve(normalise, X, y)
    X, y, groups = tta.training_rows(X, y, groups)
    model = make_model(kind, C, normalise, class_weight)
    if get_kind(kind).calibrated:
        folds = _calibration_folds(y, groups)
        if folds is None:  # the sigmoids fitted on the training rows themselves
            return CalibratedClassifierCV(FrozenEstimator(model.fit(X, y)), method="sigmoid").fit(X, y)
        model = CalibratedClassifierCV(model, method="sigmoid", cv=folds, ensemble=False)
    return model.fit(X, y)
