"""A linear SVM for dense CNN codes: LinearSVC's objective, solved with L-BFGS on BLAS.

scikit-learn's ``LinearSVC`` (liblinear) is built for sparse data; on dense
codes it is slow enough to make nested cross-validation on a few thousand
images impractical (docs/benchmarks.md, "Fit speed"). The objective here is the same (one-vs-rest squared hinge loss
with an L2 penalty, for each class k)::

    min_w,b  1/2 ||w||^2 + C sum_i s_i max(0, 1 - y_ik (w . x_i + b))^2

with ``y_ik = +1`` for class k and -1 otherwise and ``s_i`` the sample's class
weight; the intercept is not penalised (liblinear penalises it).

The optimal ``w`` lies in the row space of X (the loss only sees ``X w``), so
it is solved exactly in an orthonormal basis of that row space, each direction scaled by
the Hessian's value there when every sample is active. That preconditioning
makes L-BFGS converge in tens of iterations at the small C that suit CNN
codes, and one basis serves a whole path of C values (:func:`svm_path`), as
cross-validation needs.

The same solver fits several labels at once (:func:`label_path`): each column
of a target matrix is its own binary problem, all sharing the basis, with the
squared hinge or the logistic loss (then each column's solution is a binary
logistic regression's, as scikit-learn's ``LogisticRegression`` defines it).
"""

from __future__ import annotations

import warnings
from typing import Iterator, Sequence

import numpy as np
import scipy.linalg
import scipy.special
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data


def _basis(X: np.ndarray):
    """``(X V, S, V^T)`` with V an orthonormal basis of X's row space and S X's singular values.

    A thin SVD when n < d; otherwise the eigenvectors of the d x d Gram matrix,
    several times cheaper for many samples (X V is then U S without dividing by S).
    """
    n, d = X.shape
    if n < d:
        try:
            U, S, Vt = np.linalg.svd(X, full_matrices=False)
        except np.linalg.LinAlgError:  # LAPACK's divide and conquer (gesdd) can fail to converge on float32 codes
            U, S, Vt = scipy.linalg.svd(X.astype(np.float64), full_matrices=False, lapack_driver="gesvd")
            U = U.astype(X.dtype)
        return U * S.astype(U.dtype), S.astype(np.float64), Vt.astype(np.float64)
    # With n >= d any orthonormal V spans the row space, so the Gram's float32
    # rounding only touches the preconditioner, never the solution.
    eigenvalues, V = np.linalg.eigh((X.T @ X).astype(np.float64))
    return (X @ V.astype(np.float32)), np.sqrt(np.maximum(eigenvalues, 0.0)), V.T


LOSSES = ("squared_hinge", "logistic")
_CURVATURE = {"squared_hinge": 2.0, "logistic": 0.25}  # the loss's largest second derivative: the preconditioner's


def _loss(loss: str, targets, scores, sample_weights):
    """(the weighted loss, its gradient with respect to the scores)."""
    margin = targets * scores
    if loss == "logistic":
        return float(np.sum(sample_weights * np.logaddexp(0.0, -margin))), \
            -sample_weights * targets * scipy.special.expit(-margin)
    slack = np.maximum(0.0, 1.0 - margin)
    return float(np.sum(sample_weights * slack * slack)), -2.0 * sample_weights * slack * targets


def _solve(XV, S, Vt, targets, weights, C, tol, max_iter, start=None, loss="squared_hinge"):
    """Minimise the objective for one C in the row-space basis; returns (coef [k, d], intercept [k], iterations)."""
    r, k = len(S), targets.shape[1]
    scale = 1.0 / np.sqrt(1.0 + _CURVATURE[loss] * C * weights.mean() * S * S)
    Z = (XV * scale).astype(np.float32)  # scores = Z @ u + b, with w = Vt.T @ (scale * u)
    sample_weights = (C * weights)[:, None]
    scale2 = (scale * scale)[:, None]

    def objective(theta):
        u, b = theta[: r * k].reshape(r, k), theta[r * k:]
        value, g = _loss(loss, targets, Z @ u.astype(np.float32) + b, sample_weights)
        grad_u = scale2 * u + Z.T @ g.astype(np.float32)
        return 0.5 * float(np.sum(scale2 * u * u)) + value, np.concatenate([grad_u.ravel(), g.sum(axis=0)])

    if start is None:
        theta0 = np.zeros(r * k + k)
    else:
        coef, intercept = start
        theta0 = np.concatenate([((Vt @ coef.T) / scale[:, None]).ravel(), intercept])
    result = minimize(objective, theta0, jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "gtol": tol, "maxcor": 20})
    if result.nit >= max_iter:
        warnings.warn(f"the linear model did not converge in {max_iter} iterations at C={C:g}; "
                      "a smaller C or a larger max_iter helps", ConvergenceWarning, stacklevel=3)
    u, b = result.x[: r * k].reshape(r, k), result.x[r * k:]
    return (Vt.T @ (scale[:, None] * u)).T, b, int(result.nit)


def label_path(X, targets, Cs: Sequence[float], loss: str = "squared_hinge", weights=None, tol=1e-5,
               max_iter=1000) -> Iterator[tuple[float, np.ndarray, np.ndarray, int]]:
    """``(C, coef [k, d], intercept [k], iterations)`` for each C in ``Cs`` (in order, lazily): the minimiser of
    ``loss`` for each column of the +1/-1 ``targets`` [n, k], all sharing one basis and warm starts."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
    X = np.asarray(X, dtype=np.float32)
    targets = np.asarray(targets, np.float64)
    weights = np.ones(len(X)) if weights is None else np.asarray(weights, np.float64)
    XV, S, Vt = _basis(X)
    start = None
    for C in Cs:
        coef, intercept, n_iter = _solve(XV, S, Vt, targets, weights, C, tol, max_iter, start, loss)
        start = coef, intercept
        yield C, coef, intercept, n_iter


def svm_path(X, y, Cs: Sequence[float], class_weight=None, tol=1e-5, max_iter=1000) -> Iterator["LinearSVM"]:
    """Fitted :class:`LinearSVM` for each C in ``Cs`` (in order, lazily), sharing one basis and warm starts."""
    X = np.asarray(X, dtype=np.float32)
    classes, encoded = np.unique(y, return_inverse=True)
    targets = np.where(encoded[:, None] == np.arange(len(classes))[None, :], 1.0, -1.0)
    weights = compute_sample_weight(class_weight, encoded)
    for C, coef, intercept, n_iter in label_path(X, targets, Cs, "squared_hinge", weights, tol, max_iter):
        model = LinearSVM(C=C, class_weight=class_weight, tol=tol, max_iter=max_iter)
        model.classes_, model.coef_, model.intercept_, model.n_iter_ = classes, coef, intercept, n_iter
        model.n_features_in_ = X.shape[1]
        yield model


class LinearSVM(ClassifierMixin, BaseEstimator):
    """One-vs-rest linear SVM (squared hinge, L2) with scikit-learn's estimator API.

    Parameters
    ----------
    C : inverse regularisation strength, as in ``LinearSVC``.
    class_weight : None or "balanced" (weights inversely proportional to class frequency).
    tol, max_iter : L-BFGS stopping criteria.
    """

    def __init__(self, C=1.0, class_weight=None, tol=1e-5, max_iter=1000):
        self.C = C
        self.class_weight = class_weight
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], ensure_min_samples=2)
        check_classification_targets(y)
        if self.C <= 0:
            raise ValueError(f"C must be positive, got {self.C}")
        if len(np.unique(y)) < 2:
            raise ValueError("LinearSVM needs samples of at least two classes")
        (fitted,) = svm_path(X, y, [self.C], self.class_weight, self.tol, self.max_iter)
        self.classes_, self.coef_, self.intercept_ = fitted.classes_, fitted.coef_, fitted.intercept_
        self.n_iter_ = fitted.n_iter_
        return self

    def _scores(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return X @ self.coef_.T + self.intercept_

    def decision_function(self, X):
        """Margins (scores, not probabilities): ``(n_samples, n_classes)``, or ``(n_samples,)`` for two
        classes, positive for ``classes_[1]``, as scikit-learn expects."""
        scores = self._scores(X)
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict(self, X):
        scores = self._scores(X)
        return self.classes_[np.argmax(scores, axis=1)]
