"""Backbones from ``keras.applications``, whose ImageNet weights are downloaded on first use."""

from __future__ import annotations

import keras
import numpy as np

# Per application: the layers offered for extraction, early to late; ``penultimate`` is the last feature map.
FEATURE_LAYERS = {
    "VGG16": {"block3_pool": "block3_pool", "block4_pool": "block4_pool", "penultimate": "block5_pool"},
    "VGG19": {"block3_pool": "block3_pool", "block4_pool": "block4_pool", "penultimate": "block5_pool"},
    "ResNet50": {"conv3_block4_out": "conv3_block4_out", "conv4_block6_out": "conv4_block6_out",
                 "penultimate": "conv5_block3_out"},
    "InceptionV3": {"mixed5": "mixed5", "mixed7": "mixed7", "penultimate": "mixed10"},
    "MobileNetV2": {"block_5_add": "block_5_add", "block_12_add": "block_12_add", "penultimate": "out_relu"},
    "EfficientNetB0": {"block3b_add": "block3b_add", "block5c_add": "block5c_add", "penultimate": "top_activation"},
    # ConvNeXt's and EfficientNetV2's stages (each one's last block); both normalise 0..255 pixels themselves
    "ConvNeXtTiny": {f"stage{k}": f"convnext_tiny_stage_{k}_block_{last}_identity" for k, last in
                     ((0, 2), (1, 2), (2, 8))} | {"penultimate": "convnext_tiny_stage_3_block_2_identity"},
    "EfficientNetV2B0": {"stage3": "block3b_add", "stage5": "block5e_add", "stage6": "block6h_add",
                         "penultimate": "top_activation"},
}


def build(spec, weights=None, *, application: str, input_size: int | None = None,
          include_top: bool = True) -> keras.Model:
    """The named ``keras.applications`` network: logits (no softmax), or without the top the last feature map;
    ``weights``: None, ``"imagenet"`` or a weights file of this network as built here."""
    constructor = getattr(keras.applications, application)
    size = input_size or spec.input_size
    local = weights is not None and weights != "imagenet"
    model = constructor(weights=None if local else weights, include_top=include_top, input_shape=(size, size, 3),
                        classifier_activation=None)
    model = _convertible(model)
    if local:
        model.load_weights(weights)
    return model


@keras.saving.register_keras_serializable(package="pipeline")
class Standardise(keras.layers.Layer):
    """``keras.layers.Normalization`` at inference, its statistics held as variables (the weights it loads and
    saves, under the same shapes): Normalization holds them as captured tensors, which tf2onnx cannot take."""

    def build(self, shape):
        self.mean = self.add_weight((shape[-1],), initializer="zeros", trainable=False, name="mean")
        self.variance = self.add_weight((shape[-1],), initializer="ones", trainable=False, name="variance")
        self.count = self.add_weight((), initializer="zeros", trainable=False, dtype="int64", name="count")

    def call(self, x):
        return (x - self.mean) / keras.ops.maximum(keras.ops.sqrt(self.variance), keras.backend.epsilon())


def _convertible(model: keras.Model) -> keras.Model:
    """``model`` as tf2onnx can convert it, the same function with the same weights: a convolution of one group per
    channel (ConvNeXt's, which Keras runs on TensorFlow's CPU through XLA) as the DepthwiseConv2D it is, and a
    Normalization as :class:`Standardise`."""
    def grouped(layer):
        return isinstance(layer, keras.layers.Conv2D) and 1 < layer.groups == layer.filters

    def normalising(layer):
        return isinstance(layer, keras.layers.Normalization) and not layer.invert

    if not any(grouped(layer) or normalising(layer) for layer in model.layers):
        return model

    def swap(layer):
        c = layer.get_config()
        if grouped(layer):
            return keras.layers.DepthwiseConv2D(c["kernel_size"], strides=c["strides"], padding=c["padding"],
                                                use_bias=c["use_bias"], name=c["name"], dtype=c["dtype"])
        if normalising(layer):
            return Standardise(name=c["name"])
        return layer.__class__.from_config(c)

    clone = keras.models.clone_model(model, clone_function=swap)
    for target, source in zip(clone.layers, model.layers, strict=True):
        w = source.get_weights()
        if grouped(source):  # (k, k, 1, channels) -> (k, k, channels, 1)
            w = [w[0].reshape(*w[0].shape[:2], -1, 1), *w[1:]]
        elif normalising(source):  # given as constants (ConvNeXt's) or adapted and loaded (EfficientNet's)
            channels = target.mean.shape
            w = [keras.ops.convert_to_numpy(v).astype(np.float32).reshape(channels)
                 for v in (source.mean, source.variance)] + [np.zeros((), np.int64)]
        target.set_weights(w)
    return clone
