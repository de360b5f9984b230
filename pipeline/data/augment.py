"""Label-preserving augmentation inside the full fine-tuning network: one random affine warp per image.

Keras' RandomRotation, RandomTranslation and RandomZoom each resample the whole
batch through ``ops.image.affine_transform``; on JAX that is a 4-D
``map_coordinates``, and made a training step many times slower on a GPU
(docs/benchmarks.md, "GPU"). Here the rotation, zoom, shift and optional mirror
of each image are composed into one map, and the image is sampled once,
bilinearly, from four gathers of whole pixels with the edges repeated: the same
on every backend, and cheap on all.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="pipeline")
class RandomAffine(layers.Layer):
    """In training, rotate each image by up to ``rotation`` of a turn, zoom by up to ``zoom``, shift by up to
    ``translation`` of its size and (with ``flip``) mirror it left to right half the time; otherwise pass it
    through. Works on float pixels of shape (batch, height, width, channels)."""

    def __init__(self, rotation=0.05, zoom=0.1, translation=0.1, flip=True, seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # pixel coordinates need float32 under mixed precision too
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.translation, self.flip = float(rotation), float(zoom), float(translation), \
            bool(flip)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        images = ops.cast(images, self.compute_dtype)
        batch = ops.shape(images)[0]
        height, width, channels = images.shape[1], images.shape[2], images.shape[3]
        u = keras.random.uniform((batch, 5), -1.0, 1.0, seed=self.seed_generator)
        angle = u[:, 0] * (self.rotation * 2 * math.pi)
        scale = 1.0 + u[:, 1] * self.zoom
        mirror = ops.where(u[:, 4] < 0, -1.0, 1.0) if self.flip else ops.ones_like(scale)
        shift_x, shift_y = u[:, 2] * (self.translation * width), u[:, 3] * (self.translation * height)
        # Output pixel (x, y), centred, comes from R(angle) (mirror * x, y) / scale + shift, centred.
        ys, xs = ops.meshgrid(ops.arange(height, dtype="float32") - (height - 1) / 2,
                              ops.arange(width, dtype="float32") - (width - 1) / 2, indexing="ij")
        xs, ys = ops.reshape(xs, (1, -1)), ops.reshape(ys, (1, -1))
        cos, sin = (ops.expand_dims(f(angle) / scale, 1) for f in (ops.cos, ops.sin))
        mx = xs * ops.expand_dims(mirror, 1)
        src_x = ops.clip(cos * mx - sin * ys + ops.expand_dims(shift_x, 1) + (width - 1) / 2, 0, width - 1)
        src_y = ops.clip(sin * mx + cos * ys + ops.expand_dims(shift_y, 1) + (height - 1) / 2, 0, height - 1)
        x0, y0 = ops.floor(src_x), ops.floor(src_y)
        wx, wy = ops.expand_dims(src_x - x0, -1), ops.expand_dims(src_y - y0, -1)
        x0, y0 = ops.cast(x0, "int32"), ops.cast(y0, "int32")
        x1, y1 = ops.minimum(x0 + 1, width - 1), ops.minimum(y0 + 1, height - 1)
        rows = ops.reshape(images, (-1, channels))  # one row per pixel of the batch: a gather takes whole pixels
        first = ops.expand_dims(ops.arange(batch, dtype="int32") * (height * width), 1)

        def at(y, x):
            return ops.take(rows, first + y * width + x, axis=0)

        top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
        bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
        return ops.reshape(top * (1 - wy) + bottom * wy, (batch, height, width, channels))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rotation": self.rotation, "zoom": self.zoom,
                "translation": self.translation, "flip": self.flip, "seed": self.seed}
