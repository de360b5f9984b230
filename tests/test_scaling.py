"""The power scaler: which columns it takes the root of, and partial fits equal to one fit."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.preprocessing import StandardScaler

from pipeline.errors import UserError
from pipeline.linear.scaling import PowerScaler, scaler


def _codes(rows=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.lognormal(size=(rows, 6))  # heavy-tailed and positive, like pooled activations
    X[:, 4:] = rng.normal(size=(rows, 2))  # a stage's linear projection: signed
    return X


def test_the_fourth_root_of_never_negative_columns_then_standardised():
    X = _codes()
    out = PowerScaler().fit(X).transform(X)
    assert np.allclose(out[:, :4], StandardScaler().fit_transform(X[:, :4] ** 0.25))
    assert np.allclose(out[:, 4:], StandardScaler().fit_transform(X[:, 4:]))
    assert PowerScaler().fit(X).nonnegative_.tolist() == [True] * 4 + [False] * 2
    skew = lambda a: ((a - a.mean(0)) ** 3).mean(0) / a.std(0) ** 3  # noqa: E731
    assert (np.abs(skew(out[:, :4])) < np.abs(skew(StandardScaler().fit_transform(X[:, :4])))).all()


def test_partial_fits_equal_one_fit_even_when_a_column_turns_negative_late():
    X = _codes(90, seed=1)
    X[80, 0] = -0.5  # column 0 looks never negative in the first two batches
    whole = PowerScaler().fit(X)
    parts = PowerScaler()
    for batch in np.array_split(X, 3):
        parts.partial_fit(batch)
    assert not parts.nonnegative_[0] and parts.nonnegative_[1]
    assert np.allclose(parts.transform(X), whole.transform(X))
    assert np.allclose(clone(whole).fit(X).transform(X), whole.transform(X))  # refits from scratch


def test_negative_values_at_prediction_keep_their_sign():
    scale = PowerScaler().fit(_codes())
    probe = np.zeros((2, 6))
    probe[:, 0] = [-16.0, 16.0]
    out = scale.transform(probe)
    assert out[0, 0] - out[1, 0] == pytest.approx(-4 / scale.scale_[0])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="power"):
        PowerScaler(power=2).fit(_codes())
    with pytest.raises(UserError, match="power, standard, l2"):
        scaler("minmax")
