"""The fine-tuning network's new head, started as a linear probe on the training codes (LP-FT): training then
begins from the linear stage's answer instead of distorting the pretrained features with a random head."""

from __future__ import annotations

import logging

import keras
import numpy as np

from ..linear import regress
from ..linear.cv import fit_final
from ..task import Task

log = logging.getLogger(__name__)


def init_head_from_probe(model: keras.Model, codes: np.ndarray, labels: np.ndarray, task: Task, seed: int,
                         class_weight=None) -> float:
    """Fit a softmax (a ridge for a numeric target) on the pooled ``codes`` of the training images and copy it,
    standardisation folded in, into ``model``'s head; returns the penalty chosen by cross-validation."""
    if task.numeric:  # ridge, penalty chosen by leave-one-out
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


def pooled_codes(model: keras.Model, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """The fine-tuning network's pooled codes of ``pixels`` (augmentation off: inference)."""
    return keras.Model(model.inputs, model.get_layer("pool").output).predict(pixels, batch_size=batch_size,
                                                                           verbose=0)


def head_initialiser(cfg, model: keras.Model, task: Task):
    """``init(codes, targets)``, which sets ``model``'s head from a linear probe on those codes; None where the
    head starts at random (the probe is off, or a hidden layer comes first)."""
    if not cfg.probe or cfg.hidden:
        return None
    return lambda codes, targets: init_head_from_probe(model, codes, targets, task, cfg.seed, cfg.class_weight)
