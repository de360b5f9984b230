"""Several labels per image: the manifest, folds that keep labels balanced, thresholds, the fit, predict and
export, and one-line refusals where a stage takes one label per image."""

import csv

import numpy as np
import pytest
from conftest import run_command, write_store
from PIL import Image

from pipeline.data.discover import discover
from pipeline.errors import UserError
from pipeline.linear import multilabel
from pipeline.linear.bundle import load_bundle
from pipeline.linear.config import FitConfig
from pipeline.linear.fit import fit
from pipeline.store.reader import read_store


def test_a_labels_column_gives_several_labels_per_image(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "m.csv").write_text("path,labels\na.png,car;sign\nb.png, sign \nc.png,tree;car;car\n")
    data = discover(tmp_path / "m.csv")
    assert data.multilabel and not data.labelled
    assert data.label_sets == [("car", "sign"), ("sign",), ("car", "tree")]
    assert data.class_names == ["car", "sign", "tree"]
    (tmp_path / "empty.csv").write_text("path,labels\na.png,car\nb.png,\n")
    with pytest.raises(UserError, match="line 3: b.png has no label"):
        discover(tmp_path / "empty.csv")
    (tmp_path / "both.csv").write_text("path,label,labels\na.png,car,car\n")
    with pytest.raises(UserError, match="keep one"):
        discover(tmp_path / "both.csv")


def _label_matrix(n=120, seed=0):
    """Three labels with different rates, co-occurring: the first on about half, the others rarer."""
    rng = np.random.default_rng(seed)
    a = rng.random(n) < 0.5
    return np.stack([a, rng.random(n) < np.where(a, 0.4, 0.1), rng.random(n) < 0.15], axis=1).astype(np.uint8)


def test_iterative_folds_keep_each_label_balanced():
    Y = _label_matrix()
    expected = Y.sum(axis=0) / 5
    splits = multilabel.folds(Y, 5, seed=0)
    assert sorted(np.concatenate([test for _, test in splits]).tolist()) == list(range(len(Y)))
    for _, test in splits:
        assert np.abs(Y[test].sum(axis=0) - expected).max() <= 1.0


def test_thresholds_maximise_f1_where_half_would_miss():
    Y = np.array([[1, 0], [1, 1], [1, 0], [0, 1], [0, 0], [0, 1]])
    proba = np.array([[0.35, 0.1], [0.4, 0.9], [0.3, 0.2], [0.1, 0.8], [0.2, 0.3], [0.0, 0.7]])  # label 0: low
    t = multilabel.best_thresholds(Y, proba)
    assert 0.2 < t[0] <= 0.3 and 0.3 < t[1] <= 0.7
    assert multilabel.scores(Y, proba, t)["micro_f1"] == 1.0 == multilabel.scores(Y, proba, t)["subset_accuracy"]
    at_half = multilabel.scores(Y, proba, np.array([0.5, 0.5]))
    assert at_half["macro_f1"] == 0.5 and at_half["map"] == 1.0  # label 0 missed at 0.5; ranking was perfect


def _store(path, seed=0):
    """Codes where labels a and b each shift their own dimensions, and label c is noise."""
    rng = np.random.default_rng(seed)
    Y = _label_matrix(150, seed)
    X = rng.normal(0, 1, (len(Y), 24)).astype(np.float32)
    X[:, :4] += 3 * Y[:, :1]
    X[:, 4:8] += 3 * Y[:, 1:2]
    return write_store(path, {"penultimate": X}, None, ["a", "b", "c"], multilabels=Y), Y


@pytest.mark.parametrize("classifier", ["softmax", pytest.param("svm", marks=pytest.mark.slow)])
def test_fit_makes_one_model_per_label_with_thresholds(classifier, tmp_path):
    store, Y = _store(tmp_path / "f.h5")
    assert read_store(store).multilabels.tolist() == Y.tolist()
    fitted = fit(FitConfig(store=store, out=tmp_path / "run", classifiers=(classifier,), folds=3, repeats=1,
                           test_size=0.2, jobs=1))
    result = fitted.to_json()
    assert result["task"] == "multilabel" and result["labels"] == 3
    assert [r["classifier"] for r in result["results"]] == [f"{'logistic' if classifier == 'softmax' else 'svm'}-ovr"]
    printed = fitted.format()
    assert "macro-F1" in printed and "subset accuracy" in printed, "the figures docs/fit.md promises"
    per_label = {line.split()[0]: line.split()[1:] for line in printed.splitlines()[-20:] if line.startswith("  ")}
    assert {"a", "b", "c"} <= set(per_label) and per_label["label"] == ["precision", "recall", "F1", "images"]
    for r in result["results"]:
        assert set(r) >= {"micro_f1", "macro_f1", "subset_accuracy", "map"}
        per = r["per_class"]
        assert min(per["a"]["f1"], per["b"]["f1"]) > 0.8 > per["c"]["f1"]  # the noise label is not learnt
    for kind, final in result["final"].items():
        assert len(final["thresholds"]) == 3 and final["test"]["images"] == 30
        bundle = load_bundle(tmp_path / "run" / final["bundle"])
        assert bundle.metrics["thresholds"] == final["thresholds"] and bundle.class_names == ["a", "b", "c"]
        assert bundle.estimator.predict_proba(np.zeros((2, 24), np.float32)).shape == (2, 3)


def test_a_label_on_too_few_images_is_one_line(tmp_path):
    Y = _label_matrix(40)
    Y[:, 2] = 0
    Y[:2, 2] = 1
    store = write_store(tmp_path / "f.h5", {"penultimate": np.random.default_rng(0).normal(size=(40, 8))}, None,
                        ["a", "b", "c"], multilabels=Y)
    done = run_command("fit_svm", store, "--out", tmp_path / "run")
    assert done.returncode == 2 and "label 'c' is on 2 of 40 images" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    """Images that may be red, may hold a white square, or neither ("plain"), with a manifest (the last image,
    red, filed as plain: a labelling mistake); a bundle."""
    root = tmp_path_factory.mktemp("street")
    rng = np.random.default_rng(0)
    rows = ["path,labels"]
    for i in range(48):
        red, square = i % 2 == 0, (i // 2) % 2 == 0
        pixels = rng.integers(60, 140, (48, 48, 3)).astype(np.uint8)
        if red:
            pixels[..., 0] = 230
        if square:
            pixels[8:24, 8:24] = 255
        Image.fromarray(pixels).save(root / f"{i}.png")
        names = [n for n, on in (("red", red), ("square", square)) if on and i != 46] or ["plain"]
        rows.append(f"{i}.png,{';'.join(names)}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    assert run_command("extract", root / "m.csv", "--out", root / "f.h5", "-q").returncode == 0
    done = run_command("fit_svm", root / "f.h5", "--out", root / "run", "--classifier", "softmax", "--folds", "3",
                       "--repeats", "1", "-q")
    assert done.returncode == 0, done.stderr
    return root


@pytest.mark.slow
def test_predict_gives_every_label_over_its_threshold_and_export_carries_them(street, tmp_path):
    bundle = street / "run" / "logistic_ovr.skops"
    out = tmp_path / "p.csv"
    done = run_command("predict", bundle, street / "0.png", street / "1.png", street / "3.png", "--out", out, "-q")
    assert done.returncode == 0, done.stderr
    with open(out) as f:
        given = {r["path"].rsplit("/", 1)[-1]: set(r["labels"].split(";")) for r in csv.DictReader(f)}
    assert given == {"0.png": {"red", "square"}, "1.png": {"square"}, "3.png": {"plain"}}
    assert "labels: " in done.stdout
    from pipeline.deploy.config import ExportConfig
    from pipeline.deploy.export import export
    from pipeline.deploy.predict import load_predictor
    from pipeline.deploy.runtime import ExportedModel

    onnx = export(ExportConfig(bundle, "onnx", tmp_path / "m.onnx"))
    assert ExportedModel(onnx).card.label_thresholds == load_bundle(bundle).metrics["thresholds"]
    predictor = load_predictor(bundle, engine="keras")
    from pipeline.data.decode import decode_image

    pixels = np.stack([decode_image(street / f"{i}.png", predictor.policy) for i in range(8)])
    expected = predictor.probabilities(pixels, 8)
    assert np.abs(ExportedModel(onnx)(pixels) - expected).max() < 1e-4


def test_stages_for_one_label_per_image_refuse_in_one_line(street, tmp_path):
    bundle = street / "run" / "logistic_ovr.skops"
    (tmp_path / "bus.csv").write_text("path,labels\n" + "".join(f"{street / f'{i}.png'},bus;red\n" for i in range(4)))
    for script, argv, message in [
        ("evaluate", ("--bundle", bundle, "--data", tmp_path / "bus.csv", "--out", tmp_path / "r", "--allow-outside"),
         "has labels the bundle was not trained on: bus"),
        ("finetune", (street / "m.csv", "--out", tmp_path / "ft"), "gives several labels per image"),
        ("run", (street / "m.csv", "--out", tmp_path / "run"), "for several labels per image, extract and fit"),
        ("suggest", (bundle, street, "--out", tmp_path / "s.csv"), "this is a multilabel bundle"),
        ("predict", (bundle, street / "0.png", "--reject"), "each label over its own threshold"),
        ("evaluate", ("--data", street / "m.csv", "--out", tmp_path / "g", "--features", tmp_path / "features",
                      "--finetune"), "several labels per image are compared on the codes alone"),
    ]:
        done = run_command(script, *argv, "-q")
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, (script,
                                                                                                     done.stderr)


def test_reports_give_the_tasks_figures_and_the_images_with_labels_wrong(street, tmp_path):
    import json

    done = run_command("evaluate", "--data", street / "m.csv", "--out", tmp_path / "grid", "--features",
                       tmp_path / "features", "--classifiers", "softmax", "--folds", "3", "--repeats", "1",
                       "--no-advice", "-q")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "grid" / "report.json").read_text())
    section = report["sections"][0]
    assert report["task"] == "multilabel" and section["labels"] == 3 and section["images"] == 48
    config = section["configs"][0]
    assert config["classifier"] == "logistic-ovr" and config["micro_f1"]["ci95"][0] <= config["micro_f1"]["mean"]
    wrong = section["best"]["wrong"]
    assert wrong[0]["path"] == "46.png" and wrong[0]["given"] == ["plain"] and "red" in wrong[0]["predicted"]
    html = (tmp_path / "grid" / "report.html").read_text()
    assert html.count("data:image/jpeg;base64,") == len(wrong) and "micro-F1" in html
    assert "| plain |" in (tmp_path / "grid" / "report.md").read_text()

    bundle = street / "run" / "logistic_ovr.skops"
    done = run_command("evaluate", "--bundle", bundle, "--data", street / "m.csv", "--out", tmp_path / "bundle",
                       "--features", tmp_path / "features", "--no-advice", "-q")
    assert done.returncode == 0, done.stderr
    section = json.loads((tmp_path / "bundle" / "report.json").read_text())["sections"][0]
    thresholds = load_bundle(bundle).metrics["thresholds"]
    assert [m["threshold"] for m in section["best"]["per_label"].values()] == pytest.approx(thresholds)
    assert {n: m["support"] for n, m in section["best"]["per_label"].items()} == {"plain": 13, "red": 23,
                                                                                    "square": 24}


def _objective(loss: str, C: float, coef, intercept, X, T) -> float:
    """The per-label objective summed over labels: 1/2 |w|^2 + C sum of the loss (the intercept unpenalised)."""
    margin = T * (X.astype(np.float64) @ coef.T + intercept)
    total = np.logaddexp(0, -margin) if loss == "logistic" else np.maximum(0, 1 - margin) ** 2
    return 0.5 * float((coef ** 2).sum()) + C * float(total.sum())


@pytest.mark.parametrize("loss", ["logistic", "squared_hinge"])
def test_every_label_at_once_reaches_one_model_per_labels_optimum(loss):
    """The joint path solves each label's own problem: scikit-learn's binary LogisticRegression, or the SVM's
    objective fitted for one label alone; compared by the objective they minimise (a tolerance any BLAS keeps)."""
    from sklearn.linear_model import LogisticRegression

    from pipeline.linear.svm import label_path

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 200)).astype(np.float32)
    Y = (X @ rng.normal(size=(200, 4)) * 0.1 + rng.normal(size=(60, 4)) > 0).astype(int)
    T = np.where(Y > 0, 1.0, -1.0)
    for C, coef, intercept, _ in label_path(X, T, [1e-3, 1e-1], loss):
        joint = _objective(loss, C, coef, intercept, X, T)
        alone = []
        for k in range(Y.shape[1]):
            if loss == "logistic":
                m = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, Y[:, k])
                alone.append((m.coef_, m.intercept_))
            else:
                (_, c, b, _), = label_path(X, T[:, [k]], [C], loss)
                alone.append((c, b))
        separate = sum(_objective(loss, C, c, b, X, T[:, [k]]) for k, (c, b) in enumerate(alone))
        assert abs(joint - separate) <= 1e-4 * separate
        np.testing.assert_array_equal(X @ coef.T + intercept > 0,
                                      np.hstack([X @ c.T + b for c, b in alone]) > 0)


def test_the_saved_svms_thresholds_are_its_decision_thresholds_through_platt():
    """A threshold chosen on decision values, passed through the saved model's increasing sigmoid, gives the same
    labels on the probabilities as on the decision values."""
    Y = _label_matrix()
    rng = np.random.default_rng(1)
    X = (Y @ rng.normal(size=(3, 24)) + rng.normal(size=(len(Y), 24))).astype(np.float32)
    model, hyper = multilabel.fit_final("svm-ovr", X, Y, "power", 0)
    C, decision_thresholds, _ = multilabel.tune("svm-ovr", X, Y, "power", 0)
    proba = model.predict_proba(X)
    scale, ovr = model.named_steps["scale"], model.named_steps["clf"]
    decisions = np.stack([e.calibrated_classifiers_[0].estimator.decision_function(scale.transform(X))
                          for e in ovr.estimators_], axis=1)
    agree = (proba >= np.array(hyper["thresholds"])) == (decisions >= decision_thresholds)
    assert agree.mean() > 0.99  # the rounding of the saved thresholds to 6 places aside


def test_hundreds_of_labels_some_on_three_images_fit_or_say_why(tmp_path):
    """Rare labels: each on 3 to 8 of 60 images. The check on each label's count covers what every fold and the
    saved SVMs' calibration need, so the fit finishes (before: scikit-learn's ValueError on 3-fold calibration)."""
    rng = np.random.default_rng(0)
    n, labels = 60, 200
    Y = np.zeros((n, labels), np.uint8)
    for k in range(labels):
        Y[rng.choice(n, size=rng.integers(3, 9), replace=False), k] = 1
    X = (Y @ rng.normal(size=(labels, 16)) + rng.normal(size=(n, 16))).astype(np.float32)
    store = write_store(tmp_path / "f.h5", {"penultimate": X}, None, [f"tag{k}" for k in range(labels)],
                        multilabels=Y)
    result = fit(FitConfig(store=store, out=tmp_path / "run", repeats=1, progress=False))
    assert len(load_bundle(tmp_path / "run" / "svm_ovr.skops").metrics["thresholds"]) == labels
    assert result.best.scores["map"].mean > 0
