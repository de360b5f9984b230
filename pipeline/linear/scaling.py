"""How codes are scaled before a linear model: power-normalised then standardised (the default), standardised, or
L2-normalised.

Pooled post-activation codes are never negative and heavy-tailed: a few large
activations dominate a linear model's dot products. A signed power below one
(Perronnin et al.'s power normalisation, here the fourth root) evens them out.
Columns that take negative values in training (a stage's linear projection,
as efficientnet's stage6) are left as they are: the power there only magnified
noise near zero. On three sets the fourth root beat the square root and plain
standardisation (docs/benchmarks.md, "Layers and scaling").
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from ..errors import UserError
from .config import NORMALISATIONS

POWER = 0.25


def signed_power(X, power: float, columns, ops=np):
    """``sign(x) |x| ** power`` in ``columns`` (a boolean mask), ``x`` elsewhere; ``ops``: numpy or keras.ops."""
    return ops.where(columns, ops.sign(X) * ops.abs(X) ** power, X)


class PowerScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """The signed ``power`` of the columns never negative in training, then every column standardised.

    ``partial_fit`` keeps the statistics of both the raw and the powered columns, so that a column seen negative
    in a later batch is scaled exactly as one :meth:`fit` on all the rows would scale it.
    """

    def __init__(self, power: float = POWER):
        self.power = power

    def fit(self, X, y=None):
        for name in ("raw_", "powered_", "n_features_in_"):
            self.__dict__.pop(name, None)
        return self.partial_fit(X)

    def partial_fit(self, X, y=None):
        if not 0 < self.power <= 1:
            raise ValueError(f"power must be in (0, 1], not {self.power}")
        first = not hasattr(self, "raw_")
        X = validate_data(self, X, reset=first, dtype=[np.float64, np.float32])
        if first:
            self.raw_, self.powered_ = StandardScaler(), StandardScaler()
            self.nonnegative_ = np.ones(X.shape[1], bool)
        self.raw_.partial_fit(X)
        self.powered_.partial_fit(signed_power(X, self.power, True))
        self.nonnegative_ &= X.min(axis=0) >= 0
        self.mean_ = np.where(self.nonnegative_, self.powered_.mean_, self.raw_.mean_)
        self.scale_ = np.where(self.nonnegative_, self.powered_.scale_, self.raw_.scale_)
        return self

    def transform(self, X):
        check_is_fitted(self, "scale_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return (signed_power(X, self.power, self.nonnegative_) - self.mean_) / self.scale_


def scaler(normalise):
    """A fresh, unfitted scaler for ``normalise`` (one of :data:`NORMALISATIONS`, or a
    :class:`~pipeline.linear.blocks.Blocks` scaling)."""
    from .blocks import Blocks, BlockScaler

    if isinstance(normalise, Blocks):
        return BlockScaler(normalise.sizes, normalise.keep)
    if normalise not in NORMALISATIONS:
        raise UserError(f"must be one of {', '.join(NORMALISATIONS)}, not {normalise!r}", param="normalise")
    return {"power": PowerScaler, "standard": StandardScaler, "l2": Normalizer}[normalise]()
