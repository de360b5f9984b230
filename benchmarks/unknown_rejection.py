"""How much of a class never trained on does ``predict.py --reject`` call unknown? Nested, with two variants.

    python scripts/extract.py data/tuxpaint --out features/tuxpaint.h5
    python benchmarks/unknown_rejection.py features/tuxpaint.h5

Each class is held out in turn. The other classes' images are split in 3
stratified folds; for each, the threshold comes from out-of-fold probabilities
inside the two training folds (models made as the saved one is: C chosen by
cross-validation, the SVM Platt-calibrated), the model trained on both training
folds is applied to the third fold's images (the known images wrongly rejected)
and to the held-out class (the unseen images rejected). Printed for each
classifier and target rate: the shares of known and unseen images rejected by
one threshold on the top probability (what pipeline.linear.reject does), by one
threshold per predicted class, and, for the SVM, by both on the maximum of its
one-vs-rest Platt probabilities before they are normalised to sum to one.
Two scores that are not the classifier's: the Mahalanobis distance to the
nearest class mean (power-scaled codes, one covariance shared by the classes,
Ledoit-Wolf shrunk: Lee et al. 2018's detector on frozen codes), and the sum
of its rank and the top probability's rank among the out-of-fold scores.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from sklearn.covariance import LedoitWolf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.linear import cv  # noqa: E402
from pipeline.linear.kinds import CLASSIFIERS  # noqa: E402
from pipeline.linear.scaling import PowerScaler  # noqa: E402
from pipeline.store.layout import default_candidates, layer_parts  # noqa: E402
from pipeline.store.reader import read_store  # noqa: E402

RATES = (0.02, 0.05, 0.1, 0.2)
FOLDS = 3


class Mahalanobis:
    """Minus the squared Mahalanobis distance to the nearest class mean of power-scaled codes, with one
    Ledoit-Wolf covariance of the codes around their class means."""

    def __init__(self, X: np.ndarray, y: np.ndarray):
        self.scaler = PowerScaler().fit(X)
        Z = self.scaler.transform(X)
        self.means = np.stack([Z[y == c].mean(0) for c in range(int(y.max()) + 1)])
        self.precision = LedoitWolf().fit(Z - self.means[y]).precision_

    def __call__(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Z = self.scaler.transform(X)
        ZP = Z @ self.precision
        d = (ZP * Z).sum(1)[:, None] - 2 * ZP @ self.means.T + ((self.means @ self.precision) * self.means).sum(1)
        return -d.min(1), d.argmin(1)


def ranked(confidence: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The share of ``reference`` (out-of-fold confidences of known images) under each of ``confidence``."""
    return np.searchsorted(np.sort(reference), confidence) / len(reference)


def combined(by_score: dict, reference: dict) -> tuple[np.ndarray, np.ndarray]:
    """The Mahalanobis rank plus the top probability's, with the classifier's predicted class."""
    top, predicted = by_score["top probability"]
    rank = ranked(top, reference["top probability"]) + ranked(by_score["Mahalanobis"][0], reference["Mahalanobis"])
    return rank, predicted


def confidences(kind: str, model, density: Mahalanobis, X: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each score's (confidence, predicted class) of ``X``: low confidence is unknown."""
    proba = model.predict_proba(X)
    out = {"top probability": (proba.max(1), proba.argmax(1)), "Mahalanobis": density(X)}
    if kind == "svm":
        calibrated = model.calibrated_classifiers_[0]
        margins = calibrated.estimator.decision_function(X)
        ovr = np.stack([c.predict(margins[:, k]) for k, c in enumerate(calibrated.calibrators)], axis=1)
        out["one-vs-rest Platt"] = (ovr.max(1), ovr.argmax(1))
    return out


def thresholds(confidence: np.ndarray, predicted: np.ndarray, classes: int, rate: float
               ) -> dict[str, np.ndarray]:
    """One threshold for every predicted class, and one per predicted class, each rejecting ``rate``."""
    one = np.quantile(confidence, rate, method="lower")
    per = [np.quantile(confidence[predicted == c], rate, method="lower") if (predicted == c).any() else one
           for c in range(classes)]
    return {"one threshold": np.full(classes, one), "per class": np.array(per)}


def held_out_class(kind: str, X: np.ndarray, labels: np.ndarray, held: int, counts: dict, seed: int) -> None:
    keep = labels != held
    known, y = X[keep], np.unique(labels[keep], return_inverse=True)[1]
    classes = int(y.max()) + 1
    for train, test in cv.outer_folds(y, FOLDS, 1, seed):
        parts: dict[str, list] = {}
        for inner_train, inner_test in cv.outer_folds(y[train], FOLDS, 1, seed):
            Xi, yi = known[train][inner_train], y[train][inner_train]
            model, _ = cv.fit_final(kind, Xi, yi, seed=seed)
            for name, pair in confidences(kind, model, Mahalanobis(Xi, yi), known[train][inner_test]).items():
                parts.setdefault(name, []).append(pair)
        oof = {name: tuple(np.concatenate(part) for part in zip(*pairs)) for name, pairs in parts.items()}
        model, _ = cv.fit_final(kind, known[train], y[train], seed=seed)
        density = Mahalanobis(known[train], y[train])
        scored = {"known": confidences(kind, model, density, known[test]),
                  "unseen": confidences(kind, model, density, X[~keep])}
        reference = {name: oof[name][0] for name in ("top probability", "Mahalanobis")}
        for by_score in (oof, *scored.values()):
            by_score["Mahalanobis + top"] = combined(by_score, reference)
        for name, (confidence, predicted) in oof.items():
            for rate in RATES:
                for mode, cut in thresholds(confidence, predicted, classes, rate).items():
                    for part, by_score in scored.items():
                        c, p = by_score[name]
                        tally = counts.setdefault((name, mode, rate, part), [0, 0])
                        tally[0] += int((c < cut[p]).sum())
                        tally[1] += len(c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", type=Path, help="a labelled feature store (extract.py's output)")
    parser.add_argument("--layer", help="the codes to use (default: the fit's, every stored layer joined)")
    parser.add_argument("--classifiers", nargs="+", default=list(CLASSIFIERS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    store = read_store(args.store)
    layer = args.layer or default_candidates(store.layers)[0]
    X = np.hstack([store.codes(part) for part in layer_parts(layer)])
    print(f"{args.store}: {len(X)} images, {len(store.class_names)} classes, {layer}; each class held out in turn")
    for kind in args.classifiers:
        counts: dict = {}
        for held in range(len(store.class_names)):
            held_out_class(kind, X, store.labels, held, counts, args.seed)
        for name, mode, rate in sorted({key[:3] for key in counts}):
            known, unseen = counts[name, mode, rate, "known"], counts[name, mode, rate, "unseen"]
            print(f"{kind:8s} {name:18s} {mode:14s} target {rate:4.0%}: known rejected {known[0] / known[1]:6.1%}"
                  f"  unseen rejected {unseen[0] / unseen[1]:6.1%}", flush=True)


if __name__ == "__main__":
    main()
