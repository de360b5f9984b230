"""Nested cross-validation of the linear candidates on cached codes, and the final choice of C.

The outer folds give the figures (Nadeau-Bengio 95% intervals); inside each
outer training set an inner split chooses C, so the outer test fold never sees
the choice. The inner scores also choose between the candidates (layer,
classifier, class weighting, views) fold by fold (:func:`nested_choice`): the
honest figure of the whole choice. The final model chooses C the same way on all
the training data. Codes may come with views of each image, ``(views + 1,
images, dims)`` (:mod:`pipeline.linear.tta`): every split is of images, training uses
every view of the training images, and predictions average over the views.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import Counter
from typing import Sequence

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import (
    RepeatedStratifiedKFold,
    StratifiedGroupKFold,
    StratifiedKFold,
    StratifiedShuffleSplit,
)

from .. import metrics
from ..errors import UserError
from ..machine import usable_cores
from ..results import CVResult, Protocol
from . import blocks, tta
from .jobs import run_folds
from .kinds import CLASSIFIERS, get_kind
from .models import fit_with_C, make_model
from .scaling import scaler

log = logging.getLogger(__name__)

LARGE = 2000  # from this many training images, one inner validation split is precise enough


IMBALANCED = 3.0  # largest over smallest class from which candidates are chosen by macro-F1, not accuracy
WEIGHTED = 1.5  # largest over smallest class from which "balanced" class weights are a candidate beside none


def imbalance(y: np.ndarray) -> float:
    counts = np.bincount(y)
    counts = counts[counts > 0]
    return float(counts.max() / counts.min())


def selection_metric(y: np.ndarray) -> str:
    """What chooses between candidates: macro-F1 when the classes are imbalanced more than ``IMBALANCED``
    times (accuracy would reward ignoring the small classes), else accuracy."""
    return "macro_f1" if imbalance(y) > IMBALANCED else "accuracy"


def class_weightings(y: np.ndarray, setting: str | None = "auto") -> tuple[str | None, ...]:
    """The class weightings to compare: ``auto`` tries none and balanced when the classes differ by
    ``WEIGHTED`` times or more (below, balanced weights are all near 1 and change little)."""
    if setting is None or setting == "none":
        return (None,)
    if setting == "balanced":
        return ("balanced",)
    return (None, "balanced") if imbalance(y) >= WEIGHTED else (None,)


def view_options(views: Sequence[str], setting: str = "auto") -> tuple[tuple[str, ...], ...]:
    """The view settings to compare on codes with stored ``views``: ``auto`` tries with and without them."""
    if setting == "on" and not views:
        raise UserError("the store holds no views of its images: extract it with some", param="views")
    if not views or setting == "off":
        return ((),)
    return (tuple(views),) if setting == "on" else ((), tuple(views))


def _path_scores(kind, X_train, y_train, X_val, y_val, grid, normalise, class_weight, metric) -> np.ndarray:
    """Validation ``metric`` along the C path (ascending, warm-started) for each of the kind's variants (C values x
    variants), stopped (the rest scoring -inf) after two C values below the best: larger C only overfit more, and
    are the slowest to fit."""
    X_train, y_train, _ = tta.training_rows(X_train, y_train)
    scale = scaler(normalise).fit(X_train)
    X_train, X_val = scale.transform(X_train), np.stack([scale.transform(view) for view in tta.stacked(X_val)])
    kind = get_kind(kind)
    models = kind.path(X_train, y_train, grid, class_weight)
    scores = np.full((len(grid), len(kind.variants)), -np.inf)
    below = 0
    score = metrics.CLASSIFICATION[metric]
    with warnings.catch_warnings():  # an unconverged large-C candidate is still a fair candidate
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i, model in enumerate(models):
            for j, variant in enumerate(kind.variants):
                scores[i, j] = score(y_val, tta.predict(model.set_params(**variant), X_val))
            below = below + 1 if scores[i].max() < scores[:i + 1].max() else 0
            if below == 2:
                break
    return scores


def _two_classes_trained(splits, y: np.ndarray) -> list:
    """The grouped ``splits``, refused in one line where keeping groups together leaves a training part with
    one class alone (groups as large as classes: near-duplicates by a threshold too low for these codes). A class
    missing from a training part is scored as the mistakes it makes."""
    splits = list(splits)
    if any(len(np.unique(y[train])) < 2 for train, _ in splits):
        raise UserError("images kept together (near-duplicates, or a manifest's groups) leave a fold's training "
                        "part with one class alone: near-duplicates must be more alike for these codes, or need "
                        "not be looked for (0)", param="duplicate_threshold")
    return splits


def _inner_splits(y: np.ndarray, seed: int, groups: np.ndarray | None = None):
    """Stratified 3-fold, or one 80/20 split when large; with ``groups``, each group inside one side."""
    if len(y) >= LARGE:
        if groups is not None:  # the first fold of five: 80/20
            return _two_classes_trained(
                [next(StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(y, y, groups))], y)
        return StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=seed).split(np.zeros(len(y)), y)
    folds = min(3, int(np.bincount(y).min()))
    if folds < 2:
        return None
    if groups is not None:
        return _two_classes_trained(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(y, y, groups),
                                    y)
    return StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)


def tune_C(kind, X, y, normalise="power", class_weight=None, seed=0, groups=None,
           metric="accuracy") -> tuple[dict, float]:
    """``{"C": C}`` of the grid with the best mean inner-validation ``metric`` (the smallest among ties), with the
    kind's variant chosen beside it (the first among ties), and that score (NaN when the classes are too small to
    split); ``groups`` (near-duplicates, one per row) are kept inside one side of each inner split. The inner
    splits depend on ``y``, ``groups`` and ``seed`` only, so the scores of every candidate on the same rows are
    paired."""
    grid, variants = get_kind(kind).grid, get_kind(kind).variants
    splits = _inner_splits(y, seed, groups)
    if splits is None:
        return {"C": float(grid[len(grid) // 2]), **variants[0]}, float("nan")
    scores = np.mean([_path_scores(kind, tta.rows(X, tr), y[tr], tta.rows(X, va), y[va], grid, normalise,
                                   class_weight, metric) for tr, va in splits], axis=0)
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return {"C": float(grid[i]), **variants[j]}, float(scores[i, j])


def _outer_fold(kind, X, y, train, test, normalise, class_weight, seed, groups, metric):
    started = time.perf_counter()
    normalise = blocks.resolve(normalise, tta.rows(X, train), y[train], seed)  # chosen on this training part
    hyper, inner = tune_C(kind, tta.rows(X, train), y[train], normalise, class_weight, seed,
                          None if groups is None else groups[train], metric)
    rows, labels, _ = tta.training_rows(tta.rows(X, train), y[train])
    model = make_model(kind, hyper, normalise, class_weight).fit(rows, labels)
    predicted = tta.predict(model, tta.rows(X, test))
    return {"C": hyper["C"], "hyper": hyper, "inner": inner, "predicted": predicted,
            "seconds": time.perf_counter() - started,
            "blocks": normalise.kept() if isinstance(normalise, blocks.Blocks) else (),
            **metrics.classification_scores(y[test], predicted)}


def default_repeats(n: int) -> int:
    return 3 if n < 1000 else 1


def outer_folds(y: np.ndarray, k: int, repeats: int, seed: int,
                groups: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The outer (train, test) splits: they depend on the labels, the groups and the seed only, so every
    configuration scored on the same labels is scored on the same folds (a paired comparison). ``groups``:
    rows of one group (near-duplicates, one object) fall in one fold (``StratifiedGroupKFold``)."""
    if groups is None:
        return list(RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed).split(
            np.zeros(len(y)), y))
    return _two_classes_trained([split for r in range(repeats) for split in
                                 StratifiedGroupKFold(k, shuffle=True, random_state=seed + r).split(y, y, groups)], y)


def scalings(normalise, layer: str) -> tuple:
    """The scalings that compete for ``layer``: ``normalise`` is one for every layer, or ``{layer: (scalings)}``
    (a :class:`~pipeline.linear.blocks.Blocks` scaling among them for layers joined from several)."""
    return tuple(normalise[layer]) if isinstance(normalise, dict) else (normalise,)


def cross_validate(X_by_layer: dict[str, np.ndarray], y: np.ndarray, class_names: list[str],
                   classifiers=CLASSIFIERS, folds: int = 5, repeats: int | None = None,
                   normalise="power", class_weights: Sequence[str | None] = (None,), seed: int = 0,
                   jobs: int | None = None, groups: np.ndarray | None = None, metric: str | None = None,
                   views: Sequence[tuple[str, ...]] = ((),), progress: bool = False
                   ) -> tuple[list[CVResult], Protocol]:
    """Nested cross-validation of every (layer, classifier, class weighting, views, scaling: :func:`scalings`) on
    the same outer folds;
    ``groups`` (one number per image, or None) are kept inside one fold, outer and inner. ``metric`` chooses C
    inside (default :func:`selection_metric`). ``views``: with and without the stored views of each image, when
    ``X_by_layer`` holds them (:func:`pipeline.linear.tta.using`); ``progress``: a bar of the folds done."""
    counts = np.bincount(y)
    metric = metric or selection_metric(y)
    notes = []
    k = min(folds, int(counts.min()))
    if k < folds:
        note = (f"class {class_names[int(counts.argmin())]} has {int(counts.min())} images: "
                f"using {k} folds instead of {folds}")
        notes.append(note)
        log.warning(note)
    if metric != "accuracy":
        notes.append(f"the classes are imbalanced {imbalance(y):.1f}x: candidates and C are chosen by macro-F1")
    repeats = repeats or default_repeats(len(y))
    outer = outer_folds(y, k, repeats, seed, groups)
    inner = "one stratified 80/20 split" if len(y) * (k - 1) / k >= LARGE else "stratified 3-fold"
    named = dict.fromkeys(str(s) for layer in X_by_layer for s in scalings(normalise, layer))
    protocol = Protocol(k, repeats, inner, {c: list(get_kind(c).grid) for c in classifiers}, "+".join(named),
                        list(class_weights), seed, notes, metric, [list(v) for v in views])
    candidates = [(layer, kind, w, v, s) for layer in X_by_layer for kind in classifiers for w in class_weights
                  for v in views for s in scalings(normalise, layer)]
    planes = {(layer, v): tta.using(X_by_layer[layer], v) for layer in X_by_layer for v in views}
    tasks = [(c, f) for c in candidates for f in range(len(outer))]
    log.info("nested cross-validation: %d candidate(s) x %d outer folds (%d-fold x %d), C chosen by %s",
             len(candidates), len(outer), k, repeats, inner)
    # each outer fold's blocks chosen once, for every candidate weighing the same layer and views alike
    weighed = [(layer, v, s, f) for layer, v, s in dict.fromkeys((c[0], c[3], c[4]) for c in candidates
                                                                  if isinstance(c[4], blocks.Blocks))
               for f in range(len(outer))]
    chosen = dict(zip(weighed, run_folds((delayed(blocks.resolve)(s, tta.rows(planes[layer, v], outer[f][0]),
                                                                  y[outer[f][0]], seed)
                                          for layer, v, s, f in weighed), jobs, False, "blocks")))
    done = run_folds((delayed(_outer_fold)(kind, planes[layer, v], y, *outer[f], chosen.get((layer, v, s, f), s), w,
                                           seed, groups, metric)
                      for (layer, kind, w, v, s), f in tasks), jobs, progress, "nested CV")
    n_test = len(y) // k
    results = []
    for layer, kind, w, v, s in candidates:
        folds_done = [(f, r) for (c, f), r in zip(tasks, done) if c == (layer, kind, w, v, s)]
        y_true = np.concatenate([y[outer[f][1]] for f, _ in folds_done])
        y_pred = np.concatenate([r["predicted"] for _, r in folds_done])
        results.append(CVResult(
            layer, kind,
            {name: metrics.nadeau_bengio([r[name] for _, r in folds_done], len(y) - n_test, n_test)
             for name in metrics.CLASSIFICATION},
            {f"{c:g}": n for c, n in Counter(r["C"] for _, r in folds_done).most_common()},
            per_class=metrics.per_class(y_true, y_pred, class_names),
            fit_seconds=float(sum(r["seconds"] for _, r in folds_done)),
            fold_hyper=tuple(r["hyper"] for _, r in folds_done), class_weight=w,
            fold_inner=tuple(r["inner"] for _, r in folds_done), views=tuple(v),
            blocks=s if isinstance(s, blocks.Blocks) else None,
            kept=dict(Counter(b for _, r in folds_done for b in r["blocks"]))))
    return results, protocol


def nested_choice(results: Sequence[CVResult], n: int, k: int) -> CVResult | None:
    """The honest figure of choosing among ``results`` (scored on the same outer folds): in each outer fold, the
    candidate with the best inner-validation score, which saw that fold's training part alone, scored on that
    fold's test part. Ties go to the earlier candidate. None with fewer than two candidates or no inner scores."""
    if len(results) < 2 or any(not r.fold_inner or np.isnan(r.fold_inner).any() for r in results):
        return None
    inner = np.array([r.fold_inner for r in results])  # candidates x folds
    picks = inner.argmax(axis=0)
    return CVResult(
        "chosen in each fold", "nested choice",
        {name: metrics.nadeau_bengio([results[i].scores[name].folds[f] for f, i in enumerate(picks)], n - n // k,
                                     n // k)
         for name in results[0].scores},
        {name: count for name, count in Counter(results[i].name for i in picks).most_common()},
        hyper="candidate", fit_seconds=float(sum(r.fit_seconds for r in results)))


def fit_final(kind: str, X: np.ndarray, y: np.ndarray, normalise="power", class_weight=None,
              seed: int = 0, groups: np.ndarray | None = None, metric: str = "accuracy"):
    """Choose the blocks (a :class:`~pipeline.linear.blocks.Blocks` scaling), C and the kind's variant on all of
    ``X`` by ``metric`` and refit; the model and ``{"C": C, **variant}`` (and ``"blocks"``: those kept). The SVM
    gets Platt-calibrated probabilities."""
    normalise = blocks.resolve(normalise, X, y, seed)
    hyper, _ = tune_C(kind, X, y, normalise, class_weight, seed, groups, metric)
    kept = {"blocks": list(normalise.kept())} if isinstance(normalise, blocks.Blocks) else {}
    return fit_with_C(kind, hyper, X, y, normalise, class_weight, groups), {**hyper, **kept}


def out_of_fold_proba(kind: str, X: np.ndarray, y: np.ndarray, folds, normalise="power", class_weight=None,
                      seed: int = 0, jobs: int | None = None, hypers: Sequence[dict] | None = None,
                      groups: np.ndarray | None = None, metric: str = "accuracy") -> np.ndarray:
    """Class probabilities of every row of ``X`` from its fold's model, made as the saved one is
    (:func:`fit_final`) on the rows without it; ``folds`` must partition the rows (one repeat). ``hypers``: each
    fold's C and variant, when nested cross-validation has chosen them already."""
    proba = np.full((len(y), int(y.max()) + 1), np.nan)
    fitted = Parallel(n_jobs=jobs or usable_cores())(
        delayed(fit_final)(kind, tta.rows(X, train), y[train], normalise, class_weight, seed,
                           None if groups is None else groups[train], metric) if hypers is None else
        delayed(fit_with_C)(kind, hypers[f], tta.rows(X, train), y[train], normalise, class_weight,
                            None if groups is None else groups[train])
        for f, (train, _) in enumerate(folds))
    for model, (_, test) in zip((m if hypers is not None else m[0] for m in fitted), folds):
        proba[np.ix_(test, model.classes_)] = tta.scores(model, tta.rows(X, test))
    if np.isnan(proba).all(axis=1).any():
        raise ValueError("the folds do not cover every row")
    return np.nan_to_num(proba)
