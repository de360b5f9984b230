"""Images that must stay on one side of every split: near-duplicates, found from their codes, and the groups a
manifest names (one patient, object or session).

Two images are near-duplicates when the cosine similarity of their codes,
centred on the set's mean code, reaches :data:`DEFAULT_THRESHOLD`; groups are
the connected components of that relation. The threshold was calibrated with
``benchmarks/duplicate_threshold.py``: exact copies, copies shrunk and
re-encoded as JPEG, and padded copies against distinct images of one class, on
three sets (docs/benchmarks.md, "Near-duplicates").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .config import DEFAULT_DUPLICATE_THRESHOLD as DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from ..store.reader import FeatureStore

_BLOCK = 1024  # rows per block of the similarity matrix: 1024 x n float32


def unit_codes(codes: np.ndarray) -> np.ndarray:
    """Rows centred on their mean code and scaled to unit length: the geometry near-duplicates are judged in."""
    X = np.asarray(codes, np.float32)
    X = X - X.mean(axis=0)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def similarity(codes: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of rows, centred on the mean code (n x n: for small sets)."""
    X = unit_codes(codes)
    return X @ X.T


def nearest_similarity(codes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per row of ``codes``: its similarity to the most similar row of ``reference``, both centred on their joint
    mean code (so a threshold means what it means within one set). Memory: one block at a time."""
    both = unit_codes(np.concatenate([codes, reference]))
    X, R = both[:len(codes)], both[len(codes):]
    if not len(R) or not len(X):  # nothing to compare with: no row is a near-duplicate
        return np.full(len(X), -1.0, np.float32)
    return np.concatenate([(X[s:s + _BLOCK] @ R.T).max(axis=1) for s in range(0, len(X), _BLOCK)])


def near_duplicate_groups(codes: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """A group number per row; rows whose similarity reaches ``threshold``, directly or through others, share
    one. Memory: one block of the similarity matrix at a time."""
    X = unit_codes(codes)
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


def joined(*labelings: np.ndarray) -> np.ndarray:
    """One group number per row: rows sharing a number in any of ``labelings`` (directly or through others)
    share one (the components of the graph linking each row to its number in each labeling)."""
    n = len(labelings[0])
    rows, cols, offset = [], [], n
    for labels in labelings:
        _, index = np.unique(labels, return_inverse=True)
        rows.append(np.arange(n))
        cols.append(offset + index.ravel())
        offset += int(index.max(initial=-1)) + 1
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), bool), (r, c)), shape=(offset, offset))
    _, components = connected_components(graph, directed=False)
    return np.unique(components[:n], return_inverse=True)[1].ravel()


def manifest_groups(names: list[str]) -> np.ndarray:
    """Group numbers from a manifest's group column; an empty name stands alone."""
    ids = {name: k for k, name in enumerate(dict.fromkeys(n for n in names if n))}
    return np.array([ids[name] if name else len(ids) + i for i, name in enumerate(names)])


def _alone_is_none(groups: np.ndarray) -> np.ndarray | None:
    return groups if len(np.unique(groups)) < len(groups) else None


def store_groups(store: FeatureStore, rows: np.ndarray | None = None,
                 threshold: float | None = DEFAULT_THRESHOLD) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Group numbers of a store's ``rows`` (default all), or None where every image stands alone: those the folds
    keep together (the manifest's ``group`` column and near-duplicates, joined), and the near-duplicates alone,
    found from the codes of the layer the threshold was calibrated on (not looked for when ``threshold`` is None
    or 0)."""
    duplicates = None
    if threshold:
        codes = store.codes("penultimate" if "penultimate" in store.layers else store.layers[-1])
        duplicates = _alone_is_none(near_duplicate_groups(codes if rows is None else codes[rows], threshold))
    if store.groups is None:
        return duplicates, duplicates
    named = manifest_groups(store.groups)
    named = named if rows is None else named[rows]
    return _alone_is_none(named if duplicates is None else joined(named, duplicates)), duplicates


def subset(groups: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    """``groups`` of ``rows`` only; None where every one of them stands alone."""
    return None if groups is None else _alone_is_none(groups[rows])
