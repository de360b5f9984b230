"""Codes with views of each image (:mod:`pipeline.data.views`): training on every view, averaging over them.

A store extracted with views holds, beside each image's codes, the codes of
each of its views in the same row (``views/<view>/<layer>``), so the rows stay
grouped by image. A classifier with views trains on every view of its training
images, as more rows with the same labels, and predicts an image by averaging
its class probabilities (decision values for an uncalibrated SVM) over the
image and its views: test-time augmentation. Arrays of codes with views are
``(views + 1, images, dims)``, the image itself first; a 2-D array is one view.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def stacked(X: np.ndarray) -> np.ndarray:
    """``X`` as (views, images, dims): a 2-D array is one view."""
    if X.ndim == 2:
        return X[None]
    if X.ndim != 3:
        raise ValueError(f"codes must be 2-D or (views, images, dims), not of shape {X.shape}")
    return X


def using(X: np.ndarray, views: Sequence[str]) -> np.ndarray:
    """The planes of a stack a candidate uses: all of them with its ``views``, else the images alone; 2-D codes
    (no views stored) as they are."""
    if X.ndim == 2 and not views:
        return X
    X = stacked(X)
    if views and len(X) != len(views) + 1:
        raise ValueError(f"{len(views)} view(s) wanted, {len(X) - 1} stored")
    return X if views else X[:1]


def rows(X: np.ndarray, index) -> np.ndarray:
    """The images ``index`` of codes with or without views."""
    return X[..., index, :]


def training_rows(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None):
    """Every view as a training row: (rows, dims), their labels, and their groups (with views, each image's views
    form a group inside any given one, so a split never separates them; without views, ``groups`` as given)."""
    X = stacked(X)
    v, n = X.shape[:2]
    if v > 1:
        groups = np.arange(n) if groups is None else np.unique(groups, return_inverse=True)[1]
        groups = np.tile(groups, v)
    return X.reshape(v * n, -1), np.tile(y, v), groups


def scores(model, X: np.ndarray) -> np.ndarray:
    """Class probabilities averaged over the views (decision values where the model has no probabilities)."""
    X = stacked(X)
    score = model.predict_proba if hasattr(model, "predict_proba") else model.decision_function
    return np.mean([score(plane) for plane in X], axis=0)


def predict(model, X: np.ndarray) -> np.ndarray:
    """Classes from :func:`scores`; without views, the model's own prediction."""
    X = stacked(X)
    if len(X) == 1:
        return model.predict(X[0])
    s = scores(model, X)
    return model.classes_[s.argmax(axis=1)] if s.ndim == 2 else model.classes_[(s > 0).astype(int)]
