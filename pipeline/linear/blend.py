"""A k-nearest-neighbour vote blended with a softmax: ``(1 - weight) p_softmax + weight p_knn``.

On small sets a linear probe and a nearest-neighbour vote err on different
images, and their blend beats both, most where the probe is weak (Nakata et
al., "Revisiting a kNN-based Image Classification System with High-capacity
Storage", arXiv 2112.08459). The neighbours are found by cosine similarity of
the scaled codes (centred, then compared by angle: SimpleShot's CL2N, Wang et
al. 2019). ``k`` and ``weight`` are chosen with C on the inner folds
(:func:`pipeline.linear.cv.tune_C`): they change no fitted parameter, so every
pair is scored on one fit per C. At ``weight`` 0 it is the softmax, at 1 the
k-NN vote.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted, validate_data

SEARCHED = 20  # neighbours searched per query: the most that vote among the k chosen (pipeline.linear.kinds)
CHUNK = 1024  # query rows compared at once: a chunk's similarities take CHUNK x training rows x 4 bytes


def _unit(X: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.where(norm == 0, 1.0, norm)).astype(np.float32)


class KnnBlend(ClassifierMixin, BaseEstimator):
    """A softmax (:class:`~sklearn.linear_model.LogisticRegression` at ``C``) whose probabilities are blended with
    the vote of the ``k`` training rows most similar by cosine, the vote's share ``weight``."""

    def __init__(self, C: float = 1.0, class_weight=None, k: int = 10, weight: float = 0.5):
        self.C, self.class_weight, self.k, self.weight = C, class_weight, k, weight

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        linear = LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=2000).fit(X, y)
        return self.adopt(linear, X, y)

    def adopt(self, linear: LogisticRegression, X: np.ndarray, y: np.ndarray) -> "KnnBlend":
        """This blend around an already fitted softmax ``linear``, its neighbours the rows ``X`` (classes ``y``)
        it was fitted on: the path's models share one fit per C."""
        self.linear_, self.classes_, self.n_features_in_ = linear, linear.classes_, X.shape[1]
        self.memory_, self.memory_classes_ = _unit(X), np.searchsorted(self.classes_, y)
        return self

    def _votes(self, X: np.ndarray) -> np.ndarray:
        """The class shares among the ``k`` nearest training rows of each row of ``X``: the neighbours of the
        last query are kept, so that scoring many (k, weight) pairs on one validation part searches once."""
        k = min(self.k, len(self.memory_))
        key = (X.__array_interface__["data"][0], X.shape, X.strides)  # a new view of the same rows is the same query
        cached = getattr(self, "_neighbours", None)
        if cached is None or cached[0] != key or cached[2].shape[1] < k:
            top = min(max(SEARCHED, k), len(self.memory_))
            order = np.concatenate([
                np.argsort(-(_unit(X[i:i + CHUNK]) @ self.memory_.T), axis=1, kind="stable")[:, :top]
                for i in range(0, len(X), CHUNK)])
            self._neighbours = cached = (key, X, order)  # X held: its memory cannot be another query's meanwhile
        labels = self.memory_classes_[cached[2][:, :k]]
        return np.stack([(labels == c).mean(axis=1) for c in range(len(self.classes_))], axis=1)

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "memory_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        linear = self.linear_.predict_proba(X) if self.weight < 1 else 0.0
        votes = self._votes(X) if self.weight > 0 else 0.0
        return (1 - self.weight) * linear + self.weight * votes

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_neighbours", None)  # a query's neighbours are not the model's
        return state
