"""Backbones from ``keras.applications``, whose ImageNet weights are downloaded on first use."""

from __future__ import annotations

import keras

# Per application: the layers offered for extraction, early to late; ``penultimate`` is the last feature map.
FEATURE_LAYERS = {
    "VGG16": {"block3_pool": "block3_pool", "block4_pool": "block4_pool", "penultimate": "block5_pool"},
    "VGG19": {"block3_pool": "block3_pool", "block4_pool": "block4_pool", "penultimate": "block5_pool"},
    "ResNet50": {"conv3_block4_out": "conv3_block4_out", "conv4_block6_out": "conv4_block6_out",
                 "penultimate": "conv5_block3_out"},
    "InceptionV3": {"mixed5": "mixed5", "mixed7": "mixed7", "penultimate": "mixed10"},
    "MobileNetV2": {"block_5_add": "block_5_add", "block_12_add": "block_12_add", "penultimate": "out_relu"},
    "EfficientNetB0": {"block3b_add": "block3b_add", "block5c_add": "block5c_add", "penultimate": "top_activation"},
}


def build(spec, weights=None, *, application: str, input_size: int | None = None,
          include_top: bool = True) -> keras.Model:
    """The named ``keras.applications`` network: logits (no softmax), or without the top the last feature map."""
    constructor = getattr(keras.applications, application)
    size = input_size or spec.input_size
    return constructor(weights=weights, include_top=include_top, input_shape=(size, size, 3),
                       classifier_activation=None)
