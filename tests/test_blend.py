"""The k-NN + softmax blend: a model kind like the others, its k and weight chosen in the inner folds."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blobs, write_store
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from pipeline.errors import UserError
from pipeline.linear.blend import KnnBlend
from pipeline.linear.bundle import load_bundle
from pipeline.linear.config import FitConfig
from pipeline.linear.fit import fit


def _data(spread=4.0):
    X, _, y = blobs((30, 30, 30), dim=16, spread=spread)
    return X.astype(np.float64), y


def test_its_probabilities_sum_to_one_and_its_ends_are_softmax_and_knn():
    X, y = _data()
    train, test = np.arange(0, 90, 2), np.arange(1, 90, 2)
    softmax = LogisticRegression(C=0.1, max_iter=2000).fit(X[train], y[train])
    knn = KNeighborsClassifier(5, metric="cosine", algorithm="brute").fit(X[train], y[train])
    for weight in (0.0, 0.3, 1.0):
        proba = KnnBlend(C=0.1, k=5, weight=weight).fit(X[train], y[train]).predict_proba(X[test])
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        if weight == 0.0:
            np.testing.assert_allclose(proba, softmax.predict_proba(X[test]), atol=1e-8)
        if weight == 1.0:
            np.testing.assert_allclose(proba, knn.predict_proba(X[test]), atol=1e-6)


def test_a_new_query_is_searched_anew():
    X, y = _data()
    blend = KnnBlend(C=0.1, k=5, weight=1.0).fit(X, y)
    first = blend.predict_proba(X[:10])
    np.testing.assert_allclose(blend.predict_proba(X[10:20]), KnnBlend(C=0.1, k=5, weight=1.0).fit(X, y)
                               .predict_proba(X[10:20]))
    blend.set_params(k=20)  # more neighbours than were searched for the same query
    assert not np.allclose(blend.predict_proba(X[:10]), first)


def test_fit_chooses_k_and_weight_and_the_bundle_predicts(tmp_path):
    X, y = _data(spread=2.0)
    store = write_store(tmp_path / "f.h5", {"penultimate": np.abs(X)}, y, ["a", "b", "c"])
    result = fit(FitConfig(store=store, out=tmp_path / "run", classifiers=("blend", "softmax"), repeats=1, jobs=1,
                           progress=False))
    final = result.final["blend"].hyper
    assert final["k"] in (5, 10, 20) and final["weight"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert "k=" in result.format() and result.results[0].scores["accuracy"].mean > 0.8
    bundle = load_bundle(tmp_path / "run" / "blend.skops")
    assert bundle.estimator.named_steps["clf"].k == final["k"]
    proba = bundle.estimator.predict_proba(np.abs(X))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    from pipeline.deploy.export import classifier_network

    with pytest.raises(UserError, match="does not export: its k-NN vote"):
        classifier_network(tmp_path / "run" / "blend.skops")
