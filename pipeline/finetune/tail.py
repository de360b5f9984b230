"""Tail fine-tuning: the frozen front runs once per view and is cached; only the blocks after the cut train.

The recipe's early layers never change during training, so their output is
computed once (ONNX Runtime on a CPU) for a few label-preserving views of each
training image (:mod:`pipeline.data.views`) and kept in the activation cache. Each
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import keras
import numpy as np

from ..backbones.engine import frozen_network
from ..backbones.factory import create_model, set_trainable
from ..backbones.loading import Backbone
from ..data.decode import ResizePolicy
from ..data.discover import fingerprint
from ..data.views import ShiftedViews
from ..errors import UserError
from ..task import Task
from .averaging import AVERAGE_FROM, WeightAverage, interpolate
from .batches import RandomViews
from .cache import CachedViews, CacheKey, build_cache
from .config import FULL_SIZE_BELOW, FinetuneConfig
from .epochs import EpochLog, ResumedEarlyStopping, backup
from .head import head_initialiser
from .optimizers import make_optimizer
from .split import Split

log = logging.getLogger(__name__)


def default_cut(backbone: Backbone) -> str:
    """The backbone's own (stage5 of EfficientNet-Lite: stage6, stage7 and the top convolution train), else the
    feature layer two before the penultimate one, or the first when there are fewer."""
    names = list(backbone.spec.feature_layers)
    return backbone.spec.tail_cut or names[max(0, len(names) - 3)]


def activation_folder(cfg: FinetuneConfig) -> Path:
    """Where the activation cache lives: ``cfg.cache``, or the run's own folder."""
    return cfg.cache or cfg.out / "activations"


def default_size(backbone: Backbone, images: int) -> int:
    """Tail mode's default resolution for a set of ``images``: the backbone's under :data:`FULL_SIZE_BELOW`,
    else about 5/7 of its side, in steps of 32 (160 px for 224): half the pixels and so about half the time
    per view and per epoch."""
    if images < FULL_SIZE_BELOW:
        return backbone.spec.input_size
    return max(32, round(backbone.spec.input_size * 5 / 7 / 32) * 32)


@dataclass(frozen=True)
class TailSettings:
    """What tail training needs of the stage's settings."""

    cut: str
    views: ShiftedViews
    epochs: int
    learning_rate: float
    block_lr_factor: float
    optimizer: str
    batch_size: int
    patience: int
    engine: str
    progress: bool


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


def train_tail(model: keras.Model, backbone: Backbone, cache: CachedViews, train: tuple[list[str], np.ndarray],
               val: tuple[list[str], np.ndarray], settings: TailSettings, out: Path, class_weight, seed: int,
               init_head, task: Task) -> tuple[keras.Model, dict]:
    """Train ``model``'s blocks after the cut and its head from ``cache``; returns (the tail network, history).

    ``init_head(codes, targets)`` sets the head from a probe on the training codes (None: leave it)."""
    tail, codes, first = tail_network(model, backbone, settings.cut)
    if init_head is not None:
        pooled = np.concatenate([codes.predict_on_batch(x) for x in
                                 cache.batches(0, train[0], settings.batch_size)])
        init_head(pooled, train[1])
    set_trainable(model, first)
    blocks = {v.path for v in tail.get_layer("blocks").trainable_variables}
    tail.compile(optimizer=make_optimizer(settings.optimizer, settings.learning_rate, blocks,
                                          settings.block_lr_factor),
                 loss=task.loss, metrics=[task.metric])
    metric = task.monitor.removeprefix("val_")
    epochs = EpochLog(out / "backup" / "tail_epochs.json")
    averaged = out / "backup" / "tail_average.npz"
    callbacks = [
        backup(tail, out / "backup" / "tail", epochs, averaged), epochs,
        ResumedEarlyStopping(epochs, monitor=f"val_{metric}", patience=settings.patience),
        WeightAverage(averaged, min(AVERAGE_FROM, settings.epochs - 1)),
    ]
    average = callbacks[-1]
    data = RandomViews(cache, train[0], train[1], settings.views.count, settings.batch_size, seed)
    val_x = np.concatenate(list(cache.batches(0, val[0], 256)))
    initial = tail.get_weights()
    before = tail.evaluate(val_x, val[1], verbose=0, return_dict=True)[metric]
    tail.fit(data, validation_data=(val_x, val[1]), epochs=settings.epochs, class_weight=class_weight,
             callbacks=callbacks, shuffle=False, verbose="auto" if settings.progress else 0)
    whole = epochs.history()  # every epoch, those before an interruption too
    mix, by_mix = interpolate(tail, initial, (val_x, val[1]), metric, task.numeric, before)
    history = {"tail": {**whole, f"val_{metric}_before": float(before), "averaged_epochs": average.count,
                        "kept_start": mix == 0.0, "mix": mix,
                        f"val_{metric}_by_mix": by_mix, "seconds": epochs.seconds,
                        "seconds_per_epoch": epochs.seconds / max(1, len(whole[f"val_{metric}"]))}}
    epochs.remove()
    return tail, history


def tail_settings(cfg: FinetuneConfig, backbone: Backbone) -> TailSettings:
    """Tail mode's part of ``cfg``, its cut checked against ``backbone``."""
    backbone.check_layers([cfg.top])
    names = list(backbone.spec.feature_layers)
    cut = cfg.cut or default_cut(backbone)
    if cut not in names[:names.index(cfg.top)]:
        raise UserError(f"the cut must be a feature layer before {cfg.top}: "
                        f"{', '.join(names[:names.index(cfg.top)]) or '(none)'}", param="cut")
    return TailSettings(cut, ShiftedViews(cfg.views, cfg.flip, seed=cfg.seed), cfg.tail_epochs, cfg.learning_rate,
                        cfg.block_lr_factor, cfg.optimizer, cfg.batch_size, cfg.patience, cfg.engine, cfg.progress)


def tail_mode(cfg: FinetuneConfig, backbone: Backbone, policy: ResizePolicy, split: Split) -> tuple:
    """Train from the activation cache of ``split``'s images (view 0 of every image, ``views`` of the training
    ones); the network, its history, its outputs on the validation and test images (None without any), and what
    the protocol records."""
    settings = tail_settings(cfg, backbone)
    wanted = np.ones(len(split.paths), int)
    wanted[split.train] = settings.views.count
    cache, failed = cache_views(backbone, policy, activation_folder(cfg), split.files, split.paths, wanted, settings)
    try:
        if failed:
            raise UserError(f"{split.paths[failed[0][0]]} could not be decoded any more ({failed[0][1]}); did it "
                            "change during the run?", param="data")
        model = create_model(backbone, "finetune", layers=(cfg.top,), classes=len(split.names),
                             input_size=policy.size, hidden=cfg.hidden, dropout=cfg.dropout, seed=cfg.seed)
        tail, history = train_tail(model, backbone, cache, split.part(split.train), split.part(split.val), settings,
                                   cfg.out, split.class_weight, cfg.seed, head_initialiser(cfg, model, split.task),
                                   split.task)
        outputs = [np.concatenate([tail.predict_on_batch(x) for x in cache.batches(0, split.part(rows)[0],
                                                                                 cfg.batch_size)])
                   if len(rows) else None for rows in (split.val, split.test)]
    finally:
        cache.close()
    protocol = {"cut": settings.cut, "views": settings.views.to_json(), "max_epochs": settings.epochs,
                "learning_rates": {"head": cfg.learning_rate, "blocks": cfg.learning_rate * cfg.block_lr_factor}}
    return model, history, outputs, protocol
