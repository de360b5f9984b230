"""The registry of model kinds: one typed entry per kind of model the project makes, saves, exports and reports.

Every place that treats kinds differently asks the entry (its estimator, the
penalty grid cross-validation chooses from, whether its probabilities are
Platt-calibrated, how the streamed fit trains it, what its bundle may hold,
whether it exports), so adding a classifier is one entry here plus its tests.
Estimators are imported when a model is built, so that the settings and the
command line's ``--help`` import no scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import UserError
from ..task import CLASSIFICATION, MULTILABEL, REGRESSION, Task


@dataclass(frozen=True)
class Incremental:
    """How the streamed fit (:mod:`pipeline.linear.stream`) trains a kind on chunks: ``learner(alpha, seed)``
    makes a model with ``partial_fit``, ``finish(model, alpha, n)`` turns it into the in-memory estimator."""

    loss: str
    learner: Callable[[float, int], Any]
    finish: Callable[[Any, float, int], Any] = lambda model, alpha, n: model


@dataclass(frozen=True)
class ModelKind:
    """One kind of model: what it is (``task``), how it is made (``build(C, class_weight)``, ``path``), chosen
    (``grid`` of ``hyper``), calibrated, streamed, saved and exported, and how its outputs are described."""

    name: str
    task: Task
    file: str  # how its model is saved in a run folder: a bundle (.skops), or a fine-tuned network (.keras)
    outputs: str  # what its predictions are, as predict says
    grid: tuple[float, ...] = ()
    hyper: str = "C"
    build: Callable[[float, str | None], Any] | None = None  # None: not a scikit-learn model (a network)
    path: Callable[..., Iterator] | None = None  # (X, y, grid, class_weight) -> fitted models along the grid
    calibrated: bool = False  # saved with Platt sigmoids around it (CalibratedClassifierCV)
    loss: str | None = None  # several labels at once: the joint solver's loss (pipeline.linear.svm.label_path)
    incremental: Incremental | None = None
    trusted: tuple[str, ...] = ()  # types of this project a bundle of this kind may hold (pipeline.linear.bundle)
    unexported: str = ""  # why pipeline.deploy.export cannot make it one graph from pixels to probabilities
    # settings of a fitted model chosen with C on the inner folds without refitting (the k-NN blend's k and weight)
    variants: tuple[dict, ...] = ({},)
    default: bool = True  # among the classifiers fit compares when none are named
    multilabel: str | None = None  # the kind that fits several labels per image in its stead

    @property
    def linear(self) -> bool:
        """A scikit-learn model on codes, saved as a bundle (else a fine-tuned network)."""
        return self.build is not None


def is_network(path) -> bool:
    """Whether ``path`` names a fine-tuned network (saved as the fine-tuned kind's file is)."""
    return Path(path).suffix == Path(KINDS["fine-tuned"].file).suffix


def _svm(C: float, class_weight=None):
    from .svm import LinearSVM

    return LinearSVM(C=C, class_weight=class_weight)


def _svm_path(X, y, grid, class_weight=None):
    from .svm import svm_path

    return svm_path(X, y, grid, class_weight)


def _softmax(C: float, class_weight=None):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, class_weight=class_weight, max_iter=2000)


def _softmax_path(X, y, grid, class_weight=None):
    """Softmax fits along ``grid``, each warm-started from the last."""
    model = _softmax(grid[0], class_weight).set_params(warm_start=True)
    return (model.set_params(C=C).fit(X, y) for C in grid)


def _blend(C: float, class_weight=None):
    from .blend import KnnBlend

    return KnnBlend(C=C, class_weight=class_weight)


def _blend_path(X, y, grid, class_weight=None):
    """The softmax path, each model blended with the k-NN vote of the same rows."""
    from .blend import KnnBlend

    return (KnnBlend(C=model.C, class_weight=class_weight).adopt(model, X, y)
            for model in _softmax_path(X, y, grid, class_weight))


def _one_vs_rest(binary):
    from sklearn.multiclass import OneVsRestClassifier

    return OneVsRestClassifier(binary)


def _svm_ovr(C: float, class_weight=None):
    """One calibrated SVM per label: Platt sigmoids on 3 inner folds, so each label has a probability."""
    from sklearn.calibration import CalibratedClassifierCV

    return _one_vs_rest(CalibratedClassifierCV(_svm(C, class_weight), method="sigmoid", cv=3, ensemble=False))


def _logistic_ovr(C: float, class_weight=None):
    return _one_vs_rest(_softmax(C, class_weight))


def _hinge_learner(alpha: float, seed: int):
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(loss="hinge", alpha=alpha, average=True, random_state=seed)


BATCH = 256  # the streamed softmax's Adam steps; its penalty is scaled by it to mean SGD's per-row alpha
LEARNING_RATE = 3e-3  # Adam's, on standardised codes: 1e-3 (the default) is slow to converge, 1e-2 noisy


def _multinomial_learner(alpha: float, seed: int):
    """A multinomial logistic regression trained by Adam (``MLPClassifier`` without hidden layers)."""
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(), alpha=alpha * BATCH, batch_size=BATCH,
                         learning_rate_init=LEARNING_RATE, random_state=seed)


def _as_logistic(mlp, alpha: float, n: int):
    """The fitted streamed softmax as the ``LogisticRegression`` it equals (C = 1 / (alpha n)), so that the
    bundle, the export and fine-tuning's head see the in-memory fit's estimator."""
    model = _softmax(1.0 / (alpha * n))
    model.classes_, model.n_features_in_ = mlp.classes_, mlp.n_features_in_
    model.coef_, model.intercept_ = mlp.coefs_[0].T.copy(), mlp.intercepts_[0].copy()
    model.n_iter_ = np.array([mlp.n_iter_])
    return model


BLEND_VARIANTS = tuple({"k": k, "weight": w} for k in (5, 10, 20) for w in (0.0, 0.25, 0.5, 0.75, 1.0))
SVM_GRID, SOFTMAX_GRID = tuple(np.logspace(-5, -1, 5)), tuple(np.logspace(-4, 0, 5))  # the penalties C
CALIBRATION = ("sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration",
               "sklearn.frozen._frozen.FrozenEstimator")
SCALERS = ("pipeline.linear.scaling.PowerScaler", "pipeline.linear.blocks.BlockScaler")  # codes are scaled first
ALPHAS = tuple(np.logspace(-2, 5, 8))  # ridge's penalties, chosen by efficient leave-one-out


def _ridge(C: float = 1.0, class_weight=None):
    from sklearn.linear_model import RidgeCV

    return RidgeCV(alphas=ALPHAS)


KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (
    ModelKind("svm", CLASSIFICATION, "svm.skops", "calibrated SVM probabilities (Platt)", SVM_GRID,
              build=_svm, path=_svm_path, calibrated=True, incremental=Incremental("hinge", _hinge_learner),
              trusted=("pipeline.linear.svm.LinearSVM", *CALIBRATION), multilabel="svm-ovr"),
    ModelKind("softmax", CLASSIFICATION, "softmax.skops", "softmax probabilities", SOFTMAX_GRID,
              build=_softmax, path=_softmax_path,
              incremental=Incremental("multinomial log", _multinomial_learner, _as_logistic),
              multilabel="logistic-ovr"),
    ModelKind("blend", CLASSIFICATION, "blend.skops", "softmax probabilities blended with a k-NN vote",
              SOFTMAX_GRID, build=_blend, path=_blend_path, trusted=("pipeline.linear.blend.KnnBlend",),
              unexported="its k-NN vote searches the training codes, which no exported graph holds: export the "
                         "softmax bundle, or predict with this bundle itself", variants=BLEND_VARIANTS, default=False),
    ModelKind("svm-ovr", MULTILABEL, "svm_ovr.skops", "one calibrated SVM probability (Platt) per label",
              SVM_GRID, build=_svm_ovr, calibrated=True, loss="squared_hinge",
              trusted=("pipeline.linear.svm.LinearSVM", *CALIBRATION)),
    ModelKind("logistic-ovr", MULTILABEL, "logistic_ovr.skops", "one logistic probability per label",
              SOFTMAX_GRID, build=_logistic_ovr, loss="logistic"),
    ModelKind("ridge", REGRESSION, "ridge.skops", "predicted values", ALPHAS, hyper="alpha", build=_ridge,
              unexported="it predicts a numeric target; export takes classifiers"),
    ModelKind("fine-tuned", CLASSIFICATION, "model.keras", "softmax probabilities"),
)}


def get_kind(name: str) -> ModelKind:
    try:
        return KINDS[name]
    except KeyError:
        raise UserError(f"must be one of {', '.join(KINDS)}, not {name!r}", param="classifiers") from None


def kinds_for(task: Task) -> tuple[str, ...]:
    """The kinds the fit stage makes for ``task`` (``classification``: the classifiers it compares)."""
    return tuple(name for name, kind in KINDS.items() if kind.task == task and kind.linear)


def classifiers() -> tuple[str, ...]:
    """The classifiers registered now (the settings' choices)."""
    return kinds_for(CLASSIFICATION)


CLASSIFIERS = tuple(name for name in classifiers() if KINDS[name].default)  # those compared when none are named


def multilabel_kind(name: str) -> str:
    """The kind that fits several labels per image for the classifier ``name``, or one line."""
    kind = get_kind(name).multilabel
    if kind is None:
        raise UserError(f"{name} fits one class per image; for several labels use "
                        f"{', '.join(n for n in classifiers() if KINDS[n].multilabel)}", param="classifiers")
    return kind


def trusted_types() -> list[str]:
    """Every type of this project a bundle may hold, besides scikit-learn's own."""
    return sorted({t for kind in KINDS.values() for t in kind.trusted} | set(SCALERS))
