"""What differs between fitting classes (labels), several labels per image (``labels``) and a numeric target
(``target``); the fit stage's flow (:func:`pipeline.linear.fit.fit`) is one for all and asks the task."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..results import CVResult, HeldOut, Protocol
from ..store.reader import FeatureStore
from ..task import CLASSIFICATION, MULTILABEL, REGRESSION, task_of_store
from . import classify, cv, multilabel, regress, tta
from .config import FitConfig
from .duplicates import store_groups
from .kinds import kinds_for, multilabel_kind
from .plan import CVPlan
from .reject import reject_rule


def codes_of(X: dict, candidate: CVResult) -> np.ndarray:
    """The codes ``candidate`` uses: its layer's, with or without the views."""
    return tta.using(X[candidate.layer], candidate.views)


def scaling(candidate: CVResult, cfg: FitConfig):
    """How ``candidate``'s codes are scaled: its blocks, or the fit's normalisation."""
    return candidate.blocks or cfg.plain


class Classification:
    """Labels: the kinds asked for, nested CV over layers, classifiers, class weightings and views, an
    "unknown" threshold, near-duplicates and manifest groups kept inside one fold."""

    task = CLASSIFICATION
    normalise = "power"  # pipeline.linear.scaling: measured on classifiers (docs/fit.md)
    streams = True  # codes over the memory budget are streamed (pipeline.linear.stream)
    weighs_blocks = True  # the stages of a joined layer may be weighed as blocks (pipeline.linear.blocks)

    def kinds(self, cfg: FitConfig) -> tuple[str, ...]:
        return tuple(cfg.classifiers)

    def codes(self, store: FeatureStore, layer: str) -> np.ndarray:
        return store.view_codes(layer)

    def targets(self, store: FeatureStore) -> np.ndarray | None:
        return store.labels

    def check(self, X, y, store: FeatureStore, cfg: FitConfig, what: str) -> None:
        classify.check_training_data(X, y, store.class_names or [], what)

    def groups(self, store: FeatureStore, cfg: FitConfig):
        """(the groups kept inside one fold, the near-duplicates alone), each None where every image is alone."""
        return store_groups(store, None, cfg.duplicate_threshold)

    def split(self, y, test_size: float, seed: int, groups) -> tuple[np.ndarray, np.ndarray]:
        return classify.split_test(y, test_size, seed, groups)

    def cross_validate(self, X: dict, y, store: FeatureStore, cfg: FitConfig, groups) -> tuple[list[CVResult],
                                                                                              Protocol]:
        return CVPlan.of(cfg).run(X, y, store.class_names, {layer: store.widths(layer) for layer in X}, groups,
                                  cv.view_options(store.views, cfg.views))

    def fit_final(self, candidate: CVResult, X, y, cfg: FitConfig, groups, metric: str):
        return cv.fit_final(candidate.classifier, X, y, scaling(candidate, cfg), candidate.class_weight, cfg.seed,
                            groups, metric)

    def held_out(self, model, hyper: dict, X, y, store: FeatureStore, data: str) -> HeldOut:
        return classify.held_out(model, X, y, store.class_names, data)

    def describe(self, store: FeatureStore, y) -> dict:
        counts = np.bincount(y, minlength=len(store.class_names))
        return {"classes": len(store.class_names), "class_names": list(store.class_names),
                "class_counts": {n: int(c) for n, c in zip(store.class_names, counts)}}

    def reject(self, candidate: CVResult, X: dict, y, cfg: FitConfig, protocol: Protocol, groups) -> dict:
        """The "unknown" threshold of the saved model of ``candidate``, from out-of-fold probabilities of models
        made as it is, at the C nested cross-validation chose in each fold (of the first repeat)."""
        folds = cv.outer_folds(y, protocol.outer_folds, 1, cfg.seed, groups)
        proba = cv.out_of_fold_proba(candidate.classifier, codes_of(X, candidate), y, folds, scaling(candidate, cfg),
                                     candidate.class_weight, cfg.seed, cfg.jobs, candidate.fold_hyper[:len(folds)],
                                     groups)
        return reject_rule(y, proba, cfg.reject_rate).to_json()


class Regression:
    """A numeric target: ridge, alpha chosen by leave-one-out inside nested CV, on the plainly standardised
    codes (the power scaling was measured on classifiers only)."""

    task = REGRESSION
    normalise = "standard"
    streams = False
    weighs_blocks = False

    def kinds(self, cfg: FitConfig) -> tuple[str, ...]:
        if cfg.test_store is not None:
            raise UserError("a separate test store is for classification; hold out a fraction for regression",
                            param="test_store")
        return kinds_for(REGRESSION)

    def codes(self, store: FeatureStore, layer: str) -> np.ndarray:
        return store.codes(layer)

    def targets(self, store: FeatureStore) -> np.ndarray:
        return store.targets

    def check(self, X, y, store: FeatureStore, cfg: FitConfig, what: str) -> None:
        regress.check_targets(X, y, cfg.folds, what)

    def groups(self, store: FeatureStore, cfg: FitConfig):
        return None, None  # near-duplicates are not looked for

    def split(self, y, test_size: float, seed: int, groups) -> tuple[np.ndarray, np.ndarray]:
        return regress.split_test(y, test_size, seed)

    def cross_validate(self, X: dict, y, store: FeatureStore, cfg: FitConfig, groups) -> tuple[list[CVResult],
                                                                                              Protocol]:
        return regress.cross_validate(X, y, cfg.folds, cfg.repeats, cfg.normalise, cfg.seed, cfg.jobs, cfg.progress)

    def fit_final(self, candidate: CVResult, X, y, cfg: FitConfig, groups, metric: str):
        return regress.fit_final(X, y, cfg.normalise)

    def held_out(self, model, hyper: dict, X, y, store: FeatureStore, data: str) -> HeldOut:
        return regress.held_out(model, X, y, data)

    def describe(self, store: FeatureStore, y) -> dict:
        return {"target": {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()),
                           "max": float(y.max())}}

    def reject(self, candidate: CVResult, X: dict, y, cfg: FitConfig, protocol: Protocol, groups) -> None:
        return None  # "unknown" is for classes


class MultiLabel:
    """Several labels per image (:mod:`pipeline.linear.multilabel`): one model per label for the classifiers
    asked for (svm: calibrated SVMs, softmax: logistic regressions), iterative-stratified folds, a threshold per
    label; no views, groups, near-duplicates or "unknown"."""

    task = MULTILABEL
    normalise = "power"
    streams = False
    weighs_blocks = False

    def kinds(self, cfg: FitConfig) -> tuple[str, ...]:
        if cfg.test_store is not None:
            raise UserError("a separate test store is for single-label classification; hold out a fraction",
                            param="test_store")
        return tuple(multilabel_kind(c) for c in cfg.classifiers)

    def codes(self, store: FeatureStore, layer: str) -> np.ndarray:
        return store.codes(layer)

    def targets(self, store: FeatureStore) -> np.ndarray:
        return store.multilabels

    def check(self, X, y, store: FeatureStore, cfg: FitConfig, what: str) -> None:
        multilabel.check(y, store.class_names, what)

    def groups(self, store: FeatureStore, cfg: FitConfig):
        return None, None

    def split(self, y, test_size: float, seed: int, groups) -> tuple[np.ndarray, np.ndarray]:
        return multilabel.split_test(y, test_size, seed)

    def cross_validate(self, X: dict, y, store: FeatureStore, cfg: FitConfig, groups) -> tuple[list[CVResult],
                                                                                              Protocol]:
        return multilabel.cross_validate(X, y, store.class_names, self.kinds(cfg), cfg.folds, cfg.repeats,
                                         cfg.normalise, cfg.seed, cfg.jobs, cfg.progress)

    def fit_final(self, candidate: CVResult, X, y, cfg: FitConfig, groups, metric: str):
        return multilabel.fit_final(candidate.classifier, X, y, cfg.normalise, cfg.seed)

    def held_out(self, model, hyper: dict, X, y, store: FeatureStore, data: str) -> HeldOut:
        return multilabel.held_out(model, hyper["thresholds"], X, y, store.class_names, data)

    def describe(self, store: FeatureStore, y) -> dict:
        return {"labels": len(store.class_names), "label_names": list(store.class_names),
                "label_counts": {n: int(c) for n, c in zip(store.class_names, y.sum(axis=0))},
                "label_combinations": len({tuple(row) for row in y.tolist()})}

    def reject(self, candidate: CVResult, X: dict, y, cfg: FitConfig, protocol: Protocol, groups) -> None:
        return None


FLOWS = {flow.task: flow for flow in (Classification, Regression, MultiLabel)}


def task_of(store: FeatureStore) -> Classification | Regression | MultiLabel:
    """The fit's flow for the store's task (:func:`pipeline.task.task_of_store`)."""
    return FLOWS[task_of_store(store)]()
