"""Classification on cached codes: what a store must hold to train a classifier, the held-out test split,
a separate test store, and the figures on held-out images."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from .. import metrics
from ..errors import UserError
from ..results import HeldOut
from ..store.reader import FeatureStore
from . import tta


def check_training_data(X: np.ndarray, y: np.ndarray | None, class_names, what: str) -> None:
    """One clear line for each way a store cannot train a classifier."""
    if y is None:
        raise UserError(f"{what} has no labels: extract from a folder with one sub-folder per class "
                        "or a CSV manifest with a label column")
    if len(y) == 0:
        raise UserError(f"{what} holds no images")
    counts = np.bincount(y, minlength=len(class_names))
    empty = [name for name, c in zip(class_names, counts) if c == 0]
    if empty:
        raise UserError(f"{what}: class {', '.join(empty)} has no images; add some or remove the folder")
    if len(class_names) < 2:
        raise UserError(f"{what} has only one class ({class_names[0]}); a classifier needs at least two")
    bad = ~np.isfinite(tta.stacked(X)).all(axis=(0, 2))
    if bad.any():
        raise UserError(f"{what} has {int(bad.sum())} row(s) with NaN or infinite codes; re-extract them")
    if counts.min() < 2:
        small = [name for name, c in zip(class_names, counts) if c < 2]
        raise UserError(f"{what}: class {', '.join(small)} has a single image; cross-validation needs "
                        "at least 2 per class")


def split_test(y: np.ndarray, test_size: float, seed: int,
               groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A stratified held-out split fixed by ``seed``: (training rows, test rows). With ``groups``, each group falls
    on one side: the test part is one fold of ``round(1 / test_size)`` (``StratifiedGroupKFold``), so its share is
    near ``test_size``, not exact."""
    try:
        if groups is None:
            return train_test_split(np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed)
        folds = max(2, round(1 / test_size))
        return next(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(y, y, groups))
    except ValueError as e:
        raise UserError(f"cannot hold out a stratified test split: {e}", param="test_size") from None


def align_test_store(train: FeatureStore, test: FeatureStore) -> np.ndarray:
    """Labels of ``test`` in ``train``'s class indices, refusing stores that cannot be compared."""
    diff = [d for d in train.config.differences(test.config) if d != "layers"]
    if diff:
        raise UserError(f"{test.path} was made with a different {', '.join(diff)}", param="test_store")
    if test.labels is None:
        raise UserError(f"{test.path} has no labels", param="test_store")
    unknown = sorted(set(test.class_names) - set(train.class_names))
    if unknown:
        raise UserError(f"{test.path} has classes the training store lacks: {', '.join(unknown)}",
                        param="test_store")
    index = {name: k for k, name in enumerate(train.class_names)}
    return np.array([index[test.class_names[label]] for label in test.labels])


def held_out(model, X, y, class_names, data: str) -> HeldOut:
    predicted = tta.predict(model, X)
    return HeldOut(data, int(len(y)), metrics.classification_scores(y, predicted),
                   metrics.per_class(y, predicted, class_names))
