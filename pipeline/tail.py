"""Tail fine-tuning: the frozen front runs once per view and is cached; only the blocks after the cut train.

The recipe's early layers never change during training, so their output is
computed once (ONNX Runtime on a CPU) for a few label-preserving views of each
training image (:mod:`pipeline.views`) and kept in the activation cache. Each
epoch then shows every training image in one of its views, drawn at random,
to the trainable blocks and the head: the head starts as the linear probe on
the cached codes (LP-FT), BatchNorm stays frozen in inference mode, the blocks
learn ``block_lr_factor`` times slower than the head, and early stopping on the
validation split ends training; the weights averaged over the epochs from the
third on (stochastic weight averaging) are then mixed with the starting point's
in the proportion that scores best on the validation split (the start itself
when training did not beat it). The trained blocks are the fine-tuning
network's own layers, so ``model.keras`` maps pixels to classes as the full
mode's does.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from .activation_cache import CacheKey, CachedViews, build_cache
from .backbones.engine import frozen_network
from .backbones.factory import set_trainable
from .backbones.loading import Backbone
from .images import ResizePolicy, fingerprint
from .optimizers import make_optimizer
from .views import Views

log = logging.getLogger(__name__)


def default_cut(backbone: Backbone) -> str:
    """The feature layer two before the penultimate one (stage5 of EfficientNet-Lite: stage6, stage7 and the
    top convolution train), or the first when there are fewer."""
    names = list(backbone.spec.feature_layers)
    return names[max(0, len(names) - 3)]


# Under this many images tail mode trains at the backbone's full resolution: on Tux Paint (220 images, three
# run.py splits) 224 px scored 0.818, 0.773 and 0.909 against 0.795, 0.727 and 0.886 at 160 px, for about 0.5
# more minutes; on thousands of images the doubled time per epoch takes run.py over 10 minutes.
FULL_SIZE_BELOW = 1000


def default_size(backbone: Backbone, images: int) -> int:
    """Tail mode's default resolution for a set of ``images``: the backbone's under :data:`FULL_SIZE_BELOW`,
    else about 5/7 of its side, in steps of 32 (160 px for 224): half the pixels and so about half the time
    per view and per epoch."""
    if images < FULL_SIZE_BELOW:
        return backbone.spec.input_size
    return max(32, round(backbone.spec.input_size * 5 / 7 / 32) * 32)


@dataclass(frozen=True)
class TailSettings:
    cut: str
    views: Views
    epochs: int
    learning_rate: float
    block_lr_factor: float
    optimizer: str
    batch_size: int
    patience: int
    engine: str
    progress: bool


class RandomViews(keras.utils.PyDataset):
    """Training batches from the cache: each epoch, every image once, in one of its views drawn at random."""

    def __init__(self, cache: CachedViews, paths: Sequence[str], targets: np.ndarray, views: int, batch_size: int,
                 seed: int):
        super().__init__()
        self.cache, self.paths, self.targets = cache, list(paths), targets
        self.views, self.batch_size, self.seed, self.epoch = views, batch_size, seed, 0
        self._draw()

    def _draw(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.order = rng.permutation(len(self.paths))
        self.chosen = rng.integers(0, self.views, len(self.paths))

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.batch_size)

    def __getitem__(self, b: int):
        picked = self.order[b * self.batch_size:(b + 1) * self.batch_size]
        x = np.empty((len(picked), *self.cache.shape), np.float32)
        for k in np.unique(self.chosen[picked]):
            at = np.flatnonzero(self.chosen[picked] == k)
            x[at] = self.cache.read(int(k), [self.paths[i] for i in picked[at]])
        return x, self.targets[picked]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._draw()


def tail_network(model: keras.Model, backbone: Backbone, cut: str) -> tuple[keras.Model, keras.Model, str]:
    """(tail: cut activations -> pooled-and-headed outputs, codes: cut activations -> pooled codes, the first
    trainable layer) sharing their layers with the fine-tuning network ``model``."""
    base = model.get_layer("base")
    layer = backbone.spec.feature_layers[cut]
    names = [x.name for x in base.layers]
    blocks = keras.Model(base.get_layer(layer).output, base.output, name="blocks")
    after = keras.Model(model.get_layer("pool").input, model.output, name="after_blocks")
    inputs = keras.Input(blocks.input.shape[1:], name="activations")
    features = blocks(inputs, training=False)
    codes = keras.Model(inputs, model.get_layer("pool")(features), name="codes")
    return keras.Model(inputs, after(features), name="tail"), codes, names[names.index(layer) + 1]


def cache_views(backbone: Backbone, policy: ResizePolicy, folder: Path, files: Sequence[Path],
                paths: Sequence[str], wanted: Sequence[int], settings: TailSettings, workers: int | None = None
                ) -> tuple[CachedViews, list[tuple[int, str]]]:
    """The activation cache of ``files`` (``wanted[i]`` views of file i), computed where missing."""
    front = frozen_network(backbone, "front", (settings.cut,), settings.engine, size=policy.size)
    key = CacheKey(backbone.spec.name, backbone.weights_checksum, settings.cut, policy, settings.views)
    started = time.perf_counter()
    cache, failed = build_cache(folder, key, front, files, paths, [fingerprint(f) for f in files], wanted,
                                settings.batch_size, workers, settings.progress)
    log.info("activation cache ready in %.0f s (%s, %s)", time.perf_counter() - started, folder, front.engine)
    return cache, failed


AVERAGE_FROM = 2  # the first epoch (from 0) in the weight average


class WeightAverage(keras.callbacks.Callback):
    """At the end of training, sets the model to the mean of its weights at the end of each epoch from ``first``
    on (stochastic weight averaging, Izmailov et al. 2018): on Fashion-MNIST 3,000 the best epoch's weights
    scored 0.858 and 0.878 on run.py's held-out images, the average 0.882 and 0.878. BatchNorm is frozen, so
    the average needs no new statistics. The mean is saved at each epoch's end (``path``, written whole and
    renamed) and taken up again by a run resumed after an interruption."""

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


def train_tail(model: keras.Model, backbone: Backbone, cache: CachedViews, train: tuple[list[str], np.ndarray],
               val: tuple[list[str], np.ndarray], settings: TailSettings, out: Path, class_weight, seed: int,
               init_head) -> tuple[keras.Model, dict]:
    """Train ``model``'s blocks after the cut and its head from ``cache``; returns (the tail network, history).

    ``init_head(codes, targets)`` sets the head from a probe on the training codes (None: leave it)."""
    tail, codes, first = tail_network(model, backbone, settings.cut)
    if init_head is not None:
        pooled = np.concatenate([codes.predict_on_batch(x) for x in
                                 cache.batches(0, train[0], settings.batch_size)])
        init_head(pooled, train[1])
    set_trainable(model, first)
    blocks = {v.path for v in tail.get_layer("blocks").trainable_variables}
    regression = train[1].dtype.kind == "f"
    tail.compile(optimizer=make_optimizer(settings.optimizer, settings.learning_rate, blocks,
                                          settings.block_lr_factor),
                 loss="mse" if regression else "sparse_categorical_crossentropy",
                 metrics=["mae"] if regression else ["accuracy"])
    metric = "loss" if regression else "accuracy"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(out / "backup" / "tail")),
        keras.callbacks.EarlyStopping(monitor=f"val_{metric}", patience=settings.patience),
    ]
    average = WeightAverage(out / "backup" / "tail_average.npz", min(AVERAGE_FROM, settings.epochs - 1))
    callbacks.append(average)
    data = RandomViews(cache, train[0], train[1], settings.views.count, settings.batch_size, seed)
    val_x = np.concatenate(list(cache.batches(0, val[0], 256)))
    initial = tail.get_weights()
    before = tail.evaluate(val_x, val[1], verbose=0, return_dict=True)[metric]
    started = time.perf_counter()
    fitted = tail.fit(data, validation_data=(val_x, val[1]), epochs=settings.epochs, class_weight=class_weight,
                      callbacks=callbacks, verbose="auto" if settings.progress else 0)
    seconds = time.perf_counter() - started
    scores = fitted.history[f"val_{metric}"]
    mix, by_mix = interpolate(tail, initial, (val_x, val[1]), metric, regression, before)
    history = {"tail": {**{k: [float(v) for v in vals] for k, vals in fitted.history.items()},
                        f"val_{metric}_before": float(before), "averaged_epochs": average.count,
                        "kept_start": mix == 0.0, "mix": mix,
                        f"val_{metric}_by_mix": by_mix, "seconds": seconds,
                        "seconds_per_epoch": seconds / max(1, len(scores))}}
    return tail, history
