"""Optimizers for fine-tuning, with a lower learning rate for pretrained blocks than for the new head.

Keras has no per-variable learning rate; scaling gradients would not do under
Adam (its step is invariant to the gradient's scale), so the step's learning
rate is scaled per variable. Backend-agnostic: variables are matched by their
index in the optimizer, which every backend's update step supports.
"""

from __future__ import annotations

from typing import Iterable

import keras

from .config import OPTIMIZERS


class _Layerwise:
    """Mixin: variables in ``slow`` (by path) step at ``slow_factor`` times the learning rate."""

    def __init__(self, *args, slow: Iterable[str] = (), slow_factor: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self._slow, self._slow_factor = frozenset(slow), float(slow_factor)

    def build(self, variables):
        super().build(variables)
        self._factors = [self._slow_factor if v.path in self._slow else 1.0 for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factors[self._get_variable_index(variable)]
        super().update_step(gradient, variable, learning_rate * factor if factor != 1.0 else learning_rate)


class LayerwiseAdam(_Layerwise, keras.optimizers.Adam):
    pass


class LayerwiseSGD(_Layerwise, keras.optimizers.SGD):
    pass


def make_optimizer(name: str, learning_rate: float, slow: Iterable[str] = (), slow_factor: float = 1.0):
    """``adam`` or ``sgd`` (momentum 0.9); variables whose path is in ``slow`` step ``slow_factor`` times
    smaller. Without ``slow`` it is Keras' own class, so a model saved compiled loads anywhere."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {name!r}")
    slow = frozenset(slow)
    kwargs = {"momentum": 0.9} if name == "sgd" else {}
    if not slow or slow_factor == 1.0:
        return (keras.optimizers.Adam if name == "adam" else keras.optimizers.SGD)(learning_rate, **kwargs)
    return (LayerwiseAdam if name == "adam" else LayerwiseSGD)(learning_rate, slow=slow, slow_factor=slow_factor,
                                                                **kwargs)
