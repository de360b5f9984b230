"""The fine-tuning stage: a new softmax on the pretrained base, in one of two modes (README, "Fine-tune").

``tail`` (the default on a CPU): the frozen front runs once per augmented view
and is cached; the blocks after the cut and the head train from the cache
(:mod:`pipeline.tail`). ``full`` (the default on a GPU): the whole network
runs on augmented pixels every epoch, head first, then the later layers at a
ten times smaller learning rate. In both the head starts from a linear probe
on the training split, BatchNorm stays in inference mode, a stratified
validation split drives early stopping, and interrupted training resumes
(``BackupAndRestore``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight

from . import metrics, regress
from .backbones.factory import create_model, set_trainable
from .backbones.loading import load_backbone
from .classify import fit_final
from .augment import RandomAffine
from .device import accelerators
from .errors import UserError
from .extract import DEFAULT_BACKBONE, resize_policy
from .images import discover
from .loader import decoded_batches
from .metrics import Score
from .optimizers import OPTIMIZERS, make_optimizer
from .provenance import library_versions, now_iso
from .reject import DEFAULT_RATE, check_rate, reject_rule
from .report.figures import training_curves
from .results import CVResult, HeldOut
from .tail import TailSettings, cache_views, default_cut, default_size, train_tail
from .views import Views

log = logging.getLogger(__name__)

MODES = ("auto", "tail", "full")
__all__ = ["MODES", "OPTIMIZERS", "FinetuneConfig", "FinetuneResult", "finetune", "resolve_mode"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run; the defaults are the command line's."""

    data: Path
    out: Path
    backbone: str = DEFAULT_BACKBONE
    mode: str = "auto"
    image_size: int | None = None
    cut: str | None = None
    top: str = "penultimate"
    views: int = 4
    flip: bool = False
    tail_epochs: int = 15
    block_lr_factor: float = 0.3
    dropout: float = 0.2
    engine: str = "auto"
    head_epochs: int = 5
    finetune_epochs: int = 5
    unfreeze: int = 30
    unfreeze_from: str | None = None
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    hidden: int | None = None
    augment: bool = True
    val_size: float = 0.2
    patience: int = 4
    class_weight: str | None = "balanced"
    probe: bool = True
    test_paths: tuple[str, ...] = ()
    batch_size: int = 32
    seed: int = 0
    precision: str = "auto"
    reject_rate: float = DEFAULT_RATE
    progress: bool = True


def _decode_all(files, policy, batch_size) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Every image decoded once (uint8, kept in memory: fine-tuning revisits them every epoch)."""
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


def init_head_from_probe(model, codes: np.ndarray, labels: np.ndarray, seed: int, class_weight=None) -> float:
    """Fit a softmax (a ridge for a numeric target) on the pooled ``codes`` of the training images and copy it,
    standardisation folded in, into ``model``'s head; returns the penalty chosen by cross-validation."""
    if labels.dtype.kind == "f":  # regression: ridge, penalty chosen by leave-one-out
        estimator, hyper = regress.fit_final(codes, labels)
    else:
        estimator, hyper = fit_final("softmax", codes, labels, "standard", class_weight, seed)
    scaler, clf = estimator.named_steps["scale"], estimator.named_steps["clf"]
    coef = np.atleast_2d(clf.coef_) / scaler.scale_
    bias = np.atleast_1d(clf.intercept_) - coef @ scaler.mean_
    if len(coef) == 1 and model.get_layer("head").units == 2:  # one logit z; softmax over (-z/2, z/2) is the same
        coef, bias = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-bias / 2, bias / 2])
    model.get_layer("head").set_weights([coef.T.astype("float32"), bias.astype("float32")])
    log.info("head initialised from a linear probe on the training split (C=%g)", hyper["C"])
    return hyper["C"]


def pooled_codes(model, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """The fine-tuning network's pooled codes of ``pixels`` (augmentation off: inference)."""
    return keras.Model(model.inputs, model.get_layer("pool").output).predict(pixels, batch_size=batch_size,
                                                                           verbose=0)


def first_trainable(base, cfg: FinetuneConfig) -> str | None:
    """The base's first layer trained in phase 2: ``unfreeze_from``, or the first of the last ``unfreeze``
    weighted layers (None: none)."""
    if cfg.unfreeze_from:
        return cfg.unfreeze_from
    if cfg.unfreeze <= 0:
        return None
    weighted = [layer for layer in base.layers if layer.weights]
    return base.layers[0].name if cfg.unfreeze >= len(weighted) else weighted[-cfg.unfreeze].name


def resolve_mode(mode: str) -> str:
    """``tail`` or ``full``: ``auto`` is ``full`` where a GPU is seen, ``tail`` on a CPU."""
    if mode not in MODES:
        raise UserError(f"must be one of {', '.join(MODES)}, not {mode!r}", param="mode")
    if mode == "auto":
        mode = "full" if accelerators() else "tail"
        log.info("fine-tuning mode: %s (%s)", mode, "a GPU is seen" if mode == "full" else
                 "the default on a CPU: the frozen front runs once per view and is cached; --mode full trains "
                 "on pixels")
    return mode


def _train_phase(model, name, epochs, learning_rate, cfg, train, val, class_weight, history):
    regression = train[1].dtype.kind == "f"
    model.compile(optimizer=make_optimizer(cfg.optimizer, learning_rate),
                  loss="mse" if regression else "sparse_categorical_crossentropy",
                  metrics=["mae"] if regression else ["accuracy"])
    monitor = "val_loss" if regression else "val_accuracy"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(cfg.out / "backup" / name)),
        keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.patience, restore_best_weights=True),
    ]
    started = time.perf_counter()
    fitted = model.fit(*train, validation_data=val, epochs=epochs, batch_size=cfg.batch_size,
                       class_weight=class_weight, callbacks=callbacks, verbose="auto" if cfg.progress else 0)
    seconds = time.perf_counter() - started
    epochs_run = len(fitted.history.get("loss", []))
    history[name] = {**{k: [float(v) for v in vals] for k, vals in fitted.history.items()},
                     "seconds": seconds, "seconds_per_epoch": seconds / max(1, epochs_run)}
    model.save(cfg.out / f"{name}.keras")


@dataclass
class FinetuneResult:
    """A fine-tuned network's figures: on the validation split, and on held-out test images if any."""

    task: str
    data: str
    backbone: str
    image_size: int
    weights_checksum: str
    images: int
    skipped: list
    class_names: list[str]
    protocol: dict
    validation: CVResult
    validation_images: int
    test: HeldOut | None
    versions: dict
    created: str
    reject: dict | None = None  # the "unknown" rule, set on the validation split (pipeline.reject)

    def to_json(self) -> dict:
        final = {"model": "model.keras", "validation_images": self.validation_images}
        if self.test is not None:
            final["test"] = self.test.to_json()
        if self.reject is not None:
            final["reject"] = self.reject
        return {"task": self.task, "data": self.data, "backbone": self.backbone, "image_size": self.image_size,
                "weights_checksum": self.weights_checksum, "images": self.images, "skipped": self.skipped,
                "classes": len(self.class_names), "class_names": self.class_names, "protocol": self.protocol,
                "results": [self.validation.to_json()], "final": {"finetune": final},
                "versions": self.versions, "created": self.created}


def _scores(outputs: np.ndarray, y: np.ndarray, names: list[str]) -> tuple[dict[str, float], dict | None]:
    """Scores of a network's ``outputs`` (and per-class figures for a classifier)."""
    if not names:
        return metrics.regression_scores(y, outputs), None
    predicted = np.argmax(outputs, axis=1)
    return metrics.classification_scores(y, predicted), metrics.per_class(y, predicted, names)


@dataclass
class _Task:
    """The decodable images of a run, their targets, and the split into training, validation and test."""

    files: list
    paths: list[str]
    targets: np.ndarray
    names: list[str]
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    class_weight: dict | None


def _task(cfg: FinetuneConfig, dataset, ok: list[int], names: list[str]) -> _Task:
    regression = not names
    targets = (np.array([dataset.targets[i] for i in ok], np.float32) if regression
               else np.array([names.index(dataset.labels[i]) for i in ok]))
    held_out = set(cfg.test_paths)
    is_test = np.array([dataset.paths[i] in held_out for i in ok], dtype=bool)
    rest = np.flatnonzero(~is_test)
    if regression:
        if len(rest) < 5:
            raise UserError("fine-tuning a regression head needs at least 5 decodable images", param="data")
    elif len(names) < 2 or np.bincount(targets[rest], minlength=len(names)).min() < 2:
        raise UserError("fine-tuning needs at least two classes with at least 2 decodable images each",
                        param="data")
    train, val = train_test_split(rest, test_size=cfg.val_size, stratify=None if regression else targets[rest],
                                  random_state=cfg.seed)
    weights = None
    if cfg.class_weight == "balanced" and not regression:
        w = compute_class_weight("balanced", classes=np.arange(len(names)), y=targets[train])
        weights = {k: float(v) for k, v in enumerate(w)}
    return _Task([dataset.root / dataset.paths[i] for i in ok], [dataset.paths[i] for i in ok], targets, names,
                 np.asarray(train), np.asarray(val), np.flatnonzero(is_test), weights)


def _tail_settings(cfg: FinetuneConfig, backbone) -> TailSettings:
    backbone.check_layers([cfg.top])
    names = list(backbone.spec.feature_layers)
    cut = cfg.cut or default_cut(backbone)
    if cut not in names[:names.index(cfg.top)]:
        raise UserError(f"the cut must be a feature layer before {cfg.top}: "
                        f"{', '.join(names[:names.index(cfg.top)]) or '(none)'}", param="cut")
    if cfg.views < 1:
        raise UserError(f"must be at least 1, not {cfg.views}", param="views")
    return TailSettings(cut, Views(cfg.views, cfg.flip, seed=cfg.seed), cfg.tail_epochs, cfg.learning_rate,
                        cfg.block_lr_factor, cfg.optimizer, cfg.batch_size, cfg.patience, cfg.engine, cfg.progress)


def _probe_init(cfg: FinetuneConfig, model):
    """The head's initialisation from a linear probe on given codes, or None (``--no-probe``, a hidden layer)."""
    if not cfg.probe or cfg.hidden:
        return None
    return lambda codes, targets: init_head_from_probe(model, codes, targets, cfg.seed, cfg.class_weight)


def _tail_mode(cfg: FinetuneConfig, backbone, policy, task: _Task) -> tuple:
    settings = _tail_settings(cfg, backbone)
    wanted = np.ones(len(task.paths), int)
    wanted[task.train] = settings.views.count
    cache, failed = cache_views(backbone, policy, cfg.out / "activations", task.files, task.paths, wanted, settings)
    try:
        if failed:
            raise UserError(f"{task.paths[failed[0][0]]} could not be decoded any more ({failed[0][1]}); did it "
                            "change during the run?", param="data")
        model = create_model(backbone, "finetune", layers=(cfg.top,), classes=len(task.names),
                             input_size=policy.size, hidden=cfg.hidden, dropout=cfg.dropout, seed=cfg.seed)
        part = lambda idx: ([task.paths[i] for i in idx], task.targets[idx])  # noqa: E731
        tail, history = train_tail(model, backbone, cache, part(task.train), part(task.val), settings, cfg.out,
                                   task.class_weight, cfg.seed, _probe_init(cfg, model))
        outputs = [np.concatenate([tail.predict_on_batch(x) for x in cache.batches(0, part(idx)[0], cfg.batch_size)])
                   if len(idx) else None for idx in (task.val, task.test)]
    finally:
        cache.close()
    protocol = {"cut": settings.cut, "views": settings.views.to_json(), "max_epochs": settings.epochs,
                "learning_rates": {"head": cfg.learning_rate, "blocks": cfg.learning_rate * cfg.block_lr_factor}}
    return model, history, outputs, protocol


def _full_mode(cfg: FinetuneConfig, backbone, policy, task: _Task, pixels: np.ndarray) -> tuple:
    train, val = (pixels[task.train], task.targets[task.train]), (pixels[task.val], task.targets[task.val])
    history: dict = {}
    head_done = cfg.out / "head.keras"
    if head_done.exists():  # a rerun after phase 1 completed: continue with phase 2
        model = keras.models.load_model(head_done)
        log.info("resuming: phase 1 already done (%s)", head_done)
        history = json.loads((cfg.out / "history.json").read_text()) if (cfg.out / "history.json").exists() else {}
    else:
        model = create_model(backbone, "finetune", layers=(cfg.top,), classes=len(task.names),
                             input_size=policy.size, hidden=cfg.hidden, dropout=cfg.dropout,
                             augmentation=augmentation(cfg.seed, cfg.flip) if cfg.augment else None, seed=cfg.seed)
        init = _probe_init(cfg, model)
        if init is not None:
            init(pooled_codes(model, train[0], cfg.batch_size), train[1])
        _train_phase(model, "head", cfg.head_epochs, cfg.learning_rate, cfg, train, val, task.class_weight,
                     history)
        (cfg.out / "history.json").write_text(json.dumps(history))
    set_trainable(model, first_trainable(model.get_layer("base"), cfg))
    if cfg.finetune_epochs > 0:
        _train_phase(model, "finetune", cfg.finetune_epochs, cfg.learning_rate / 10, cfg, train, val,
                     task.class_weight, history)
    outputs = [model.predict(pixels[idx], batch_size=cfg.batch_size, verbose=0) if len(idx) else None
               for idx in (task.val, task.test)]
    protocol = {"unfreeze": cfg.unfreeze_from or f"last {cfg.unfreeze} weighted layers", "augment": cfg.augment,
                "flip": cfg.augment and cfg.flip,
                "learning_rates": {"head": cfg.learning_rate, "later layers": cfg.learning_rate / 10}}
    return model, history, outputs, protocol


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Train, save ``model.keras``, ``classes.json``, ``history.json``, ``curves.png`` and ``metrics.json``."""
    check_rate(cfg.reject_rate)
    dataset = discover(cfg.data)
    regression = dataset.targets is not None and not dataset.labelled
    if not dataset.labelled and not regression:
        raise UserError(f"{cfg.data} has no labels: fine-tuning needs one sub-folder per class, or a manifest "
                        "with a label or a numeric target column", param="data")
    mode = resolve_mode(cfg.mode)
    keras.utils.set_random_seed(cfg.seed)  # initialisation, dropout and augmentation draws
    backbone = load_backbone(cfg.backbone, precision=cfg.precision)
    files = [dataset.root / p for p in dataset.paths]
    size = cfg.image_size or (default_size(backbone, len(files)) if mode == "tail" else backbone.spec.input_size)
    policy = dataclasses.replace(resize_policy(backbone.spec), size=size)
    names = [] if regression else dataset.class_names
    cfg.out.mkdir(parents=True, exist_ok=True)
    if mode == "tail":  # view 0 of every image first: it tells which images decode before the split
        cache, failed = cache_views(backbone, policy, cfg.out / "activations", files, dataset.paths,
                                    [1] * len(files), _tail_settings(cfg, backbone))
        cache.close()
        ok = sorted(set(range(len(files))) - {i for i, _ in failed})
        task = _task(cfg, dataset, ok, names)
        model, history, (val_out, test_out), protocol = _tail_mode(cfg, backbone, policy, task)
    else:
        pixels, ok, failed = _decode_all(files, policy, cfg.batch_size)
        task = _task(cfg, dataset, ok, names)
        model, history, (val_out, test_out), protocol = _full_mode(cfg, backbone, policy, task, pixels)
    model.save(cfg.out / "model.keras")
    (cfg.out / "classes.json").write_text(json.dumps(names))
    (cfg.out / "history.json").write_text(json.dumps(history, indent=2))
    (cfg.out / "curves.png").write_bytes(training_curves(history))

    val_y = task.targets[task.val]
    scores, per_class = _scores(val_out, val_y, names)
    n = len(val_y)
    validation = CVResult(
        "finetuned", "finetune",
        {name: Score(v, 0.0, None if regression else metrics.wilson(v, n), (v,)) for name, v in scores.items()},
        {}, per_class=per_class, fit_seconds=sum(h["seconds"] for h in history.values()))
    held = None
    if test_out is not None:
        held = HeldOut("held-out images", len(task.test), *_scores(test_out, task.targets[task.test], names))
    result = FinetuneResult(
        "regression" if regression else "classification", str(cfg.data), backbone.spec.name, policy.size,
        backbone.weights_checksum, len(task.targets) - len(task.test),
        [(dataset.paths[i], reason) for i, reason in failed], names,
        {"mode": mode, "validation": f"{'random' if regression else 'stratified'} {cfg.val_size:.0%} split",
         "seed": cfg.seed, "optimizer": cfg.optimizer, "linear_probe_init": bool(cfg.probe and not cfg.hidden),
         "top": cfg.top, "dropout": cfg.dropout, "patience": cfg.patience,
         **protocol},
        validation, n, held, library_versions(), now_iso(),
        None if regression else reject_rule(val_y, val_out, cfg.reject_rate).to_json())
    (cfg.out / "metrics.json").write_text(json.dumps(result.to_json(), indent=2))
    return result
