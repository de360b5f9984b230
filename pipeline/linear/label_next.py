"""Which unlabelled images to label next: uncertain ones, spread over the codes, none a near-duplicate of an
image already labelled.

Diverse mini-batch active learning (Zhdanov 2019, arXiv:1901.05954): the
``PREFILTER`` x ``count`` candidates with the smallest margin between their two
top class scores (margin sampling, Scheffer et al. 2001) are clustered by
k-means into ``count`` clusters, each weighted by one minus its margin, and the
candidate nearest each cluster's centre is chosen, so that a batch is not
twenty copies of one confusing pair. Margins need no calibration across
classes and work with an SVM's decision values as with probabilities. Before
that, images whose codes are near-duplicates of a labelled image's
(:mod:`pipeline.linear.duplicates`: its similarity and threshold, on the
penultimate layer where it was calibrated) leave the pool: their label is as
good as known; of a group of near-duplicate unlabelled images only the most
uncertain stays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

from .config import DEFAULT_DUPLICATE_THRESHOLD
from .duplicates import near_duplicate_groups, nearest_similarity, unit_codes

PREFILTER = 10  # Zhdanov's beta: candidates per image chosen, the most uncertain first


@dataclass(frozen=True)
class Ranking:
    """The images to label next, the most useful first, and what was measured on every unlabelled image."""

    chosen: np.ndarray  # row indices of the unlabelled codes, most uncertain first
    margin: np.ndarray  # per row: top class score minus the second (small: uncertain)
    nearest: np.ndarray  # per row: similarity to the most similar labelled image
    duplicates: np.ndarray  # rows left out as near-duplicates of labelled images


def margins(scores: np.ndarray) -> np.ndarray:
    """The top class score of each row minus its second (a binary SVM's one decision value: its size)."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim == 1 or scores.shape[1] == 1:
        return 2 * np.abs(scores.reshape(-1))
    top2 = np.sort(scores, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def rank(scores: np.ndarray, codes: np.ndarray, labelled: np.ndarray, count: int, seed: int = 0,
         threshold: float = DEFAULT_DUPLICATE_THRESHOLD) -> Ranking:
    """Up to ``count`` unlabelled images to label next, from their class ``scores`` and ``codes`` and the
    ``labelled`` images' codes (the same layer)."""
    if len(scores) != len(codes):
        raise ValueError(f"{len(scores)} rows of scores for {len(codes)} rows of codes")
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    margin = margins(scores)
    nearest = nearest_similarity(codes, labelled)
    duplicates = np.flatnonzero(nearest >= threshold)
    pool = np.setdiff1d(np.arange(len(codes)), duplicates)
    if len(pool) > 1:  # one per group of near-duplicates among themselves: the most uncertain
        groups = near_duplicate_groups(codes[pool], threshold)
        by_margin = np.lexsort((margin[pool], groups))
        pool = pool[by_margin[np.r_[True, groups[by_margin][1:] != groups[by_margin][:-1]]]]
    candidates = pool[np.argsort(margin[pool], kind="stable")[:PREFILTER * count]]
    if len(candidates) <= count:
        chosen = candidates
    else:
        X = unit_codes(codes[candidates])
        weight = np.clip(1.0 - margin[candidates], 1e-3, None)  # Zhdanov's: the more uncertain, the heavier
        km = KMeans(count, n_init=3, random_state=seed).fit(X, sample_weight=weight)
        distance = np.linalg.norm(X - km.cluster_centers_[km.labels_], axis=1)
        chosen = np.array([candidates[km.labels_ == k][np.argmin(distance[km.labels_ == k])]
                           for k in np.unique(km.labels_)])
        chosen = chosen[np.argsort(margin[chosen], kind="stable")]
    return Ranking(chosen, margin, nearest, duplicates)
