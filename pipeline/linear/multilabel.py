"""Several labels per image: one linear model per label (one-vs-rest), each label's threshold chosen on
out-of-fold probabilities.

Folds keep the labels and their combinations balanced by iterative
stratification (Sechidis et al. 2011, as the ``iterative-stratification``
package implements it; plain stratification needs one label per image). Nested
as the single-label fit is: in each outer fold, C is chosen by the macro
average precision (threshold-free) of an inner 3-fold cross-validation, and
each label's threshold is the one with the best F1 on that inner
cross-validation's out-of-fold scores at the chosen C; the outer test part
then scores the model trained on the whole training part with those
thresholds. The saved model is made the same way on every image.

Inside the cross-validation every label is fitted at once, along the whole C
path, in one basis of the codes' row space (:func:`pipeline.linear.svm.label_path`):
as fast as one single-label fit, where one scikit-learn model per label and C
(three more for each SVM's calibration) took ten times as long. The SVM's
scores there are its decision values: the average precision and each label's
best threshold are the same under its (increasing) Platt sigmoid, through which
the saved model's thresholds become probabilities.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import Counter

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit
from joblib import Parallel, delayed
from scipy.special import expit
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_recall_fscore_support
from sklearn.pipeline import Pipeline

from .. import metrics
from ..errors import UserError
from ..machine import usable_cores
from ..results import CVResult, HeldOut, Protocol
from .jobs import run_folds
from .kinds import get_kind
from .scaling import scaler
from .svm import label_path

log = logging.getLogger(__name__)

SCORES = {"micro_f1": "micro-F1", "macro_f1": "macro-F1", "subset_accuracy": "subset accuracy", "map": "mAP"}
INNER_FOLDS = 3
MIN_IMAGES = 3  # with and without each label: what the inner folds and the SVM's calibration need


def check(Y: np.ndarray, names: list[str], what: str) -> None:
    """Each label must be on at least :data:`MIN_IMAGES` images and off at least as many; one clear line."""
    on = Y.sum(axis=0)
    for k, name in enumerate(names):
        if min(on[k], len(Y) - on[k]) < MIN_IMAGES:
            raise UserError(f"{what}: label {name!r} is on {int(on[k])} of {len(Y)} images; each label needs at "
                            f"least {MIN_IMAGES} images with it and {MIN_IMAGES} without")


def folds(Y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` iterative-stratified folds (train, test) of the rows of ``Y``."""
    return list(MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(Y)), Y))


def split_test(Y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, test rows), the labels balanced on both sides."""
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    return next(splitter.split(np.zeros(len(Y)), Y))


def scores(Y: np.ndarray, proba: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
    """Micro- and macro-F1 and subset accuracy (every label right) at ``thresholds``, and the mean over labels of
    the average precision (mAP, threshold-free)."""
    P = proba >= thresholds
    return {"micro_f1": float(f1_score(Y, P, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(Y, P, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(Y, P)),
            "map": float(average_precision_score(Y, proba, average="macro"))}


def per_label(Y: np.ndarray, P: np.ndarray, names: list[str]) -> dict:
    """Precision, recall, F1 and support of every label."""
    p, r, f, s = precision_recall_fscore_support(Y, P, average=None, zero_division=0)
    return {name: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k])}
            for k, name in enumerate(names)}


def best_thresholds(Y: np.ndarray, scores: np.ndarray, probabilities: bool = True) -> np.ndarray:
    """Per label, the threshold with the best F1 on these (out-of-fold) scores: halfway between the lowest score
    kept and the highest left out; ties go to the threshold nearest the middle (0.5 for probabilities, 0 for
    decision values)."""
    middle = 0.5 if probabilities else 0.0
    out = np.full(Y.shape[1], middle)
    for k in range(Y.shape[1]):
        values = np.unique(scores[:, k])
        low, high = (0.0, 1.0) if probabilities else (values[0] - 1.0, values[-1] + 1.0)
        cuts = np.concatenate([[low], (values[:-1] + values[1:]) / 2, [high]])
        on = Y[:, k].astype(bool)
        # F1 at every cut at once: the images at or over it are given the label
        given = (scores[:, k][None, :] >= cuts[:, None])
        true_positives = (given & on).sum(axis=1)
        f1 = 2 * true_positives / np.maximum(given.sum(axis=1) + on.sum(), 1)
        best = max(range(len(cuts)), key=lambda i: (round(float(f1[i]), 12), -abs(cuts[i] - middle)))
        out[k] = cuts[best]
    return out


def make(kind: str, C: float, normalise: str) -> Pipeline:
    """A kind's one-vs-rest model behind the codes' scaling."""
    return Pipeline([("scale", scaler(normalise)), ("clf", get_kind(kind).build(C, None))])


def path_scores(kind: str, X_train: np.ndarray, Y_train: np.ndarray, X_test: np.ndarray, grid) -> np.ndarray:
    """Every label's scores of the ``X_test`` images at each C of ``grid`` [C, images, labels], all labels fitted
    at once on the scaled codes: probabilities, or a calibrated kind's decision values."""
    model = get_kind(kind)
    targets = np.where(Y_train > 0, 1.0, -1.0)
    out = []
    with warnings.catch_warnings():  # an unconverged large-C candidate is still a fair candidate
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _, coef, intercept, _ in label_path(X_train, targets, grid, model.loss):
            values = X_test @ coef.T + intercept
            out.append(values if model.calibrated else expit(values))
    return np.array(out)


def tune(kind: str, X: np.ndarray, Y: np.ndarray, normalise: str, seed: int) -> tuple[float, np.ndarray, float]:
    """(C, thresholds, inner mAP) on codes ``X`` as they come (scaled inside each inner fold): C by the inner
    cross-validation's mAP (the smallest among ties), thresholds from its out-of-fold scores at that C."""
    grid = get_kind(kind).grid
    values = np.zeros((len(grid), *Y.shape))
    for train, test in folds(Y, INNER_FOLDS, seed):
        scale = scaler(normalise).fit(X[train])
        values[:, test] = path_scores(kind, scale.transform(X[train]), Y[train], scale.transform(X[test]), grid)
    maps = [average_precision_score(Y, v, average="macro") for v in values]
    best = int(np.argmax(maps))
    return float(grid[best]), best_thresholds(Y, values[best], not get_kind(kind).calibrated), float(maps[best])


def fit_final(kind: str, X: np.ndarray, Y: np.ndarray, normalise: str, seed: int):
    """The saved model: C and thresholds chosen on every image, then trained on every image; (model, hyper), the
    thresholds as probabilities of the saved model."""
    C, thresholds, _ = tune(kind, X, Y, normalise, seed)
    model = make(kind, C, normalise).fit(X, Y)
    if get_kind(kind).calibrated:
        thresholds = _through_platt(model, thresholds)
    return model, {"C": C, "thresholds": [round(float(t), 6) for t in thresholds]}


def _through_platt(model: Pipeline, thresholds: np.ndarray) -> np.ndarray:
    """Decision-value thresholds as the probabilities the saved model's Platt sigmoids give them (a label whose
    sigmoid does not increase, which no signal makes, gets 0.5)."""
    out = []
    for estimator, t in zip(model.named_steps["clf"].estimators_, thresholds):
        (calibrated,) = estimator.calibrated_classifiers_
        (platt,) = calibrated.calibrators
        out.append(float(expit(-(platt.a_ * t + platt.b_))) if platt.a_ < 0 else 0.5)
    return np.array(out)


def _outer_fold(kind: str, X: np.ndarray, Y: np.ndarray, train, test, normalise: str, seed: int) -> dict:
    started = time.perf_counter()
    C, thresholds, inner = tune(kind, X[train], Y[train], normalise, seed)
    scale = scaler(normalise).fit(X[train])
    (values,) = path_scores(kind, scale.transform(X[train]), Y[train], scale.transform(X[test]), [C])
    return {"C": C, "inner": inner, "predicted": values >= thresholds, **scores(Y[test], values, thresholds),
            "seconds": time.perf_counter() - started}


def cross_validate(X_by_layer: dict[str, np.ndarray], Y: np.ndarray, names: list[str], kinds, k: int,
                   repeats: int | None, normalise: str, seed: int, jobs: int | None, progress: bool = False
                   ) -> tuple[list[CVResult], Protocol]:
    """Nested cross-validation of every (layer, kind) on the same iterative-stratified outer folds."""
    fewest = int(min(Y.sum(axis=0).min(), (1 - Y).sum(axis=0).min()))
    notes = ["several labels per image: one model per label, thresholds chosen inside each fold; folds by "
             "iterative stratification; near-duplicates are not looked for"]
    if fewest < k:
        notes.append(f"a label is on (or off) only {fewest} images: using {fewest} folds instead of {k}")
        log.warning(notes[-1])
        k = fewest
    repeats = repeats or (3 if len(Y) < 1000 else 1)
    outer = [split for r in range(repeats) for split in folds(Y, k, seed + r)]
    candidates = [(layer, kind) for layer in X_by_layer for kind in kinds]
    done = run_folds((delayed(_outer_fold)(kind, X_by_layer[layer], Y, train, test, normalise, seed)
                      for layer, kind in candidates for train, test in outer), jobs, progress, "nested CV")
    n_test = len(Y) // k
    results = []
    for c, (layer, kind) in enumerate(candidates):
        runs = done[c * len(outer):(c + 1) * len(outer)]
        truth = np.concatenate([Y[test] for _, test in outer])
        results.append(CVResult(
            layer, kind, {name: metrics.nadeau_bengio([r[name] for r in runs], len(Y) - n_test, n_test)
                          for name in SCORES},
            {f"{C:g}": n for C, n in Counter(r["C"] for r in runs).most_common()},
            per_class=per_label(truth, np.concatenate([r["predicted"] for r in runs]), names),
            fit_seconds=float(sum(r["seconds"] for r in runs)), fold_hyper=tuple(r["C"] for r in runs),
            fold_inner=tuple(r["inner"] for r in runs)))
    protocol = Protocol(k, repeats, f"iterative-stratified {INNER_FOLDS}-fold mAP",
                        {kind: list(get_kind(kind).grid) for kind in kinds}, normalise, [None], seed, notes,
                        "micro_f1")
    return results, protocol


def bootstrap(Y: np.ndarray, proba: np.ndarray, thresholds, resamples: int = 1000, seed: int = 0
              ) -> dict[str, metrics.Score]:
    """:func:`scores` on one test set with 95% percentile bootstrap intervals over its images."""
    thresholds = np.asarray(thresholds)
    draws = np.random.default_rng(seed).integers(0, len(Y), (resamples, len(Y)))
    with warnings.catch_warnings():  # a resample without some label: its average precision is 0, as sklearn says
        warnings.simplefilter("ignore")
        values = [scores(Y[d], proba[d], thresholds) for d in draws]
    full = scores(Y, proba, thresholds)
    out = {}
    for name in SCORES:
        v = np.array([x[name] for x in values])
        out[name] = metrics.Score(full[name], float(v.std(ddof=1)),
                                  (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))))
    return out


def out_of_fold(kind: str, X: np.ndarray, Y: np.ndarray, k: int, normalise: str, seed: int,
                jobs: int | None = None) -> np.ndarray:
    """Every image's labels as given by the model of its fold (one repeat of ``k`` folds), made as in
    :func:`cross_validate`: (images, labels) of 0/1."""
    splits = folds(Y, k, seed)
    done = Parallel(n_jobs=jobs or usable_cores())(
        delayed(_outer_fold)(kind, X, Y, train, test, normalise, seed) for train, test in splits)
    predicted = np.zeros(Y.shape, bool)
    for (_, test), r in zip(splits, done):
        predicted[test] = r["predicted"]
    return predicted


def most_wrong(paths: list[str], Y: np.ndarray, predicted: np.ndarray, names: list[str], limit: int = 24
               ) -> tuple[list[dict], int]:
    """The images with the most labels wrong (missed or added), most first, and how many have any."""
    wrong = (Y != predicted).sum(axis=1)
    order = [i for i in np.argsort(-wrong, kind="stable") if wrong[i]]
    given = lambda row: [names[k] for k in np.flatnonzero(row)]  # noqa: E731
    return [{"path": paths[i], "given": given(Y[i]), "predicted": given(predicted[i]), "wrong": int(wrong[i])}
            for i in order[:limit]], len(order)


def held_out(model, thresholds, X: np.ndarray, Y: np.ndarray, names: list[str], data: str) -> HeldOut:
    """The saved model's figures on images no training or choice saw, at its thresholds."""
    proba = model.predict_proba(X)
    return HeldOut(data, int(len(Y)), scores(Y, proba, np.asarray(thresholds)),
                   per_label(Y, proba >= np.asarray(thresholds), names))
