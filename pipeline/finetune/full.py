"""Full fine-tuning (the default on a GPU): the whole network runs on augmented pixels every epoch, the new head
first with the base frozen, then the later layers at a ten times smaller learning rate. A rerun after the first
phase completed continues with the second; an interrupted phase resumes (``BackupAndRestore``)."""

from __future__ import annotations

import logging

import keras
import numpy as np

from ..backbones.factory import create_model, set_trainable
from ..data.augment import RandomAffine
from ..data.decode import ResizePolicy
from ..data.loader import decoded_batches
from ..run_files import HISTORY
from ..task import Task
from .batches import ShuffledArrays
from .config import FinetuneConfig
from .epochs import EpochLog, ResumedEarlyStopping, backup
from .head import head_initialiser, pooled_codes
from .optimizers import make_optimizer
from .split import Split

log = logging.getLogger(__name__)


def decode_all(files, policy: ResizePolicy, batch_size: int) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Every image decoded once (uint8, kept in memory: full mode revisits them every epoch); the pixels, the
    positions of the images that decoded, and ``(position, reason)`` of those that did not."""
    pixels, ok, failed = [], [], []
    for batch in decoded_batches(files, policy, batch_size):
        pixels.append(batch.pixels[: len(batch.ok)])
        ok += batch.ok
        failed += batch.failed
    return np.concatenate(pixels) if pixels else np.zeros((0, policy.size, policy.size, 3), np.uint8), ok, failed


def augmentation(seed: int, flip: bool = True) -> RandomAffine:
    """Small rotations, shifts and zooms, and mirrors with ``flip``: the label-preserving variation a small set
    lacks."""
    return RandomAffine(rotation=0.05, zoom=0.1, translation=0.1, flip=flip, seed=seed, name="augmentation")


def first_trainable(base: keras.Model, cfg: FinetuneConfig) -> str | None:
    """The base's first layer trained in phase 2: ``unfreeze_from``, or the first of the last ``unfreeze``
    weighted layers (None: none)."""
    if cfg.unfreeze_from:
        return cfg.unfreeze_from
    if cfg.unfreeze <= 0:
        return None
    weighted = [layer for layer in base.layers if layer.weights]
    return base.layers[0].name if cfg.unfreeze >= len(weighted) else weighted[-cfg.unfreeze].name


def _train_phase(model: keras.Model, name: str, epochs: int, learning_rate: float, cfg: FinetuneConfig,
                 train: tuple, val: tuple, class_weight, history: dict, task: Task) -> None:
    """One phase: compiled anew at ``learning_rate`` with ``task``'s loss, early-stopped on the validation split,
    saved as ``NAME.keras``; its history goes into ``history[name]``."""
    model.compile(optimizer=make_optimizer(cfg.optimizer, learning_rate), loss=task.loss, metrics=[task.metric])
    monitor = task.monitor
    log = EpochLog(cfg.out / "backup" / f"{name}_epochs.json")
    callbacks = [
        backup(model, cfg.out / "backup" / name, log), log,
        ResumedEarlyStopping(log, monitor=monitor, patience=cfg.patience, restore_best_weights=True),
    ]
    model.fit(ShuffledArrays(*train, cfg.batch_size, cfg.seed), validation_data=val, epochs=epochs,
              shuffle=False, class_weight=class_weight, callbacks=callbacks, verbose="auto" if cfg.progress else 0)
    whole = log.history()  # every epoch, those before an interruption too
    history[name] = {**whole, "seconds": log.seconds,
                     "seconds_per_epoch": log.seconds / max(1, len(whole.get("loss", [])))}
    log.remove()
    model.save(cfg.out / f"{name}.keras")


def full_mode(cfg: FinetuneConfig, backbone, policy: ResizePolicy, split: Split, pixels: np.ndarray) -> tuple:
    """Train on ``pixels`` (every decodable image, in ``split``'s order); the network, its history, its outputs on
    the validation and test images (None without any), and what the protocol records."""
    train, val = (pixels[split.train], split.targets[split.train]), (pixels[split.val], split.targets[split.val])
    history: dict = {}
    head_done = cfg.out / "head.keras"
    if head_done.exists():  # a rerun after phase 1 completed: continue with phase 2
        model = keras.models.load_model(head_done)
        log.info("resuming: phase 1 already done (%s)", head_done)
        history = HISTORY.read(cfg.out) if HISTORY.path(cfg.out).exists() else {}
    else:
        model = create_model(backbone, "finetune", layers=(cfg.top,), classes=len(split.names),
                             input_size=policy.size, hidden=cfg.hidden, dropout=cfg.dropout,
                             augmentation=augmentation(cfg.seed, cfg.flip) if cfg.augment else None, seed=cfg.seed)
        init = head_initialiser(cfg, model, split.task)
        if init is not None:
            init(pooled_codes(model, train[0], cfg.batch_size), train[1])
        _train_phase(model, "head", cfg.head_epochs, cfg.learning_rate, cfg, train, val, split.class_weight,
                     history, split.task)
        HISTORY.write(cfg.out, history)
    set_trainable(model, first_trainable(model.get_layer("base"), cfg))
    if cfg.finetune_epochs > 0:
        _train_phase(model, "finetune", cfg.finetune_epochs, cfg.learning_rate / 10, cfg, train, val,
                     split.class_weight, history, split.task)
    outputs = [model.predict(pixels[idx], batch_size=cfg.batch_size, verbose=0) if len(idx) else None
               for idx in (split.val, split.test)]
    protocol = {"unfreeze": cfg.unfreeze_from or f"last {cfg.unfreeze} weighted layers", "augment": cfg.augment,
                "flip": cfg.augment and cfg.flip,
                "learning_rates": {"head": cfg.learning_rate, "later layers": cfg.learning_rate / 10}}
    return model, history, outputs, protocol
