"""Every stage of the network as one block of the codes: each block scaled to count alike, and the blocks that
carry the decision chosen on the training rows alone.

Joined, the stages of a network are a few wide blocks and many narrow ones: once standardised, a 1,280-value
penultimate layer has 80 times the variance of a 16-value stage, so an L2-penalised linear model hears it 80
times louder. Scaling each standardised block by the square root of its width gives every block the same
total variance (:class:`BlockScaler`; the whole keeps the variance it had, so the penalties' grids still fit).
Which blocks to keep is chosen as Head2Toe does (Evci et al., "Head2Toe: Utilizing Intermediate
Representations for Better Transfer Learning", ICML 2022): a group lasso, one group per block, ranks them by
the norm of their weights. Here the lasso is a least-squares one on the one-hot classes, solved by FISTA on
the Gram matrix (seconds on a few thousand images), along a path of penalties each scored on a held-out
quarter of the rows it is given; the blocks with any weight at the largest penalty within a standard error of
the best score are kept (:func:`select_blocks`; the one-standard-error rule of Breiman et al.'s CART, which
prefers the sparser of two models the validation cannot tell apart). Cross-validation calls it on each outer
training part, so the folds that score a selection never took part in it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.utils.validation import check_is_fitted, validate_data

from ..results import Blocks
from . import tta
from .config import BLOCK_SETTINGS
from .scaling import POWER, PowerScaler, signed_power

PENALTIES = tuple(np.logspace(0, -2.5, 8)[1:])  # the lasso's path, as fractions of the penalty zeroing every block
ITERATIONS = 100  # FISTA's steps per penalty at most (warm-started along the path)
TOLERANCE = 1e-3  # relative change of the weights that ends a penalty's steps
VALIDATION = 0.25  # share of the rows that scores each penalty


def bounds(sizes) -> list[tuple[int, int]]:
    ends = np.cumsum(sizes)
    return [(int(e - s), int(e)) for s, e in zip(sizes, ends)]


class BlockScaler(TransformerMixin, BaseEstimator):
    """The power scaling of :class:`~pipeline.linear.scaling.PowerScaler`, keeping the blocks ``keep`` (every one
    when None), each then scaled to the same total variance (the kept columns' count over the kept blocks'),
    whatever its width. Fitted, it exposes what an exported
    graph folds in: ``columns_`` (the kept columns), ``nonnegative_``, ``mean_`` and ``scale_`` on them."""

    def __init__(self, sizes=(), keep=None, power: float = POWER):
        self.sizes, self.keep, self.power = sizes, keep, power

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        if sum(self.sizes) != X.shape[1] or min(self.sizes, default=0) < 1:
            raise ValueError(f"blocks of {list(self.sizes)} values do not make codes of {X.shape[1]}")
        keep = (True,) * len(self.sizes) if self.keep is None else tuple(self.keep)
        if len(keep) != len(self.sizes) or not any(keep):
            raise ValueError(f"keep {list(keep)} does not name some of {len(self.sizes)} blocks")
        spans = [(s, e) for (s, e), k in zip(bounds(self.sizes), keep) if k]
        self.columns_ = np.concatenate([np.arange(s, e) for s, e in spans])
        power = PowerScaler(self.power).fit(X[:, self.columns_])
        # each kept block's variance made the kept columns' mean share: blocks weigh alike, and the whole keeps
        # the variance the power scaling gives it, so the kinds' C grids stay where they were measured
        widths = np.concatenate([np.full(e - s, e - s, float) for s, e in spans])
        self.nonnegative_, self.mean_ = power.nonnegative_, power.mean_
        self.scale_ = power.scale_ * np.sqrt(widths * len(spans) / len(self.columns_))
        return self

    def transform(self, X):
        check_is_fitted(self, "columns_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])[:, self.columns_]
        return (signed_power(X, self.power, self.nonnegative_) - self.mean_) / self.scale_


def _group_lasso_path(Z: np.ndarray, Y: np.ndarray, spans, fractions) -> list[np.ndarray]:
    """Weights (columns x classes) of ``min 1/2n |Y - ZW|^2 + lam sum_b |W_b|`` along ``lam = fraction *
    lam_max``, ``Z`` and ``Y`` centred; FISTA on the Gram matrix, warm-started along the path."""
    n = len(Z)
    Z, Y = Z.astype(np.float32), Y.astype(np.float32)  # half the time of float64, and precise enough to rank
    gram, target = Z.T @ Z / n, Z.T @ Y / n
    v = np.ones(len(gram), np.float32)
    for _ in range(30):  # the Lipschitz constant: the Gram's largest eigenvalue, by power iteration
        v = gram @ v
        v /= np.linalg.norm(v) or 1.0
    step = 1.0 / (1.01 * float(v @ gram @ v) + 1e-12)
    top = max(float(np.linalg.norm(target[s:e])) for s, e in spans)
    W = np.zeros_like(target)
    path = []
    for fraction in fractions:
        lam = float(fraction * top)
        V, t = W.copy(), 1.0
        for _ in range(ITERATIONS):
            U = V - step * (gram @ V - target)
            new = np.zeros_like(U)
            for s, e in spans:
                norm = np.linalg.norm(U[s:e])
                if norm > step * lam:
                    new[s:e] = U[s:e] * (1 - step * lam / norm)
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2  # a Python float: numpy's would make V float64
            V = new + (t - 1) / t_next * (new - W)
            change = np.linalg.norm(new - W) / (np.linalg.norm(new) or 1.0)
            W, t = new, t_next
            if change < TOLERANCE:
                break
        path.append(W.copy())
    return path


def relevance(W: np.ndarray, spans) -> np.ndarray:
    """Each block's share of the weights' norm (Head2Toe's relevance)."""
    norms = np.array([np.linalg.norm(W[s:e]) for s, e in spans])
    return norms / norms.sum() if norms.sum() > 0 else norms


def select_blocks(blocks: Blocks, X: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[Blocks, np.ndarray]:
    """``blocks`` with the blocks to keep chosen on ``X`` and its classes ``y`` (every view a row), and the
    relevance of each block at the chosen penalty. Already chosen: as they are."""
    spans = bounds(blocks.sizes)
    if blocks.keep is not None:
        return blocks, np.array(blocks.keep, float) / max(1, sum(blocks.keep))
    Z = BlockScaler(blocks.sizes).fit_transform(X)
    classes, y = np.unique(y, return_inverse=True)
    Y = np.eye(len(classes))[y]
    train, val = next(StratifiedShuffleSplit(1, test_size=VALIDATION, random_state=seed).split(Z, y))
    mean_z, mean_y = Z[train].mean(axis=0), Y[train].mean(axis=0)
    path = _group_lasso_path(Z[train] - mean_z, Y[train] - mean_y, spans, PENALTIES)
    scores = np.array([np.mean(((Z[val] - mean_z) @ W).argmax(axis=1) == y[val]) for W in path])
    # the one-standard-error rule: the largest penalty (the fewest blocks) within a standard error of the best
    error = np.sqrt(scores.max() * (1 - scores.max()) / len(val))
    best = path[int(np.argmax(scores >= scores.max() - error))]
    weight = relevance(best, spans)
    keep = tuple(bool(w > 0) for w in weight)
    if not any(keep):
        keep = tuple(i == int(np.argmax(relevance(path[-1], spans))) for i in range(len(spans)))
    return replace(blocks, keep=keep), weight


def competing(setting: str, widths: dict[str, tuple[int, ...]], plain: str = "power"):
    """The scalings :func:`pipeline.linear.cv.cross_validate` compares for each candidate layer (``widths``: of
    the stored layers it joins): ``blocks`` alone or (``auto``) beside ``plain`` where a layer joins several;
    any other ``setting`` as it is."""
    if setting not in BLOCK_SETTINGS:
        return setting
    competing = {}
    for layer, sizes in widths.items():
        weighed = Blocks(tuple(sizes), tuple(layer.split("+"))) if len(sizes) > 1 else plain
        competing[layer] = tuple(dict.fromkeys((weighed,) if setting == "blocks" else (plain, weighed)))
    return competing


def resolve(normalise, X: np.ndarray, y: np.ndarray, seed: int = 0):
    """``normalise`` as a model trained on ``X`` (with or without views) uses it: a :class:`Blocks` scaling with
    its blocks chosen on these rows, anything else as it is."""
    if isinstance(normalise, Blocks) and normalise.keep is None:
        X, y, _ = tta.training_rows(X, y)
        return select_blocks(normalise, X, y, seed)[0]
    return normalise
