"""The network factory: every network the pipeline runs is derived here from a loaded backbone.

As timm's ``create_model``, one call gives one head, on uint8 pixels with the
spec's preprocessing inside the graph: ``features`` (a pooled float32 code per
feature layer),
``imagenet`` (the logits), ``statistics`` (channel means and mean squares at
every BatchNorm input, then the logits: the advisor's), ``front`` (the unpooled
float32 activations of the one layer in ``layers``, at ``input_size``: what tail
fine-tuning caches) or ``finetune`` (a new head on a copy of the base up to
``layers[0]``, in inference mode, frozen below ``trainable_from``; ``classes=0``
gives one linear unit for regression).
"""

from __future__ import annotations

from typing import Sequence

import keras

from ..errors import UserError
from .device import dtype_policy
from .layers import Preprocess
from .loading import Backbone

HEADS = ("features", "imagenet", "statistics", "front", "finetune")


def create_model(backbone: Backbone, head: str = "features", *, layers: Sequence[str] = ("penultimate",),
                 classes: int = 0, input_size: int | None = None, trainable_from: str | None = None,
                 augmentation: keras.layers.Layer | None = None, hidden: int | None = None,
                 dropout: float = 0.0, seed: int = 0) -> keras.Model:
    """A network of ``head`` kind (see the module's docstring); ``features`` models are built once and reused."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, not {head!r}")
    if backbone.classifier is None:
        raise UserError(f"{backbone.spec.name} is an ONNX network: it gives codes (extract, fit, predict), and "
                        "fine-tuning, the advisor and export need a Keras one (.keras or a SavedModel)",
                        param="backbone")
    if head in ("features", "front"):
        layers = tuple(backbone.check_layers(layers))
        size = input_size or backbone.spec.input_size
        key = (head, layers) if head == "features" else (head, layers, size)
        if key not in backbone.models:
            with dtype_policy(backbone.precision):
                backbone.models[key] = (_features(backbone, layers) if head == "features"
                                        else _front(backbone, layers, size))
        return backbone.models[key]
    with dtype_policy(backbone.precision):
        if head == "imagenet":
            return _on_pixels(backbone, lambda x: _first(backbone.classifier(x, training=False)))
        if head == "statistics":
            return _statistics(backbone)
        return _finetune(backbone, classes, input_size or backbone.spec.input_size, trainable_from,
                         augmentation, hidden, dropout, seed, backbone.check_layers(layers)[0])


def _on_pixels(backbone: Backbone, outputs_of, size: int | None = None, augmentation=None,
               name: str | None = None) -> keras.Model:
    """uint8 pixels -> [augmentation] -> the spec's preprocessing -> ``outputs_of(preprocessed)``."""
    size = size or backbone.spec.input_size
    pixels = keras.Input((size, size, 3), dtype="uint8", name="pixels")
    x = pixels if augmentation is None else augmentation(keras.ops.cast(pixels, "float32"))
    p = backbone.spec.preprocessing
    x = Preprocess(p.mean, p.std, p.bgr, name="preprocess")(x)
    return keras.Model(pixels, outputs_of(x), name=name or f"{backbone.spec.slug}_on_pixels")


def _first(outputs):
    """A backbone's top output (a vision transformer's feature maps come after it)."""
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def _features(backbone: Backbone, layers: tuple[str, ...]) -> keras.Model:
    classifier = backbone.classifier
    maps = [classifier.get_layer(backbone.spec.feature_layers[name]).output for name in layers]
    trunk = keras.Model(classifier.inputs, maps)

    def pooled(x):
        outputs = trunk(x, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return [keras.layers.GlobalAveragePooling2D(dtype="float32", name=f"codes_{name}")(o)
                for name, o in zip(layers, outputs)]

    return _on_pixels(backbone, pooled)


def _front(backbone: Backbone, layers: tuple[str, ...], size: int) -> keras.Model:
    if len(layers) != 1:
        raise ValueError(f"a front ends at one layer, not {layers}")
    network = backbone.classifier if size == backbone.spec.input_size else _copy_at(backbone, size)
    trunk = keras.Model(network.inputs, network.get_layer(backbone.spec.feature_layers[layers[0]]).output)
    return _on_pixels(backbone, lambda x: keras.ops.cast(trunk(x, training=False), "float32"), size,
                      name=f"{backbone.spec.slug}_front")


def batchnorm_layers(backbone: Backbone) -> list:
    """The backbone's BatchNorm layers (none in a vision transformer)."""
    return [layer for layer in backbone.classifier.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _statistics(backbone: Backbone) -> keras.Model:
    stats, norms = [], batchnorm_layers(backbone)
    if not norms:
        raise UserError(f"{backbone.spec.name} has no BatchNorm layers to measure similarity with",
                        param="backbone")
    for layer in norms:
        t = keras.ops.cast(layer.input, "float32")
        stats += [keras.ops.mean(t, axis=(1, 2)), keras.ops.mean(t * t, axis=(1, 2))]
    inner = keras.Model(backbone.classifier.inputs, stats + [backbone.classifier.outputs[0]])
    return _on_pixels(backbone, lambda x: inner(x, training=False))


def _copy_at(backbone: Backbone, size: int) -> keras.Model:
    """The backbone without its ImageNet head, rebuilt for ``size`` pixels, with a copy of its weights."""
    spec = backbone.spec
    built = spec.builder(spec, input_size=size, include_top=False)
    weighted = [layer for layer in backbone.classifier.layers if layer.weights]  # the ImageNet head comes last
    for layer, source in zip([layer for layer in built.layers if layer.weights], weighted):
        layer.set_weights(source.get_weights())
    return built


def _base(backbone: Backbone, size: int, top: str) -> keras.Model:
    """A copy of the backbone up to feature layer ``top`` at ``size`` pixels (training it leaves the backbone
    as it was)."""
    built = _copy_at(backbone, size)
    return keras.Model(built.inputs, built.get_layer(backbone.spec.feature_layers[top]).output, name="base")


def _finetune(backbone, classes, size, trainable_from, augmentation, hidden, dropout, seed, top) -> keras.Model:
    base = _base(backbone, size, top)

    def head(x):
        x = base(x, training=False)
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, seed=seed, name="pool_dropout")(x)
        if hidden:
            x = keras.layers.Dense(hidden, activation="relu", name="hidden",
                                   kernel_initializer=keras.initializers.GlorotUniform(seed))(x)
            x = keras.layers.Dropout(0.2, seed=seed)(x)
        return keras.layers.Dense(classes or 1, activation="softmax" if classes else None, dtype="float32",
                                  kernel_initializer=keras.initializers.GlorotUniform(seed), name="head")(x)

    model = _on_pixels(backbone, head, size, augmentation, name=f"{backbone.spec.slug}_finetuned")
    set_trainable(model, trainable_from)
    return model


def set_trainable(model: keras.Model, trainable_from: str | None) -> None:
    """Freeze a fine-tuning network's base below ``trainable_from`` (all of it when None), BatchNorm always
    (keras.io's fine-tuning recipe); the layers after the base always train."""
    base = model.get_layer("base")
    names = [layer.name for layer in base.layers]
    if trainable_from is not None and trainable_from not in names:
        hint = ", ".join(n for n in names if n.startswith("stage") or n == "penultimate") or ", ".join(names[-5:])
        raise UserError(f"no layer {trainable_from!r} in the base; for example: {hint}", param="unfreeze_from")
    first = names.index(trainable_from) if trainable_from is not None else len(names)
    base.trainable = True
    for k, layer in enumerate(base.layers):
        layer.trainable = k >= first and not isinstance(layer, keras.layers.BatchNormalization)
