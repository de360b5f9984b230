"""Vision transformers from keras-hub presets (DINOv2, SigLIP, CLIP), their token sequences given as feature maps.

Each feature layer is a map, as a convnet's is, so that every network the factory derives pools it alike: an
intermediate block's or the last layer's patch tokens on their grid (pooled: the mean of the patch tokens), and the
network's own summary of the image (the class token, or SigLIP's attention-pooled vector) as a 1x1 map. keras-hub is
imported when one of these is built, never before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
from keras import layers, ops

PATCHES = "patches"  # the mean of the last layer's patch tokens


@keras.saving.register_keras_serializable(package="pipeline")
class TokenMap(layers.Layer):
    """Tokens ``(batch, tokens, width)`` as a feature map: with ``token`` set that token alone as a 1x1 map,
    otherwise the tokens after the first ``prefix`` (class and register tokens) on their square grid; an already
    pooled ``(batch, width)`` vector becomes a 1x1 map."""

    def __init__(self, prefix: int = 0, token: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.prefix, self.token = int(prefix), token

    def call(self, x):
        if len(x.shape) == 2:
            return x[:, None, None, :]
        if self.token is not None:
            return x[:, self.token][:, None, None, :]
        patches = x[:, self.prefix:]
        side = math.isqrt(patches.shape[1])
        return ops.reshape(patches, (-1, side, side, patches.shape[-1]))

    def compute_output_shape(self, shape):
        if len(shape) == 2 or self.token is not None:
            return (shape[0], 1, 1, shape[-1])
        side = math.isqrt(shape[1] - self.prefix)
        return (shape[0], side, side, shape[-1])

    def get_config(self):
        return {**super().get_config(), "prefix": self.prefix, "token": self.token}


@dataclass(frozen=True)
class Family:
    """How one keras-hub family is built and read: the class a preset loads (``preset_class``), the vision encoder
    built from an architecture (``encoder_class``) and taken from a loaded preset (``encoder_of``), the tokens after
    block ``k`` (1-based), the last layer's normalised tokens, the image's summary and the leading non-patch
    tokens."""

    preset_class: str
    encoder_class: str
    encoder_of: Callable
    block: Callable  # (encoder, k) -> tokens after block k
    last: Callable  # encoder -> the last layer's normalised tokens
    summary: Callable  # encoder -> (tokens, token index) or (pooled vector, None)
    prefix: Callable  # encoder -> how many tokens come before the patches


FAMILIES = {
    "dinov2": Family(
        "DINOV2Backbone", "DINOV2Backbone", lambda b: b,
        block=lambda e, k: e.pyramid_outputs[f"stage{k}"], last=lambda e: e.output,
        summary=lambda e: (e.output, 0), prefix=lambda e: 1 + e.num_register_tokens),
    "siglip": Family(
        "SigLIPBackbone", "SigLIPVisionEncoder", lambda b: b.vision_encoder,
        block=lambda e, k: e.encoder_layers[k - 1].output, last=lambda e: e.post_layer_norm.output,
        summary=lambda e: (e.output, None), prefix=lambda e: 0),
    "clip": Family(
        "CLIPBackbone", "CLIPVisionEncoder", lambda b: b.vision_encoder,
        block=lambda e, k: e.encoder_layers[k - 1].output, last=lambda e: e.output,
        summary=lambda e: (e.output, 0), prefix=lambda e: 1),
}


def feature_layers(blocks: tuple[int, ...]) -> dict[str, str]:
    """The layers offered for extraction: the patch tokens after each of ``blocks``, after the last layer, and the
    image's summary (``penultimate``)."""
    return {f"block{k}": f"block{k}" for k in blocks} | {PATCHES: PATCHES, "penultimate": "penultimate"}


def build(spec, weights=None, *, family: str, config: dict, input_size: int | None = None,
          include_top: bool = True) -> keras.Model:
    """The vision encoder of ``family`` on preprocessed input with a map per feature layer: its first output the
    image's summary (``include_top``) or the last layer's patch map, the maps after it. ``weights``: None (random,
    from ``config``), a Keras weights file, or a keras-hub preset (a name that downloads once, or a local preset
    folder)."""
    import keras_hub

    kind, size = FAMILIES[family], input_size or spec.input_size
    shape = (size, size, 3)
    if weights is None or Path(weights).is_file():
        encoder = getattr(keras_hub.models, kind.encoder_class)(**config, image_shape=shape)
    else:
        options = {"image_shape": shape} if kind.preset_class == kind.encoder_class else {}
        encoder = kind.encoder_of(getattr(keras_hub.models, kind.preset_class).from_preset(str(weights), **options))
        _check_architecture(spec, encoder, config, size)
    prefix = kind.prefix(encoder)
    blocks = [int(name[len("block"):]) for name in spec.feature_layers if name.startswith("block")]
    maps = [TokenMap(prefix, name=f"block{k}")(kind.block(encoder, k)) for k in blocks]
    maps.append(TokenMap(prefix, name=PATCHES)(kind.last(encoder)))
    summary, token = kind.summary(encoder)
    maps.append(TokenMap(token=token, name="penultimate")(summary))
    top = layers.Flatten(name="summary")(maps[-1]) if include_top else maps[-2]
    # the maps off the path to the top are outputs too, so that the graph keeps them
    model = keras.Model(encoder.inputs[0], [top, *maps], name=spec.slug)
    if weights is not None and Path(weights).is_file():
        model.load_weights(weights)
    return model


def _check_architecture(spec, encoder, config: dict, size: int) -> None:
    found = encoder.get_config()
    same = lambda a, b: (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)  # noqa: E731
    differs = {k: (found.get(k), v) for k, v in config.items() if not same(found.get(k), v)}
    if differs or tuple(found["image_shape"][:2]) != (size, size):
        what = ", ".join(f"{k} {a} (not {b})" for k, (a, b) in differs.items()) or f"image size {found['image_shape']}"
        raise ValueError(f"the preset is not {spec.name}'s architecture: {what}")
