"""What a report shows of one model beyond its accuracy: where it errs, on which images, and how the codes lie.

It works from probabilities for images the model never trained on (out-of-fold,
or a held-out folder for a bundle), so the confusion matrix and gallery are honest.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import confusion_matrix
from sklearn.preprocessing import StandardScaler

from .. import metrics
from ..linear.reject import RejectRule, coverage_curve, reject_rule

log = logging.getLogger(__name__)

TSNE_MAX_IMAGES = 3000  # above this t-SNE takes minutes on two cores; PCA alone is shown
GALLERY_SIZE = 24


def errors(paths: list[str], y: np.ndarray, proba: np.ndarray, class_names: list[str],
           limit: int = GALLERY_SIZE) -> tuple[list[dict], int]:
    """The misclassified images, most confidently wrong first (often mislabelled ones), and how many there are."""
    predicted = proba.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y)
    confidence = proba[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")]
    return [{"path": paths[i], "true": class_names[y[i]], "predicted": class_names[predicted[i]],
             "confidence": float(proba[i, predicted[i]]), "true_probability": float(proba[i, y[i]])}
            for i in order[:limit]], int(len(wrong))


def label_issues(paths: list[str], y: np.ndarray, proba: np.ndarray, class_names: list[str],
                 limit: int = GALLERY_SIZE) -> tuple[list[dict], int]:
    """The images whose given label is likely wrong by confident learning (cleanlab's ``find_label_issues``),
    least likely label first, and how many there are: candidates to look at again, not proven errors."""
    from cleanlab.filter import (
        find_label_issues,  # pandas comes with it: seconds to import, so only here
    )

    with warnings.catch_warnings():  # a class too small to estimate its noise rate: cleanlab says so, we go on
        warnings.simplefilter("ignore", UserWarning)
        flagged = find_label_issues(y, proba, return_indices_ranked_by="self_confidence", n_jobs=1)
    suggested = proba.argmax(axis=1)
    return [{"path": paths[i], "given": class_names[y[i]], "suggested": class_names[suggested[i]],
             "given_probability": float(proba[i, y[i]]), "suggested_probability": float(proba[i, suggested[i]])}
            for i in flagged[:limit]], int(len(flagged))


@dataclass
class ModelDetails:
    """What a report shows of one model's predictions on images it never trained on: its scores, confusion matrix
    (counts; normalise rows for recall), per-class figures, the misclassified images, the likely mislabelled
    ones, and accuracy against coverage when the least confident are called unknown."""

    images: int
    scores: dict[str, float]
    confusion: list[list[int]]
    per_class: dict
    misclassified: list[dict]
    misclassified_total: int
    label_issues: list[dict]
    label_issues_total: int
    coverage: dict[str, list[float]]
    reject: RejectRule

    def to_json(self) -> dict:
        return {"images": self.images, **self.scores, "confusion": self.confusion, "per_class": self.per_class,
                "misclassified": self.misclassified, "misclassified_total": self.misclassified_total,
                "label_issues": self.label_issues, "label_issues_total": self.label_issues_total,
                "coverage": self.coverage, "reject": self.reject.to_json()}


def model_details(paths: list[str], y: np.ndarray, proba: np.ndarray, class_names: list[str]) -> ModelDetails:
    """The :class:`ModelDetails` of out-of-sample probabilities ``proba`` of the images ``paths``."""
    predicted = proba.argmax(axis=1)
    gallery, wrong = errors(paths, y, proba, class_names)
    issues, flagged = label_issues(paths, y, proba, class_names)
    return ModelDetails(int(len(y)), metrics.classification_scores(y, predicted),
                        confusion_matrix(y, predicted, labels=range(len(class_names))).tolist(),
                        metrics.per_class(y, predicted, class_names), gallery, wrong, issues, flagged,
                        coverage_curve(y, proba), reject_rule(y, proba))


def code_map(codes: np.ndarray, seed: int = 0) -> tuple[dict[str, np.ndarray], list[float]]:
    """Two-dimensional embeddings of standardised codes (PCA always, t-SNE when the set is small enough),
    and the share of variance the two principal components explain."""
    X = StandardScaler().fit_transform(np.asarray(codes, np.float64))
    pca = PCA(n_components=2, random_state=seed).fit(X)
    embeddings = {"PCA": pca.transform(X)}
    if 5 <= len(X) <= TSNE_MAX_IMAGES:
        # t-SNE on the leading principal components: the usual practice, and much faster.
        reduced = PCA(n_components=min(50, *X.shape), random_state=seed).fit_transform(X)
        embeddings["t-SNE"] = TSNE(n_components=2, perplexity=min(30.0, (len(X) - 1) / 3), init="pca",
                                   random_state=seed).fit_transform(reduced)
    else:
        log.info("t-SNE skipped: %d images (it runs up to %d)", len(X), TSNE_MAX_IMAGES)
    return embeddings, [float(v) for v in pca.explained_variance_ratio_]
