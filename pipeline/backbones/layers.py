"""Keras building blocks shared by the backbones converted from PyTorch weights."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops


@keras.saving.register_keras_serializable(package="pipeline")
class Preprocess(layers.Layer):
    """A backbone's :class:`~pipeline.backbones.spec.Preprocessing` of 0..255 pixels inside the model, next to
    the weights it belongs to, on whatever device the model runs."""

    def __init__(self, mean, std, bgr=False, **kwargs):
        super().__init__(**kwargs)
        self.mean, self.std, self.bgr = tuple(mean), tuple(std), bool(bgr)

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.bgr:
            x = ops.flip(x, axis=-1)
        mean = ops.convert_to_tensor(np.asarray(self.mean), dtype=self.compute_dtype)
        std = ops.convert_to_tensor(np.asarray(self.std), dtype=self.compute_dtype)
        return (x - mean) / std

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std, "bgr": self.bgr}


def keras_name(torch_module: str) -> str:
    """Keras layer name for a torch module path (``_blocks.3._bn1`` -> ``_blocks_3__bn1``)."""
    return torch_module.replace(".", "_")


def conv_bn(x, filters, kernel, stride, conv_name, bn_name, *, epsilon, torch_padding,
            depthwise=False, activation="relu6"):
    """Convolution (no bias), BatchNorm and an optional activation, named after torch modules.

    ``torch_padding`` pads ``kernel // 2`` on every side as torch does; otherwise
    TF's "same" padding is used (asymmetric for stride 2). The difference is
    small in shape and large in the codes, so it must follow the weights' origin.
    """
    padding = "same"
    if torch_padding and stride > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=keras_name(conv_name) + "_pad")(x)
        padding = "valid"
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, stride, padding=padding, use_bias=False,
                                   name=keras_name(conv_name))(x)
    else:
        x = layers.Conv2D(filters, kernel, stride, padding=padding, use_bias=False,
                          name=keras_name(conv_name))(x)
    x = layers.BatchNormalization(epsilon=epsilon, momentum=0.99, name=keras_name(bn_name))(x)
    if activation:
        x = layers.Activation(activation, name=keras_name(bn_name) + "_act")(x)
    return x


def _convert(layer, tensors: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return _as_keras(layer, tensors)
    except KeyError as e:  # a module without one of its parameters: a damaged or other file
        raise ValueError(f"{layer.name}: the weights lack its {e.args[0]!r}") from None


def _as_keras(layer, tensors: dict[str, np.ndarray]) -> list[np.ndarray]:
    if isinstance(layer, layers.DepthwiseConv2D):
        return [tensors["weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, layers.Conv2D):
        kernel = [tensors["weight"].transpose(2, 3, 1, 0)]
        return kernel + ([tensors["bias"]] if "bias" in tensors else [])
    if isinstance(layer, layers.BatchNormalization):
        return [tensors["weight"], tensors["bias"], tensors["running_mean"], tensors["running_var"]]
    if isinstance(layer, layers.Dense):
        return [tensors["weight"].T, tensors["bias"]]
    raise ValueError(f"no torch conversion for layer {layer.name} ({type(layer).__name__})")


def assign_torch_state_dict(model: keras.Model, state_dict: dict[str, np.ndarray]) -> None:
    """Copy a torch ``state_dict`` into a model whose layers are named after the torch modules; every tensor
    must land and every weighted layer be filled, shapes matching: a partial load gives wrong codes silently."""
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        if param != "num_batches_tracked":
            modules.setdefault(keras_name(module), {})[param] = value
    weighted = {layer.name: layer for layer in model.layers if layer.weights}
    if set(modules) != set(weighted):
        missing = sorted(set(weighted) - set(modules))[:5]
        extra = sorted(set(modules) - set(weighted))[:5]
        raise ValueError(f"weights do not fit the architecture: missing {missing}, unexpected {extra}")
    for name, layer in weighted.items():
        values = _convert(layer, modules[name])
        for var, value in zip(layer.weights, values, strict=True):
            if tuple(var.shape) != value.shape:
                raise ValueError(f"{name}: weight shape {value.shape} does not fit {tuple(var.shape)}")
        layer.set_weights(values)


# The endpoints every converted backbone offers for extraction, early to late: the stem, the output of each of
# its seven block groups and the last convolutional feature map (``all`` extracts every one).
FEATURE_LAYERS = {"stem": "stem"} | {f"stage{i}": f"stage{i}" for i in range(1, 8)} | {"penultimate": "penultimate"}


def mark_stage(x, stage: int | str):
    """Name the output of block group ``stage`` (1-based; ``"stem"``: the stem's) as a feature layer."""
    name = stage if isinstance(stage, str) else f"stage{stage}"
    if name not in FEATURE_LAYERS:
        raise ValueError(f"{name} is not a feature layer")
    return layers.Identity(name=name)(x)


def close_backbone(inputs, features, fc_name: str, name: str, weights=None, include_top=True) -> keras.Model:
    """Mark ``penultimate``; with ``include_top`` pool and add the 1000-way logits. Loads Keras weights if given."""
    x = layers.Identity(name="penultimate")(features)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(1000, name=keras_name(fc_name))(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model
