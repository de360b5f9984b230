"""Training batches for Keras' ``fit``, in an order drawn from the run's seed alone: every image once per epoch,
shuffled anew each epoch, so a run is repeatable without touching any global random state (pass
``shuffle=False`` to ``fit``: the order is already drawn)."""

from __future__ import annotations

import math
from typing import Sequence

import keras
import numpy as np

from .cache import CachedViews


class EpochOrder(keras.utils.PyDataset):
    """``n`` items in batches of ``batch_size``, in a permutation drawn from ``(seed, epoch)``; subclasses give
    the inputs of the items picked (:meth:`inputs`) and may draw more per epoch (:meth:`draw`)."""

    def __init__(self, targets: np.ndarray, batch_size: int, seed: int):
        super().__init__()
        self.targets, self.batch_size, self.seed, self.epoch = targets, batch_size, seed, 0
        self._draw()

    def _draw(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.order = rng.permutation(len(self.targets))
        self.draw(rng)

    def draw(self, rng: np.random.Generator) -> None:
        """What else an epoch draws, after the order."""

    def inputs(self, picked: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return math.ceil(len(self.targets) / self.batch_size)

    def __getitem__(self, b: int):
        picked = self.order[b * self.batch_size:(b + 1) * self.batch_size]
        return self.inputs(picked), self.targets[picked]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._draw()


class ShuffledArrays(EpochOrder):
    """Batches of the rows of ``x`` (decoded pixels: full mode)."""

    def __init__(self, x: np.ndarray, targets: np.ndarray, batch_size: int, seed: int):
        self.x = x
        super().__init__(targets, batch_size, seed)

    def inputs(self, picked: np.ndarray) -> np.ndarray:
        return self.x[picked]


class RandomViews(EpochOrder):
    """Batches from the activation cache (tail mode): each epoch, every image in one of its ``views`` drawn at
    random."""

    def __init__(self, cache: CachedViews, paths: Sequence[str], targets: np.ndarray, views: int, batch_size: int,
                 seed: int):
        self.cache, self.paths, self.views = cache, list(paths), views
        super().__init__(targets, batch_size, seed)

    def draw(self, rng: np.random.Generator) -> None:
        self.chosen = rng.integers(0, self.views, len(self.paths))

    def inputs(self, picked: np.ndarray) -> np.ndarray:
        x = np.empty((len(picked), *self.cache.shape), np.float32)
        for k in np.unique(self.chosen[picked]):
            at = np.flatnonzero(self.chosen[picked] == k)
            x[at] = self.cache.read(int(k), [self.paths[i] for i in picked[at]])
        return x
