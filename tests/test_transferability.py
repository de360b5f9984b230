"""The cheap scores of cached codes: k-NN accuracy and LogME, checked against what they must be."""

from __future__ import annotations

import numpy as np
from conftest import write_store
from scipy.stats import multivariate_normal

from pipeline.escalate import transferability as t
from pipeline.store.reader import read_store


def _clusters(separation: float, n: int = 120, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n // 3)
    centres = rng.normal(0, 1, (3, d)) * separation
    return (centres[y] + rng.normal(0, 1, (n, d))).astype(np.float32), y


def test_knn_separates_clusters_from_noise():
    X, y = _clusters(10.0)
    assert t.knn_accuracy(X, y) == 1.0
    X, y = _clusters(0.0)
    assert t.knn_accuracy(X, y) < 0.6  # chance is 1/3


def test_logme_is_the_maximised_evidence_per_image():
    """At its fixed point LogME is, per class, the largest log marginal likelihood of the class's indicator
    under indicator = Xw + noise, w ~ N(0, 1/alpha), noise ~ N(0, 1/beta), per image; then the mean over
    classes. A fine grid over (alpha, beta) must come close to it from below."""
    X, y = _clusters(2.0, n=60, d=5)
    X = X.astype(float)

    def best_evidence(target):
        def evidence(alpha, beta):
            cov = X @ X.T / alpha + np.eye(len(X)) / beta
            return multivariate_normal(np.zeros(len(X)), cov).logpdf(target) / len(X)
        return max(evidence(a, b) for a in np.logspace(-3, 3, 41) for b in np.logspace(-2, 2, 41))

    labels = (y == 0).astype(int)
    grid = np.mean([best_evidence((labels == k).astype(float)) for k in (0, 1)])
    assert grid - 1e-6 <= t.logme(X, labels) <= grid + 0.02


def test_logme_prefers_codes_that_explain_the_labels():
    good, y = _clusters(5.0)
    noise, _ = _clusters(0.0, seed=1)
    assert t.logme(good, y) > t.logme(noise, y)


def test_layer_scores_read_the_training_rows_of_a_store(tmp_path):
    X, y = _clusters(10.0)
    noise, _ = _clusters(0.0, seed=1)
    write_store(tmp_path / "s.h5", {"early": noise, "late": X}, y, ["a", "b", "c"])
    store = read_store(tmp_path / "s.h5")
    scores = t.layer_scores(store, ["early", "late"], np.arange(90))
    assert scores["late"].knn_accuracy == 1.0 and scores["early"].knn_accuracy < 0.7
    assert scores["late"].logme > scores["early"].logme
