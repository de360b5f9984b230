"""Views of an image that keep its class: the fixed ones whose codes a store may hold beside each image's
(``flip``: mirrored left to right), and the shifted views tail fine-tuning trains on.

Fixed views: each is the image reversed along one axis of an (N, H, W, C)
batch; a classifier trained with them averages its predictions over the image
and its views (:mod:`pipeline.linear.tta`).

Shifted views: view 0 is the image itself. Every other view shifts the image by up to
``shift`` of its side (edges repeated: a shifted crop of an edge-padded image),
and, with ``flip``, odd views are also mirrored left to right; a digit mirrored
is another digit, so flipping is an option. The shift of view k of an image
depends only on the seed, k and the image's path, so a cached view stays valid
whatever the other images are.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import UserError

AXES = {"flip": 2}  # each view is the image reversed along this axis of an (N, H, W, C) batch
VIEWS = tuple(AXES)


def check_views(views: Sequence[str]) -> tuple[str, ...]:
    """The views named, in their canonical order, once each; one clear line for an unknown one."""
    unknown = [v for v in views if v not in AXES]
    if unknown:
        raise UserError(f"unknown view {', '.join(map(repr, unknown))}; known: {', '.join(VIEWS)}", param="views")
    return tuple(v for v in VIEWS if v in views)


def views_of(pixels, views: Sequence[str], ops=np) -> list:
    """A batch of images (N, H, W, C) and each of its ``views``; ``ops``: numpy (contiguous arrays out), or
    ``keras.ops`` for a symbolic tensor."""
    out = [ops.flip(pixels, axis=AXES[v]) for v in views]
    return [pixels, *(map(np.ascontiguousarray, out) if ops is np else out)]


@dataclass(frozen=True)
class ShiftedViews:
    """How many views per training image, and which."""

    count: int = 4
    flip: bool = False
    shift: float = 0.125
    seed: int = 0

    def __post_init__(self):
        if self.count < 1:
            raise ValueError(f"views must be at least 1, not {self.count}")
        if not 0 <= self.shift < 0.5:
            raise ValueError(f"shift must be in [0, 0.5), not {self.shift}")

    def to_json(self) -> dict:
        return {"count": self.count, "flip": self.flip, "shift": self.shift, "seed": self.seed}

    def offsets(self, k: int, paths: Sequence[str], size: int) -> np.ndarray:
        """(dy, dx) of view ``k`` of each path, in pixels."""
        reach = int(round(self.shift * size))
        if k == 0 or reach == 0:
            return np.zeros((len(paths), 2), int)
        return np.array([np.random.default_rng([self.seed, k, zlib.crc32(p.encode("utf-8", "surrogateescape"))])
                         .integers(-reach, reach + 1, 2) for p in paths])

    def apply(self, k: int, pixels: np.ndarray, paths: Sequence[str]) -> np.ndarray:
        """View ``k`` of a batch ``pixels`` (N, H, W, C) of the images at ``paths``."""
        if k == 0:
            return pixels
        n, h, w = pixels.shape[:3]
        offsets = self.offsets(k, paths, h)
        reach = int(np.abs(offsets).max(initial=0))
        padded = np.pad(pixels, ((0, 0), (reach, reach), (reach, reach), (0, 0)), mode="edge")
        out = np.stack([padded[i, reach + dy:reach + dy + h, reach + dx:reach + dx + w]
                        for i, (dy, dx) in enumerate(offsets)])
        return out[:, :, ::-1] if self.flip and k % 2 == 1 else out
