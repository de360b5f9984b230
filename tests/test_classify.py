"""The fit stage: the linear SVM, nested cross-validation, bundles, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import blobs, run_command, write_images, write_store
from sklearn.exceptions import ConvergenceWarning
from sklearn.svm import LinearSVC
from sklearn.utils.estimator_checks import check_estimator

from pipeline.errors import UserError
from pipeline.linear import cv, models
from pipeline.linear.bundle import load_bundle, save_bundle
from pipeline.linear.config import FitConfig
from pipeline.linear.fit import fit
from pipeline.linear.svm import LinearSVM, svm_path
from pipeline.store.reader import read_store


def test_linear_svm_passes_scikit_learn_checks():
    failed = [r for r in check_estimator(LinearSVM(), on_fail=None) if r["status"] == "failed"]
    assert not failed, [r["check_name"] for r in failed]


@pytest.mark.parametrize("C", [1e-3, 1e-1, 1.0])
def test_linear_svm_solves_linearsvc_objective(C):
    X, _, y = blobs(spread=3.0)
    ours = LinearSVM(C=C).fit(X, y)
    # liblinear penalises the intercept; a large intercept_scaling makes that negligible.
    theirs = LinearSVC(C=C, intercept_scaling=1000, tol=1e-8, max_iter=100_000).fit(X, y)
    assert np.corrcoef(ours.coef_.ravel(), theirs.coef_.ravel())[0, 1] > 0.999
    assert (ours.predict(X) == theirs.predict(X)).mean() > 0.98


def test_linear_svm_warns_when_it_does_not_converge():
    X, _, y = blobs(spread=3.0)
    with pytest.warns(ConvergenceWarning):
        LinearSVM(C=10.0, max_iter=20).fit(X, y)


def _svm_objective(model, X, y) -> float:
    """LinearSVC's primal objective (squared hinge, L2, unpenalised intercept) at a fitted model."""
    targets = np.where(y[:, None] == model.classes_[None, :], 1.0, -1.0)
    scores = X.astype(np.float64) @ model.coef_.T + model.intercept_
    return 0.5 * float((model.coef_ ** 2).sum()) + model.C * float((np.maximum(0, 1 - targets * scores) ** 2).sum())


def test_svm_path_equals_separate_fits():
    """Warm starts along the path reach the optimum a cold start reaches. L-BFGS stops on a gradient tolerance,
    not at the exact optimum, and where it stops depends on BLAS's rounding (AVX2 and AVX-512 kernels, one or
    two threads): the objective agrees to 1e-4 of itself (seen: 3e-6), and since it is 1-strongly convex in the
    weights the two solutions lie within sqrt(2 x the gap) of each other, so they predict alike."""
    X, _, y = blobs()
    for fitted in svm_path(X, y, [1e-3, 1e-2, 1e-1]):
        _assert_same_optimum(fitted, LinearSVM(C=fitted.C).fit(X, y), X, y)


def _assert_same_optimum(one, other, X, y) -> None:
    a, b = _svm_objective(one, X, y), _svm_objective(other, X, y)
    assert abs(a - b) <= 1e-4 * b
    assert np.linalg.norm(one.coef_ - other.coef_) <= np.sqrt(2 * 1e-4 * b)
    np.testing.assert_array_equal(one.predict(X), other.predict(X))


def test_svm_survives_lapacks_svd_not_converging(monkeypatch):
    """gesdd can fail on float32 codes (it did on 2,520 clipart images): the SVM falls back to gesvd, same fit."""
    X, _, y = blobs(n_per_class=(10, 10, 10), dim=64)  # fewer images than dimensions: the SVD path
    expected = LinearSVM(C=1e-2).fit(X, y)

    def fails(*args, **kwargs):
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(np.linalg, "svd", fails)
    _assert_same_optimum(LinearSVM(C=1e-2).fit(X, y), expected, X, y)


def _fit(tmp_path, codes, y, names, **kwargs):
    store = write_store(tmp_path / "f.h5", codes, y, names)
    return fit(FitConfig(store=store, out=tmp_path / "run", jobs=1, **kwargs)).to_json()


def test_fit_picks_the_informative_layer_and_writes_everything(tmp_path):
    X, noise, y = blobs()
    metrics = _fit(tmp_path, {"noise": noise, "signal": X}, y, ["a", "b", "c"],
                   layers=("noise", "signal", "noise+signal"))
    by = {(r["layer"], r["classifier"]): r for r in metrics["results"]}
    assert set(by) == {(layer, kind) for layer in ("noise", "signal", "noise+signal") for kind in ("svm", "softmax")}
    assert metrics["best"]["layer"] in ("signal", "noise+signal")
    for kind in ("svm", "softmax"):
        assert by[("signal", kind)]["accuracy"]["mean"] > 0.95
        assert by[("noise", kind)]["accuracy"]["mean"] < 0.6
        acc = by[("signal", kind)]["accuracy"]
        assert len(acc["folds"]) == 15 and acc["ci95"][0] <= acc["mean"] <= acc["ci95"][1]
        assert set(by[("signal", kind)]["per_class"]) == {"a", "b", "c"}
        bundle = load_bundle(tmp_path / "run" / f"{kind}.skops")
        assert bundle.layer == metrics["final"][kind]["layer"] and bundle.class_names == ["a", "b", "c"]
        probabilities = bundle.estimator.predict_proba(read_store(tmp_path / "f.h5").codes(bundle.layer)[:5])
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-6)
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["protocol"]["outer_folds"] == 5 and on_disk["protocol"]["repeats"] == 3
    again = fit(FitConfig(store=tmp_path / "f.h5", out=tmp_path / "again", jobs=1, classifiers=("svm",), repeats=1))
    assert "best: svm on noise+signal" in again.format()  # by default, every stored layer joined


def test_choice_of_C_never_sees_the_outer_test_fold(monkeypatch):
    X, _, y = blobs()
    seen = []
    real = cv.tune_C

    def spy(kind, Xs, ys, *args):
        seen.append(len(ys))
        return real(kind, Xs, ys, *args)

    monkeypatch.setattr(cv, "tune_C", spy)
    cv.cross_validate({"x": X}, y, ["a", "b", "c"], ("softmax",), folds=5, repeats=1, jobs=1)
    assert seen == [72] * 5, "C is chosen on the 4/5 of the data that trains each outer fold"


def test_folds_never_exceed_the_smallest_class(tmp_path):
    X, _, y = blobs((20, 20, 3))
    metrics = _fit(tmp_path, {"x": X}, y, ["a", "b", "c"], classifiers=("softmax",))
    assert metrics["protocol"]["outer_folds"] == 3
    assert "class c has 3 images" in metrics["protocol"]["notes"][0]


def test_held_out_test_split_and_test_store(tmp_path):
    X, _, y = blobs((40, 40, 40))
    metrics = _fit(tmp_path, {"x": X}, y, ["a", "b", "c"], classifiers=("svm",), test_size=0.25,
                   duplicate_threshold=None)
    assert metrics["final"]["svm"]["test"]["images"] == 30
    assert metrics["final"]["svm"]["test"]["accuracy"] > 0.9
    assert sum(metrics["results"][0]["per_class"][c]["support"] for c in "abc") == 90 * 3  # 3 repeats
    Xt, _, yt = blobs((10, 10, 10), seed=0)
    test_store = write_store(tmp_path / "t.h5", {"x": Xt}, yt, ["a", "b", "c"])
    result = fit(FitConfig(store=tmp_path / "f.h5", out=tmp_path / "run2", classifiers=("softmax",),
                           test_store=test_store, jobs=1))
    assert result.final["softmax"].test.images == 30


def test_manifest_groups_stay_on_one_side_of_every_split(tmp_path, monkeypatch):
    """A group column (one patient, one object) keeps its images together: test split, outer and inner folds, and
    the SVM's calibration folds."""
    X, _, y = blobs((40, 40, 40), spread=3.0)
    names = [f"p{i // 4}" for i in range(len(y))]  # four images per patient, one class each
    store = write_store(tmp_path / "f.h5", {"x": X}, y, ["a", "b", "c"], groups=names)
    assert read_store(store).groups == names
    splits = []
    real_inner, real_calibration = cv._inner_splits, models._calibration_folds

    def inner(y, seed, groups=None):
        out = list(real_inner(y, seed, groups))
        splits.append((groups, out))
        return out

    def calibration(y, groups):
        out = real_calibration(y, groups)
        splits.append((groups, out))
        return out

    monkeypatch.setattr(cv, "_inner_splits", inner)
    monkeypatch.setattr(models, "_calibration_folds", calibration)
    result = fit(FitConfig(store=store, out=tmp_path / "run", classifiers=("svm",), test_size=0.25, repeats=1,
                           duplicate_threshold=None, jobs=1))
    metrics = result.to_json()
    test = metrics["final"]["svm"]["test"]["images"]
    assert 20 <= test <= 40 and test % 4 == 0, "whole patients are held out, about a quarter of them"
    assert metrics["duplicates"]["manifest_groups"] == 30
    assert "manifest's 30 group(s)" in " ".join(metrics["protocol"]["notes"])
    grouped = [(groups, folds) for groups, folds in splits if groups is not None]
    assert len(grouped) >= 5 + 1 + 1, "the outer folds' inner splits, the final C's, the final calibration"
    assert len(splits) - len(grouped) == 5, "only the ungrouped comparison splits groups"
    for groups, folds in grouped:
        for train, test in folds:
            assert not set(groups[train]) & set(groups[test])
    outer = cv.outer_folds(y[:90], 5, 1, 0, np.arange(90) // 4)
    for train, test in outer:
        assert not set(np.arange(90)[train] // 4) & set(np.arange(90)[test] // 4)


def test_views_of_a_test_image_never_train_its_model(monkeypatch):
    """Every split is of images: a model trains on all the views of its training images and is scored on the mean
    over the views of other images only (feature 0 carries the image's index, unscaled)."""
    from sklearn.preprocessing import FunctionTransformer

    from pipeline.linear import tta

    X, _, y = blobs((12, 12, 12))
    ids = np.random.default_rng(0).permutation(len(y))
    stack = np.stack([X, X + np.random.default_rng(1).normal(0, 0.3, X.shape).astype(np.float32)])
    stack[:, :, 0] = ids
    for module in (cv, models):  # C's choice and the models trained
        monkeypatch.setattr(module, "scaler", lambda normalise: FunctionTransformer())
    events = []
    real_rows, real_predict = tta.training_rows, tta.predict

    def training_rows(X, y, groups=None):
        out = real_rows(X, y, groups)
        events.append(("train", out[0][:, 0].astype(int)))
        return out

    def predict(model, X):
        events.append(("predict", tta.stacked(X)[:, :, 0].astype(int)))
        return real_predict(model, X)

    monkeypatch.setattr(tta, "training_rows", training_rows)
    monkeypatch.setattr(tta, "predict", predict)
    results, protocol = cv.cross_validate({"x": stack}, y, ["a", "b", "c"], ("softmax", "svm"), folds=3,
                                                repeats=1, jobs=1, views=cv.view_options(("flip",)))
    assert [r.views for r in results] == [(), ("flip",), (), ("flip",)] and protocol.views == [[], ["flip"]]
    trained = None
    for what, seen in events:
        if what == "train":
            trained = seen
            counts = np.unique(seen, return_counts=True)[1]
            assert len(set(counts)) == 1, "every training image comes with all its views or with none"
        else:
            assert (seen == seen[0]).all(), "the planes averaged over are views of one image"
            assert not set(seen[0]) & set(trained), "no view of a scored image was trained on"
    assert any(what == "predict" and len(seen) == 2 for what, seen in events), "scored on the mean over both"
    assert sum(what == "train" and len(seen) == 2 * 24 for what, seen in events) == 6, "both views train outer folds"


def test_fit_with_views_compares_them_and_the_bundle_averages(tmp_path):
    from pipeline.linear import tta

    X, _, y = blobs((20, 20, 20), spread=2.0)
    flipped = X + np.random.default_rng(2).normal(0, 1.0, X.shape).astype(np.float32)
    store = write_store(tmp_path / "f.h5", {"x": X}, y, ["a", "b", "c"], views={"flip": {"x": flipped}})
    auto = fit(FitConfig(store=store, out=tmp_path / "auto", classifiers=("softmax",), repeats=1, jobs=1))
    assert sorted(r.views for r in auto.results) == [(), ("flip",)]
    assert "softmax +flip" in auto.format()
    on = fit(FitConfig(store=store, out=tmp_path / "on", classifiers=("softmax",), repeats=1, jobs=1, views="on",
                       test_size=0.25))
    assert [r.views for r in on.results] == [("flip",)] and on.to_json()["final"]["softmax"]["views"] == ["flip"]
    bundle = load_bundle(tmp_path / "on" / "softmax.skops")
    assert bundle.views == ["flip"]
    stack = read_store(store).view_codes("x")
    np.testing.assert_allclose(tta.scores(bundle.estimator, stack),
                               (bundle.estimator.predict_proba(X) + bundle.estimator.predict_proba(flipped)) / 2)
    with pytest.raises(UserError, match="holds no views"):
        fit(FitConfig(store=write_store(tmp_path / "plain.h5", {"x": X}, y, ["a", "b", "c"]), out=tmp_path / "x",
                      views="on"))
    bundle.views = ["rotate"]
    save_bundle(bundle, tmp_path / "crafted.skops")
    with pytest.raises(UserError, match="views this version does not know"):
        load_bundle(tmp_path / "crafted.skops")


def test_groups_join_the_manifest_and_near_duplicates():
    from pipeline.linear.duplicates import joined, manifest_groups
    named = manifest_groups(["a", "", "a", "b", "", "b"])
    assert named[0] == named[2] and named[3] == named[5] and len(set(named)) == 4
    both = joined(named, np.array([0, 1, 2, 3, 1, 5]))  # rows 1 and 4 are near-duplicates
    assert both.tolist() == [0, 1, 0, 2, 1, 2]


def test_class_weighting_and_the_metric_follow_the_imbalance(tmp_path):
    """Balanced weights compete once the largest class is 1.5x the smallest, and macro-F1 chooses once it is
    over 3x; the saved model is the candidate the choice named."""
    assert cv.class_weightings(np.repeat([0, 1], [20, 25])) == (None,)
    assert cv.class_weightings(np.repeat([0, 1], [20, 30])) == (None, "balanced")
    assert cv.class_weightings(np.repeat([0, 1], [20, 30]), "none") == (None,)
    assert cv.selection_metric(np.repeat([0, 1], [20, 60])) == "accuracy"
    assert cv.selection_metric(np.repeat([0, 1], [20, 61])) == "macro_f1"
    X, _, y = blobs((80, 10, 10), spread=5.0)
    metrics = _fit(tmp_path, {"x": X}, y, ["a", "b", "c"], classifiers=("softmax",), duplicate_threshold=None)
    assert metrics["protocol"]["metric"] == "macro_f1" and metrics["protocol"]["class_weights"] == [None, "balanced"]
    assert {r.get("class_weight") for r in metrics["results"]} == {None, "balanced"}
    best = max(metrics["results"], key=lambda r: r["macro_f1"]["mean"])
    assert metrics["best"].get("class_weight") == best.get("class_weight")
    assert metrics["final"]["softmax"].get("class_weight") == best.get("class_weight")
    with pytest.raises(UserError, match="must be one of auto, none, balanced"):
        _fit(tmp_path, {"x": X}, y, ["a", "b", "c"], class_weight="heavy")


def test_nested_choice_picks_by_inner_scores_fold_by_fold():
    from pipeline.metrics import Score
    from pipeline.results import CVResult

    def candidate(layer, outer, inner):
        scores = {name: Score(float(np.mean(outer)), folds=tuple(outer)) for name in ("accuracy", "macro_f1")}
        return CVResult(layer, "svm", scores, {}, fold_inner=tuple(inner))

    a = candidate("a", [0.9, 0.5, 0.9], [0.8, 0.8, 0.6])
    b = candidate("b", [0.6, 0.7, 0.8], [0.7, 0.9, 0.7])
    chosen = cv.nested_choice([a, b], 90, 3)
    assert chosen.scores["accuracy"].folds == (0.9, 0.7, 0.8), "each fold scores the candidate its inner split chose"
    assert chosen.chosen == {"svm on b": 2, "svm on a": 1}
    assert cv.nested_choice([a], 90, 3) is None


def test_fit_reports_the_nested_choice(tmp_path):
    X, noise, y = blobs(spread=4.0)
    result = fit(FitConfig(store=write_store(tmp_path / "f.h5", {"noise": noise, "signal": X}, y, ["a", "b", "c"]),
                           out=tmp_path / "run", duplicate_threshold=None, jobs=1))
    nested = result.to_json()["nested_choice"]
    assert sum(nested["chosen_candidate"].values()) == 15
    assert all("signal" in name for name in nested["chosen_candidate"]), "noise never wins inside a fold"
    assert nested["accuracy"]["mean"] <= max(r.primary.mean for r in result.results) + 1e-6
    assert "chosen inside each outer fold instead" in result.format()
    saved = [line for line in result.format().splitlines() if line.startswith("saved ")]
    assert len(saved) == 2 and all(", C=" in line for line in saved), "each saved model's own C"
    assert "C (most chosen): the value the outer folds picked most often" in result.format()


@pytest.mark.parametrize("case,message", [
    ("one_class", "only one class"),
    ("empty_class", "class c has no images"),
    ("single_image", "class c has a single image"),
    ("nan", "NaN or infinite"),
    ("unlabelled", "has no labels"),
])
def test_bad_stores_are_refused_with_one_line(tmp_path, case, message):
    X, _, y = blobs()
    names = ["a", "b", "c"]
    if case == "one_class":
        X, y, names = X[:30], y[:30], ["a"]
    elif case == "empty_class":
        X, y, names = X[:60], y[:60], ["a", "b", "c"]
    elif case == "single_image":
        X, y = X[:61], y[:61]
    elif case == "nan":
        X[3, 2] = np.nan
    elif case == "unlabelled":
        y, names = None, None
    with pytest.raises(UserError, match=message):
        _fit(tmp_path, {"x": X}, y, names)


def test_missing_and_corrupt_store(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        fit(FitConfig(store=tmp_path / "none.h5", out=tmp_path / "run"))
    (tmp_path / "bad.h5").write_bytes(b"garbage")
    with pytest.raises(UserError, match="is corrupt or unreadable"):
        fit(FitConfig(store=tmp_path / "bad.h5", out=tmp_path / "run"))


def test_bundle_checksum_is_checked(tmp_path):
    X, _, y = blobs()
    _fit(tmp_path, {"x": X}, y, ["a", "b", "c"], classifiers=("softmax",))
    path = tmp_path / "run" / "softmax.skops"
    bundle = load_bundle(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="fails its sha256 check"):
        load_bundle(path)
    save_bundle(bundle, path)
    (tmp_path / "run" / "softmax.skops.sha256").unlink()
    with pytest.raises(UserError, match="sha256 is missing|integrity"):
        load_bundle(path)
    store = write_store(tmp_path / "codes.h5", {"x": X}, y, ["a", "b", "c"])
    write_images(tmp_path / "images", {"": 2}, size=16)
    done = run_command("predict", store, tmp_path / "images")  # a store where the bundle belongs is named as one
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: {store} is a store of codes, not a model bundle: fit a model on it and give its .skops file")


def test_command_line_error_is_one_line(tmp_path):
    X, _, y = blobs((30, 30, 30))
    write_store(tmp_path / "one.h5", {"x": X[:30]}, y[:30], ["a"])
    done = run_command("fit_svm", tmp_path / "one.h5", "--out", tmp_path / "run")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error:") and "Traceback" not in done.stderr


def _checksum(path):
    from pipeline.provenance import file_sha256

    path.with_name(path.name + ".sha256").write_text(f"{file_sha256(path)}  {path.name}\n")


def test_crafted_bundles_are_refused_without_running(tmp_path):
    """A matching checksum is no licence: a pickle or a skops file naming other types never runs."""
    import os
    import pickle

    import skops.io as sio

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    old = tmp_path / "old.skops"
    old.write_bytes(pickle.dumps(Payload()))
    _checksum(old)
    with pytest.raises(UserError, match="older version as a pickle"):
        load_bundle(old)
    crafted = tmp_path / "crafted.skops"
    sio.dump({"meta": "{}", "estimator": os.system}, crafted)
    _checksum(crafted)
    with pytest.raises(UserError, match="not trusted.*system"):
        load_bundle(crafted)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00garbage"])
def test_empty_or_binary_checksum_file_is_one_line(tmp_path, content):
    X, _, y = blobs()
    _fit(tmp_path, {"x": X}, y, ["a", "b", "c"], classifiers=("softmax",))
    (tmp_path / "run" / "softmax.skops.sha256").write_bytes(content)
    with pytest.raises(UserError, match="empty or not a checksum file"):
        load_bundle(tmp_path / "run" / "softmax.skops")


def test_run_folder_is_replaced_as_a_set(tmp_path, monkeypatch):
    """A failure (or kill) while writing the new run leaves the old run whole and loadable."""
    from pipeline.linear import bundle as bundle_module

    X, _, y = blobs()
    first = _fit(tmp_path, {"x": X}, y, ["a", "b", "c"], repeats=1)
    saved = {kind: load_bundle(tmp_path / "run" / f"{kind}.skops").created for kind in ("svm", "softmax")}
    real, calls = bundle_module.save_bundle, []

    def dies_on_the_second(b, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(b, path)

    monkeypatch.setattr("pipeline.linear.fit.save_bundle", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        fit(FitConfig(store=tmp_path / "f.h5", out=tmp_path / "run", jobs=1, seed=1, repeats=1))
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["created"] == first["created"]
    for kind in ("svm", "softmax"):
        assert load_bundle(tmp_path / "run" / f"{kind}.skops").created == saved[kind]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("grouped", [False, True])
def test_the_svm_is_calibrated_where_a_class_has_one_image_or_group(grouped, tmp_path):
    """A fold's training part may hold a class once (its near-duplicates kept together): no inner fold can both
    train and calibrate on it, so the sigmoids are fitted on the training rows; the model saves and loads."""
    X, _, y = blobs((12, 12, 3), dim=8)
    groups = np.where(y == 2, 100, np.arange(len(y))) if grouped else None
    rows = np.arange(len(y)) if grouped else np.r_[0:24, 24]  # the third class: one group, or one image
    model = models.fit_with_C("svm", 1.0, X[rows], y[rows], groups=None if groups is None else groups[rows])
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-9)
    assert list(model.classes_) == [0, 1, 2] and (proba.argmax(1) == y).mean() > 0.9
