"""Backbones from ``keras.applications``, whose ImageNet weights are downloaded on first use."""

from __future__ import annotations

import keras


def build(spec, weights=None, *, application: str) -> keras.Model:
    """The named ``keras.applications`` classifier with logits output (no softmax)."""
    constructor = getattr(keras.applications, application)
    return constructor(weights=weights, include_top=True, classifier_activation=None)
