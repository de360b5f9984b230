"""The registry of model kinds: every part of the project asks it, so a new classifier is one entry."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import blobs, write_store

from pipeline.errors import UserError
from pipeline.linear.bundle import TRUSTED, load_bundle
from pipeline.linear.config import FitConfig
from pipeline.linear.fit import fit
from pipeline.linear.kinds import (
    CLASSIFICATION,
    CLASSIFIERS,
    KINDS,
    ModelKind,
    classifiers,
    get_kind,
    is_network,
    trusted_types,
)


def test_the_registry_describes_every_kind():
    assert classifiers() == ("svm", "softmax", "blend") and CLASSIFIERS == ("svm", "softmax")
    assert [k for k in KINDS if not KINDS[k].linear] == ["fine-tuned"] and is_network("runs/x/model.keras")
    for kind in KINDS.values():
        assert kind.file.endswith(".keras" if not kind.linear else ".skops")
        assert kind.linear == (kind.build is not None) and (not kind.linear or kind.grid)
    assert get_kind("svm").calibrated and not get_kind("softmax").calibrated and get_kind("ridge").unexported
    assert set(TRUSTED) == set(trusted_types()) >= {"pipeline.linear.svm.LinearSVM",
                                                     "pipeline.linear.scaling.PowerScaler"}
    with pytest.raises(UserError, match="must be one of svm, softmax, blend, svm-ovr, logistic-ovr, ridge, fine-tuned"):
        get_kind("forest")


def test_a_new_classifier_is_one_entry(tmp_path, monkeypatch):
    """A ridge classifier, registered and nothing else: cross-validated, refitted, Platt-calibrated, saved as a
    bundle that loads and predicts, and folded into an exported head, through the registry alone."""
    import keras
    from sklearn.linear_model import RidgeClassifier

    from pipeline.deploy.export import _head

    def build(C, class_weight=None):
        return RidgeClassifier(alpha=1 / C, class_weight=class_weight)

    kind = ModelKind("ridge_classifier", CLASSIFICATION, "ridge_classifier.skops", "calibrated ridge scores",
                     (0.01, 1.0, 100.0), build=build,
                     path=lambda X, y, grid, w=None: (build(C, w).fit(X, y) for C in grid), calibrated=True)
    monkeypatch.setitem(KINDS, kind.name, kind)
    X, _, y = blobs()
    store = write_store(tmp_path / "f.h5", {"x": X}, y, ["a", "b", "c"])
    result = fit(FitConfig(store=store, out=tmp_path / "run", classifiers=(kind.name,), repeats=1, jobs=1))
    assert result.results[0].scores["accuracy"].mean > 0.9
    assert result.final[kind.name].bundle == kind.file and result.protocol.c_grid == {kind.name: list(kind.grid)}
    bundle = load_bundle(tmp_path / "run" / kind.file)
    proba = bundle.estimator.predict_proba(X[:8])
    assert bundle.classifier == kind.name and np.allclose(proba.sum(axis=1), 1)
    assert (proba.argmax(axis=1) == y[:8]).all()
    codes = keras.Input((X.shape[1],))
    exported = keras.Model(codes, _head(bundle.estimator, codes, X.shape[1]))
    np.testing.assert_allclose(exported.predict(X[:8], verbose=0), proba, atol=1e-5)
