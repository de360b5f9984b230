"""Where tail fine-tuning ends: the weights averaged over its later epochs (stochastic weight averaging), mixed
with the starting point's in the share that scores best on the validation split (WiSE-FT)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import keras
import numpy as np

log = logging.getLogger(__name__)


AVERAGE_FROM = 2  # the first epoch (from 0) in the weight average


class WeightAverage(keras.callbacks.Callback):
    """At the end of training, sets the model to the mean of its weights at the end of each epoch from ``first``
    on (stochastic weight averaging, Izmailov et al. 2018), which held out as well as or better than the best
    epoch's weights (docs/benchmarks.md). BatchNorm is frozen, so the average needs no new statistics. The mean
    is saved at each epoch's end (``path``, written whole and renamed) and taken up again by a run resumed after
    an interruption."""

    def __init__(self, path: Path, first: int = AVERAGE_FROM):
        super().__init__()
        self.path, self.first, self.count, self.mean = path, first, 0, None

    def on_train_begin(self, logs=None):
        if self.path.exists():
            with np.load(self.path) as saved:
                self.count = int(saved["count"])
                self.mean = [saved[f"w{i}"] for i in range(len(saved.files) - 1)]

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.first:
            return
        weights = self.model.get_weights()
        self.count += 1
        self.mean = weights if self.mean is None else [m + (w - m) / self.count for m, w in zip(self.mean, weights)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        with open(partial, "wb") as f:
            np.savez(f, count=self.count, **{f"w{i}": m for i, m in enumerate(self.mean)})
        os.replace(partial, self.path)

    def on_train_end(self, logs=None):
        if self.mean is not None:
            self.model.set_weights(self.mean)
        self.path.unlink(missing_ok=True)


MIXES = (0.0, 0.25, 0.5, 0.75, 1.0)


def interpolate(tail: keras.Model, initial: list, val: tuple, metric: str, regression: bool, before: float
                ) -> tuple[float, dict[str, float]]:
    """Set ``tail`` to the mix of its start (``initial``: pretrained blocks, probe head) and its trained weights
    that scores best on the validation split (WiSE-FT, Wortsman et al. 2022); returns the trained weights'
    share (0: the start is kept, no epoch beat it) and each mix's score. Ties go to the smaller share."""
    trained = tail.get_weights()
    by_mix = {0.0: before}
    for mix in MIXES[1:]:
        tail.set_weights([(1 - mix) * a + mix * b for a, b in zip(initial, trained)])
        by_mix[mix] = tail.evaluate(*val, verbose=0, return_dict=True)[metric]
    best = (min if regression else max)(MIXES, key=by_mix.__getitem__)  # the first of equals: the smaller share
    tail.set_weights([(1 - best) * a + best * b for a, b in zip(initial, trained)])
    log.info("weights: %.0f%% trained, %.0f%% start, the best mix on the validation split (%s %.4f; start %.4f)",
             100 * best, 100 * (1 - best), metric, by_mix[best], before)
    return best, {str(m): float(v) for m, v in by_mix.items()}
