"""Near-duplicate images, found from their codes, so that copies never fall on both sides of a fold.

Two images are near-duplicates when the cosine similarity of their codes,
centred on the set's mean code, reaches :data:`DEFAULT_THRESHOLD`; groups are
the connected components of that relation. The threshold was calibrated with
``benchmarks/duplicate_threshold.py``: exact copies, copies shrunk and
re-encoded as JPEG, and padded copies against distinct images of one class, on
three sets (README, "Fit").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

if TYPE_CHECKING:
    from .store import FeatureStore

DEFAULT_THRESHOLD = 0.95
_BLOCK = 1024  # rows per block of the similarity matrix: 1024 x n float32


def _unit(codes: np.ndarray) -> np.ndarray:
    X = np.asarray(codes, np.float32)
    X = X - X.mean(axis=0)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def similarity(codes: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of rows, centred on the mean code (n x n: for small sets)."""
    X = _unit(codes)
    return X @ X.T


def near_duplicate_groups(codes: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """A group number per row; rows whose similarity reaches ``threshold``, directly or through others, share
    one. Memory: one block of the similarity matrix at a time."""
    X = _unit(codes)
    rows, cols = [], []
    for start in range(0, len(X), _BLOCK):
        block = X[start:start + _BLOCK] @ X.T
        i, j = np.nonzero(block >= threshold)
        keep = start + i < j  # each pair once, no diagonal
        rows.append(start + i[keep])
        cols.append(j[keep])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), bool), (r, c)), shape=(len(X), len(X)))
    return connected_components(graph, directed=False)[1]


def duplicate_sets(groups: np.ndarray) -> list[np.ndarray]:
    """The groups with more than one row, largest first: the row indices of each."""
    ids, counts = np.unique(groups, return_counts=True)
    return [np.flatnonzero(groups == g) for g in ids[np.argsort(-counts, kind="stable")] if counts[ids == g][0] > 1]


def store_groups(store: FeatureStore, rows: np.ndarray | None = None,
                 threshold: float | None = DEFAULT_THRESHOLD) -> np.ndarray | None:
    """Group numbers of a store's ``rows`` (default all) by near-duplicate codes of the layer the threshold was
    calibrated on; None when every image stands alone or ``threshold`` is None or 0 (not looked for)."""
    if not threshold:
        return None
    codes = store.codes("penultimate" if "penultimate" in store.layers else store.layers[-1])
    groups = near_duplicate_groups(codes if rows is None else codes[rows], threshold)
    return groups if len(np.unique(groups)) < len(groups) else None
