"""The fine-tuning stage: a new softmax on the pretrained base, trained head first, then the later layers.

The recipe (README, "Fine-tune"): the head starts from a linear probe on the
training split, phase 2 unfreezes the later layers at a ten times smaller
learning rate, BatchNorm stays in inference mode, a stratified validation split
drives early stopping, and interrupted training resumes (``BackupAndRestore``).
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
from .errors import UserError
from .extract import DEFAULT_BACKBONE, resize_policy
from .images import discover
from .loader import decoded_batches
from .metrics import Score
from .provenance import library_versions, now_iso
from .report.figures import training_curves
from .results import CVResult, HeldOut

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run; the defaults are the command line's."""

    data: Path
    out: Path
    backbone: str = DEFAULT_BACKBONE
    image_size: int | None = None
    head_epochs: int = 5
    finetune_epochs: int = 5
    unfreeze: int = 30
    unfreeze_from: str | None = None
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    hidden: int | None = None
    augment: bool = True
    val_size: float = 0.2
    patience: int = 3
    class_weight: str | None = "balanced"
    probe: bool = True
    test_paths: tuple[str, ...] = ()
    batch_size: int = 32
    seed: int = 0
    precision: str = "auto"
    progress: bool = True


def _decode_all(files, policy, batch_size) -> tuple[np.ndarray, list[int], list[tuple[int, str]]]:
    """Every image decoded once (uint8, kept in memory: fine-tuning revisits them every epoch)."""
    pixels, ok, failed = [], [], []
    for batch in decoded_batches(files, policy, batch_size):
        pixels.append(batch.pixels[: len(batch.ok)])
        ok += batch.ok
        failed += batch.failed
    return np.concatenate(pixels) if pixels else np.zeros((0, policy.size, policy.size, 3), np.uint8), ok, failed


def augmentation(seed: int) -> keras.Sequential:
    """Flips, small rotations, translations and zooms: the label-preserving variation a small set lacks."""
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.05, fill_mode="nearest", seed=seed),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed),
        keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed),
    ], name="augmentation")


def init_head_from_probe(model, pixels: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                         class_weight=None) -> float:
    """Fit a softmax on the base's pooled codes of ``pixels`` and copy it, standardisation folded in, into the head.

    Returns the C chosen by cross-validation.
    """
    probe = keras.Model(model.inputs, model.get_layer("pool").output)
    codes = probe.predict(pixels, batch_size=batch_size, verbose=0)
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
    return hyper["C"]


def first_trainable(base, cfg: FinetuneConfig) -> str | None:
    """The base's first layer trained in phase 2: ``unfreeze_from``, or the first of the last ``unfreeze``
    weighted layers (None: none)."""
    if cfg.unfreeze_from:
        return cfg.unfreeze_from
    if cfg.unfreeze <= 0:
        return None
    weighted = [layer for layer in base.layers if layer.weights]
    return base.layers[0].name if cfg.unfreeze >= len(weighted) else weighted[-cfg.unfreeze].name


def _optimizer(name: str, learning_rate: float):
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    raise UserError(f"must be one of {', '.join(OPTIMIZERS)}", param="optimizer")


def _train_phase(model, name, epochs, learning_rate, cfg, train, val, class_weight, history):
    regression = train[1].dtype.kind == "f"
    model.compile(optimizer=_optimizer(cfg.optimizer, learning_rate),
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

    def to_json(self) -> dict:
        final = {"model": "model.keras", "validation_images": self.validation_images}
        if self.test is not None:
            final["test"] = self.test.to_json()
        return {"task": self.task, "data": self.data, "backbone": self.backbone, "image_size": self.image_size,
                "weights_checksum": self.weights_checksum, "images": self.images, "skipped": self.skipped,
                "classes": len(self.class_names), "class_names": self.class_names, "protocol": self.protocol,
                "results": [self.validation.to_json()], "final": {"finetune": final},
                "versions": self.versions, "created": self.created}


def _evaluate(model, pixels, y, names, batch_size) -> tuple[dict[str, float], dict | None]:
    """Scores of ``model`` on ``pixels`` (and per-class figures for a classifier)."""
    outputs = model.predict(pixels, batch_size=batch_size, verbose=0)
    if not names:
        return metrics.regression_scores(y, outputs), None
    predicted = np.argmax(outputs, axis=1)
    return metrics.classification_scores(y, predicted), metrics.per_class(y, predicted, names)


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Train, save ``model.keras``, ``classes.json``, ``history.json``, ``curves.png`` and ``metrics.json``."""
    dataset = discover(cfg.data)
    regression = dataset.targets is not None and not dataset.labelled
    if not dataset.labelled and not regression:
        raise UserError(f"{cfg.data} has no labels: fine-tuning needs one sub-folder per class, or a manifest "
                        "with a label or a numeric target column", param="data")
    backbone = load_backbone(cfg.backbone, precision=cfg.precision)
    size = cfg.image_size or backbone.spec.input_size
    policy = dataclasses.replace(resize_policy(backbone.spec), size=size)
    held_out = set(cfg.test_paths)
    files = [dataset.root / p for p in dataset.paths]
    pixels, ok, failed = _decode_all(files, policy, cfg.batch_size)
    names = [] if regression else dataset.class_names
    labels = (np.array([dataset.targets[i] for i in ok], np.float32) if regression
              else np.array([names.index(dataset.labels[i]) for i in ok]))
    is_test = np.array([dataset.paths[i] in held_out for i in ok], dtype=bool)
    test = (pixels[is_test], labels[is_test])
    pixels, labels = pixels[~is_test], labels[~is_test]
    if regression:
        if len(labels) < 5:
            raise UserError("fine-tuning a regression head needs at least 5 decodable images", param="data")
    elif len(names) < 2 or np.bincount(labels, minlength=len(names)).min() < 2:
        raise UserError("fine-tuning needs at least two classes with at least 2 decodable images each",
                        param="data")
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=cfg.val_size,
                                          stratify=None if regression else labels, random_state=cfg.seed)
    train, val = (pixels[train_idx], labels[train_idx]), (pixels[val_idx], labels[val_idx])
    weights = None
    if cfg.class_weight == "balanced" and not regression:
        w = compute_class_weight("balanced", classes=np.arange(len(names)), y=train[1])
        weights = {k: float(v) for k, v in enumerate(w)}

    cfg.out.mkdir(parents=True, exist_ok=True)
    history: dict = {}
    head_done = cfg.out / "head.keras"
    if head_done.exists():  # a rerun after phase 1 completed: continue with phase 2
        model = keras.models.load_model(head_done)
        log.info("resuming: phase 1 already done (%s)", head_done)
        history = json.loads((cfg.out / "history.json").read_text()) if (cfg.out / "history.json").exists() else {}
    else:
        model = create_model(backbone, "finetune", classes=len(names), input_size=size, hidden=cfg.hidden,
                             augmentation=augmentation(cfg.seed) if cfg.augment else None, seed=cfg.seed)
        if cfg.probe and not cfg.hidden:
            C = init_head_from_probe(model, train[0], train[1], cfg.batch_size, cfg.seed, cfg.class_weight)
            log.info("head initialised from a linear probe on the training split (C=%g)", C)
        _train_phase(model, "head", cfg.head_epochs, cfg.learning_rate, cfg, train, val, weights, history)
        (cfg.out / "history.json").write_text(json.dumps(history))
    set_trainable(model, first_trainable(model.get_layer("base"), cfg))
    if cfg.finetune_epochs > 0:
        _train_phase(model, "finetune", cfg.finetune_epochs, cfg.learning_rate / 10, cfg, train, val, weights,
                     history)
    model.save(cfg.out / "model.keras")
    (cfg.out / "classes.json").write_text(json.dumps(names))
    (cfg.out / "history.json").write_text(json.dumps(history, indent=2))
    (cfg.out / "curves.png").write_bytes(training_curves(history))

    scores, per_class = _evaluate(model, *val, names, cfg.batch_size)
    n = len(val[1])
    validation = CVResult(
        "finetuned", "finetune",
        {name: Score(v, 0.0, None if regression else metrics.wilson(v, n), (v,)) for name, v in scores.items()},
        {}, per_class=per_class, fit_seconds=sum(h["seconds"] for h in history.values()))
    held = None
    if len(test[1]):
        held = HeldOut("held-out images", int(len(test[1])), *_evaluate(model, *test, names, cfg.batch_size))
    result = FinetuneResult(
        "regression" if regression else "classification", str(cfg.data), backbone.spec.name, size,
        backbone.weights_checksum, int(len(labels)), [(dataset.paths[i], reason) for i, reason in failed],
        names,
        {"validation": f"{'random' if regression else 'stratified'} {cfg.val_size:.0%} split", "seed": cfg.seed,
         "unfreeze": cfg.unfreeze_from or f"last {cfg.unfreeze} weighted layers", "optimizer": cfg.optimizer,
         "learning_rates": [cfg.learning_rate, cfg.learning_rate / 10], "augment": cfg.augment,
         "linear_probe_init": bool(cfg.probe and not cfg.hidden)},
        validation, n, held, library_versions(), now_iso())
    (cfg.out / "metrics.json").write_text(json.dumps(result.to_json(), indent=2))
    return result
