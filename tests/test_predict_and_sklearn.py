"""With a real backbone: predict from a bundle, new classes without starting over, the sklearn transformer."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from conftest import write_images
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from pipeline.deploy.config import PredictConfig
from pipeline.deploy.predict import predict_images, write_csv
from pipeline.errors import UserError
from pipeline.linear.bundle import load_bundle, save_bundle
from pipeline.linear.config import FitConfig
from pipeline.linear.fit import fit
from pipeline.linear.svm import LinearSVM
from pipeline.store import extract as extract_module
from pipeline.store.config import ExtractConfig
from pipeline.store.extract import extract
from pipeline.store.transformer import CodesTransformer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    write_images(root / "data", {"red": 12, "green": 12})
    extract(ExtractConfig(data=root / "data", out=root / "f.h5", progress=False))
    fit(FitConfig(store=root / "f.h5", out=root / "run", jobs=1))
    return root


def test_predict_files_folders_globs_and_bad_files(trained, tmp_path):
    write_images(tmp_path / "new", {"": 2}, seed=5)
    (tmp_path / "new" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    inputs = [tmp_path / "new", str(trained / "data" / "red" / "img_000*.png"), tmp_path / "missing.png"]
    predictions, _ = predict_images(PredictConfig(trained / "run" / "softmax.skops", tuple(inputs), top_k=2,
                                                  progress=False))
    by_path = {p.path: p for p in predictions}
    assert len(predictions) == 2 + 1 + 10 + 1
    assert "cannot decode" in by_path[str(tmp_path / "new" / "broken.jpg")].skipped or \
        "not an image" in by_path[str(tmp_path / "new" / "broken.jpg")].skipped
    assert by_path[str(tmp_path / "missing.png")].skipped == "file not found"
    reds = [p for p in predictions if "/red/" in p.path]
    assert all(p.top[0][0] == "red" for p in reds), "training images come back with their own class"
    assert all(abs(sum(prob for _, prob in p.top) - 1) < 1e-6 for p in reds), "two classes, top-2 sums to 1"
    write_csv(predictions, tmp_path / "p.csv", 2)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
    assert len(rows) == len(predictions) and rows[0].keys() >= {"path", "class_1", "probability_2", "skipped"}


def test_svm_bundle_predicts_calibrated_probabilities(trained):
    predictions, description = predict_images(PredictConfig(trained / "run" / "svm.skops",
                                                            (trained / "data" / "green",), progress=False))
    assert "calibrated" in description
    assert all(p.top[0][0] == "green" and 0.5 < p.top[0][1] <= 1 for p in predictions)


def test_bundle_for_other_weights_is_refused(trained, tmp_path):
    bundle = load_bundle(trained / "run" / "softmax.skops")
    bundle.store_config = {**bundle.store_config, "weights_checksum": "0" * 64}
    save_bundle(bundle, tmp_path / "other.skops")
    with pytest.raises(UserError, match="weights .* differ"):
        predict_images(PredictConfig(tmp_path / "other.skops", (trained / "data" / "red",), progress=False))


def test_new_class_without_starting_over(trained, tmp_path):
    data = tmp_path / "data"
    write_images(data, {"red": 12, "green": 12})
    extract(ExtractConfig(data=data, out=tmp_path / "f.h5", progress=False))
    write_images(data, {"red": 0, "green": 0, "blue": 8}, seed=9)
    result = extract(ExtractConfig(data=data, out=tmp_path / "f.h5", progress=False))
    assert (result.extracted, result.reused) == (8, 24), "only the new class's images are extracted"
    fit(FitConfig(store=tmp_path / "f.h5", out=tmp_path / "run", classifiers=("softmax",), jobs=1))
    bundle = load_bundle(tmp_path / "run" / "softmax.skops")
    assert bundle.class_names == ["blue", "green", "red"]


def test_transformer_in_pipeline_grid_search_and_cross_val(trained, tmp_path, monkeypatch):
    paths = sorted(str(p) for p in (trained / "data").rglob("*.png"))
    labels = [0 if "/red/" in p else 1 for p in paths]
    codes = CodesTransformer(cache=tmp_path / "cache.h5")
    model = make_pipeline(codes, StandardScaler(), LinearSVM())
    scores = cross_val_score(model, paths, labels, cv=3)
    assert scores.mean() > 0.75, "well above chance (0.5) on these noisy synthetic images"
    computed = []
    real = extract_module.iter_codes
    monkeypatch.setattr(extract_module, "iter_codes", lambda m, files, *a, **k: computed.append(len(files))
                        or real(m, files, *a, **k))
    search = GridSearchCV(model, {"linearsvm__C": [1e-3, 1e-1]}, cv=3).fit(paths, labels)
    assert search.best_score_ > 0.75
    assert sum(computed) == 0, "every code comes from the cache on later calls"
    X = CodesTransformer(cache=tmp_path / "cache.h5").fit(paths[:3]).transform(paths[:3][::-1])
    assert X.shape == (3, 1280)
    np.testing.assert_array_equal(X[0], codes.fit(paths[2:3]).transform(paths[2:3])[0])


def test_transformer_follows_estimator_conventions(tmp_path):
    name = CodesTransformer.__name__
    check_no_attributes_set_in_init(name, CodesTransformer())
    check_get_params_invariance(name, CodesTransformer())
    check_set_params(name, CodesTransformer())
    check_parameters_default_constructible(name, CodesTransformer())
    assert clone(CodesTransformer(layer="stage4")).get_params()["layer"] == "stage4"
    with pytest.raises(ValueError, match="1-D sequence of image paths"):
        CodesTransformer().fit(np.zeros((3, 4)))
    bad = tmp_path / "bad.png"
    bad.write_text("no")
    with pytest.raises(UserError, match="could not be decoded"):
        CodesTransformer(cache=tmp_path / "c.h5").fit([bad]).transform([bad])
