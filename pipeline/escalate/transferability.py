"""Cheap scores of how well the cached codes of each layer suit the labels, in seconds: shown, not trusted alone.

k-NN accuracy (stratified 5-fold, cosine distance on the codes) is the plain
evaluation that beat 23 transferability metrics in Sorkhei et al. 2025; LogME
(You et al. 2021) is the log marginal evidence per image of a Bayesian linear
model from the codes to each class's indicator, averaged over classes. Neither
decides the escalation (the pilot does, :mod:`pipeline.escalate.pilot`): no
cheap score predicts the winner reliably (Agostinelli et al. 2022), so the
advice prints them beside the divergence and docs/benchmarks.md measures how
well they order the strategies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from ..store.reader import FeatureStore

NEIGHBOURS = 10
MAX_IMAGES = 3000  # a stratified sample beyond this keeps both scores to seconds


@dataclass(frozen=True)
class LayerScores:
    """The cheap scores of one layer's codes."""

    knn_accuracy: float
    logme: float

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "LayerScores":
        return cls(float(data["knn_accuracy"]), float(data["logme"]))


def knn_accuracy(X: np.ndarray, y: np.ndarray, seed: int = 0, neighbours: int = NEIGHBOURS) -> float:
    """Mean accuracy of a cosine k-NN over stratified folds (5, or fewer where a class is small)."""
    folds = max(2, min(5, int(np.bincount(y).min())))
    knn = KNeighborsClassifier(n_neighbors=min(neighbours, len(y) - len(y) // folds - 1), metric="cosine")
    return float(cross_val_score(knn, X, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed)).mean())


def logme(X: np.ndarray, y: np.ndarray, steps: int = 11) -> float:
    """LogME: per class, the evidence of ``indicator = X w + noise`` with a Gaussian prior on ``w`` (precision
    alpha, noise precision beta, both at their fixed point, as in You et al.'s reference code), per image; the
    mean over classes. Higher: the codes explain the labels linearly with less fitting."""
    X = np.asarray(X, np.float64)
    n, d = X.shape
    sigma, v = np.linalg.eigh(X.T @ X)
    sigma = np.clip(sigma, 0, None)
    evidences = []
    for k in np.unique(y):
        target = (y == k).astype(np.float64)
        projected = v.T @ (X.T @ target)
        alpha, beta = 1.0, 1.0
        for _ in range(steps):
            gamma = float((beta * sigma / (alpha + beta * sigma)).sum())
            m = v @ (projected * beta / (alpha + beta * sigma))
            alpha_de = float(m @ m)
            beta_de = float(((target - X @ m) ** 2).sum())
            new_alpha, new_beta = gamma / (alpha_de + 1e-5), (n - gamma) / (beta_de + 1e-5)
            done = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 0.01
            alpha, beta = new_alpha, new_beta
            if done:
                break
        evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.log(alpha + beta * sigma).sum()
                    - beta / 2 * beta_de - alpha / 2 * alpha_de - n / 2 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def _sample(y: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    """``rows``, or a stratified sample of :data:`MAX_IMAGES` of them."""
    if len(rows) <= MAX_IMAGES:
        return rows
    share = MAX_IMAGES / len(rows)
    rng = np.random.default_rng(seed)
    picked = [rng.choice(rows[y[rows] == c], max(2, round(share * (y[rows] == c).sum())), replace=False)
              for c in np.unique(y[rows])]
    return np.sort(np.concatenate(picked))


def layer_scores(store: FeatureStore, layers, rows: np.ndarray, seed: int = 0) -> dict[str, LayerScores]:
    """The cheap scores of each of ``layers`` on the images ``rows`` of a labelled store (the training part:
    never the held-out images)."""
    rows = _sample(store.labels, np.sort(np.asarray(rows)), seed)
    y = store.labels[rows]
    out = {}
    for layer in layers:
        X = store.codes(layer, rows)
        out[layer] = LayerScores(knn_accuracy(X, y, seed), logme(X, y))
    return out
