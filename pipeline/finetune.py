"""The fine-tuning stage: a new softmax on the pretrained base, trained head first, then the later layers.

Practice encoded (DESIGN.md): the ImageNet head is replaced by a softmax for
the task's classes (optionally behind one hidden layer); phase 1 trains the
head with the base frozen; phase 2 unfreezes the last layers at a learning
rate ten times smaller; the base always runs with ``training=False`` so its
BatchNorm statistics do not drift on a small set; augmentation (flip, small
rotation, translation, zoom) is on by default; a stratified validation split
drives early stopping and keeps the best weights. By default the new head
starts from a softmax fitted on the training split's penultimate codes (linear
probe, then fine-tune), with C chosen by cross-validation as in the fit stage;
fitting it here, on the training split only, keeps the validation images out
of it. Interrupted training resumes from its last epoch
(``keras.callbacks.BackupAndRestore``).
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
from sklearn.metrics import f1_score, mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight

from .backbones.loading import load_backbone
from .backbones.layers import Preprocess
from .classify import fit_final, per_class
from .device import configure_precision
from .errors import UserError
from .extract import DEFAULT_BACKBONE, resize_policy
from .images import discover
from .loader import decoded_batches
from .provenance import library_versions, now_iso
from .regress import make_regressor

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of one fine-tuning run; the defaults are what ``scripts/finetune.py`` uses."""

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


def build_model(backbone, classes: int, size: int, hidden: int | None, augment: bool, seed: int):
    """(model, base): uint8 pixels -> [augmentation] -> preprocessing -> base (inference mode) -> new head.

    The head is a softmax over ``classes``, or with ``classes=0`` one linear unit for regression."""
    spec = dataclasses.replace(backbone.spec, input_size=size)
    base_full = spec.builder(spec)
    base_full.set_weights(backbone.classifier.get_weights())
    base = keras.Model(base_full.inputs, base_full.get_layer(spec.feature_layers["penultimate"]).output,
                       name="base")
    pixels = keras.Input((size, size, 3), dtype="uint8", name="pixels")
    x = keras.ops.cast(pixels, "float32")
    if augment:
        x = keras.layers.RandomFlip("horizontal", seed=seed)(x)
        x = keras.layers.RandomRotation(0.05, fill_mode="nearest", seed=seed)(x)
        x = keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed)(x)
        x = keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed)(x)
    p = spec.preprocessing
    x = Preprocess(p.mean, p.std, p.bgr, name="preprocess")(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if hidden:
        x = keras.layers.Dense(hidden, activation="relu", name="hidden")(x)
        x = keras.layers.Dropout(0.2, seed=seed)(x)
    outputs = keras.layers.Dense(classes or 1, activation="softmax" if classes else None, dtype="float32",
                                 name="head")(x)
    return keras.Model(pixels, outputs, name=f"{spec.name}_finetuned"), base


def init_head_from_probe(model, base, pixels: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                         class_weight=None) -> float:
    """Fit a softmax on the base's pooled codes of ``pixels`` and copy it, standardisation folded in, into the head.

    Returns the C chosen by cross-validation.
    """
    probe = keras.Model(model.inputs, model.get_layer("pool").output)
    codes = probe.predict(pixels, batch_size=batch_size, verbose=0)
    if labels.dtype.kind == "f":  # regression: ridge, penalty chosen by leave-one-out
        estimator = make_regressor().fit(codes, labels)
        C = 1 / float(estimator.named_steps["clf"].alpha_)
    else:
        estimator, C = fit_final("softmax", codes, labels, "standard", class_weight, seed)
    scaler, clf = estimator.named_steps["scale"], estimator.named_steps["clf"]
    coef = np.atleast_2d(clf.coef_) / scaler.scale_
    bias = np.atleast_1d(clf.intercept_) - coef @ scaler.mean_
    if len(coef) == 1 and model.get_layer("head").units == 2:  # one logit z; softmax over (-z/2, z/2) is the same
        coef, bias = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-bias / 2, bias / 2])
    model.get_layer("head").set_weights([coef.T.astype("float32"), bias.astype("float32")])
    return C


def _frozen_in_phase_two(base, cfg: FinetuneConfig) -> list:
    """Layers that stay frozen: all before ``unfreeze_from`` if given, else all but the last ``unfreeze`` weighted."""
    if cfg.unfreeze_from:
        names = [layer.name for layer in base.layers]
        if cfg.unfreeze_from not in names:
            hint = ", ".join(n for n in names if n.startswith("stage") or n == "penultimate") or ", ".join(names[-5:])
            raise UserError(f"no layer {cfg.unfreeze_from!r} in the base; for example: {hint}")
        return base.layers[: names.index(cfg.unfreeze_from)]
    weighted = [layer for layer in base.layers if layer.weights]
    return weighted[: -cfg.unfreeze] if cfg.unfreeze > 0 else []


def _optimizer(name: str, learning_rate: float):
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")


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


def finetune(cfg: FinetuneConfig) -> dict:
    """Train, save ``model.keras``, ``classes.json``, ``history.json``, ``curves.png`` and ``metrics.json``."""
    dataset = discover(cfg.data)
    regression = dataset.targets is not None and not dataset.labelled
    if not dataset.labelled and not regression:
        raise UserError(f"{cfg.data} has no labels: fine-tuning needs one sub-folder per class, or a manifest "
                        "with a label or a numeric target column")
    configure_precision(cfg.precision)
    keras.utils.set_random_seed(cfg.seed)
    backbone = load_backbone(cfg.backbone)
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
            raise UserError("fine-tuning a regression head needs at least 5 decodable images")
    elif len(names) < 2 or np.bincount(labels, minlength=len(names)).min() < 2:
        raise UserError("fine-tuning needs at least two classes with at least 2 decodable images each")
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
        base = model.get_layer("base")
        log.info("resuming: phase 1 already done (%s)", head_done)
        history = json.loads((cfg.out / "history.json").read_text()) if (cfg.out / "history.json").exists() else {}
    else:
        model, base = build_model(backbone, len(names), size, cfg.hidden, cfg.augment, cfg.seed)
        if cfg.probe and not cfg.hidden:
            C = init_head_from_probe(model, base, train[0], train[1], cfg.batch_size, cfg.seed, cfg.class_weight)
            log.info("head initialised from a linear probe on the training split (C=%g)", C)
        base.trainable = False
        _train_phase(model, "head", cfg.head_epochs, cfg.learning_rate, cfg, train, val, weights, history)
        (cfg.out / "history.json").write_text(json.dumps(history))
    base.trainable = True
    for layer in _frozen_in_phase_two(base, cfg):
        layer.trainable = False
    weighted = [layer for layer in base.layers if layer.weights]
    for layer in weighted:  # BatchNorm stays frozen as well as in inference mode (keras.io's EfficientNet recipe)
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    if cfg.finetune_epochs > 0:
        _train_phase(model, "finetune", cfg.finetune_epochs, cfg.learning_rate / 10, cfg, train, val, weights,
                     history)
    model.save(cfg.out / "model.keras")
    (cfg.out / "classes.json").write_text(json.dumps(names))
    (cfg.out / "history.json").write_text(json.dumps(history, indent=2))
    _plot_curves(history, cfg.out / "curves.png")

    outputs = model.predict(val[0], batch_size=cfg.batch_size, verbose=0)
    if regression:
        result = {"layer": "finetuned", "classifier": "finetune",
                  **{k: {"mean": v, "std": 0.0, "folds": [v]} for k, v in _regression_metrics(outputs, val[1]).items()}}
    else:
        predicted = np.argmax(outputs, axis=1)
        accuracy = float((predicted == val[1]).mean())
        result = {"layer": "finetuned", "classifier": "finetune",
                  "accuracy": {"mean": accuracy, "std": 0.0, "ci95": _wilson(accuracy, len(val[1])),
                               "folds": [accuracy]},
                  "per_class": per_class(val[1], predicted, names)}
    result["fit_seconds"] = sum(h["seconds"] for h in history.values())
    metrics = {"task": "regression" if regression else "classification",
        "data": str(cfg.data), "backbone": backbone.spec.name, "image_size": size,
        "weights_checksum": backbone.weights_checksum, "images": int(len(labels)),
        "skipped": [(dataset.paths[i], reason) for i, reason in failed], "classes": len(names), "class_names": names,
        "protocol": {"validation": f"{'random' if regression else 'stratified'} {cfg.val_size:.0%} split",
                     "seed": cfg.seed,
                     "unfreeze": cfg.unfreeze_from or f"last {cfg.unfreeze} weighted layers",
                     "optimizer": cfg.optimizer,
                     "learning_rates": [cfg.learning_rate, cfg.learning_rate / 10], "augment": cfg.augment,
                     "linear_probe_init": bool(cfg.probe and not cfg.hidden)},
        "results": [result],
        "final": {"finetune": {"model": "model.keras", "validation_images": int(len(val[1])),
                               **({"test": _test_metrics(model, test, names, cfg.batch_size)} if len(test[1]) else {})}},
        "versions": library_versions(), "created": now_iso(),
    }
    (cfg.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _regression_metrics(outputs, y) -> dict:
    predicted = np.asarray(outputs, np.float64).ravel()
    return {"r2": float(r2_score(y, predicted)), "mae": float(mean_absolute_error(y, predicted))}


def _test_metrics(model, test, names, batch_size) -> dict:
    outputs = model.predict(test[0], batch_size=batch_size, verbose=0)
    if not names:
        return {"images": int(len(test[1])), **_regression_metrics(outputs, test[1])}
    predicted = np.argmax(outputs, axis=1)
    return {"images": int(len(test[1])), "accuracy": float((predicted == test[1]).mean()),
            "macro_f1": float(f1_score(test[1], predicted, average="macro", zero_division=0)),
            "per_class": per_class(test[1], predicted, names)}


def _wilson(p: float, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson interval of an accuracy measured on ``n`` validation images."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(centre - half), float(centre + half)]


def _plot_curves(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    start = 0
    for phase, h in history.items():
        epochs = np.arange(start + 1, start + 1 + len(h.get("loss", [])))
        for ax, key in zip(axes, ("loss", "mae" if "mae" in h else "accuracy")):
            ax.plot(epochs, h.get(key, []), marker="o", label=f"{phase} train")
            ax.plot(epochs, h.get(f"val_{key}", []), marker="s", linestyle="--", label=f"{phase} validation")
            ax.set_xlabel("epoch")
            ax.set_ylabel(key)
        start += len(h.get("loss", []))
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
