"""Would crop views pay beside the mirror? Nested cross-validated accuracy with each set of views.

    python benchmarks/crop_views.py data/tuxpaint data/fashion_mnist

Each image's joined codes (stage5+stage6+penultimate of the default backbone)
are computed for the image, its mirror, crops of 7/8 of the side resized back
(the centre one and its mirror; the four corners), and cross-validated with
the fit stage's protocol and folds on five sets of views: none, the mirror,
the mirror and centre crops, the mirror and corners, the centre crop alone.
Training uses every view of the training images; prediction averages over the
views of the test image (pipeline.linear.tta). Prints svm and softmax accuracy.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.backbones.codes import resize_policy  # noqa: E402
from pipeline.backbones.engine import frozen_network  # noqa: E402
from pipeline.backbones.loading import load_backbone  # noqa: E402
from pipeline.backbones.options import DEFAULT_BACKBONE  # noqa: E402
from pipeline.data.discover import discover  # noqa: E402
from pipeline.data.loader import decoded_batches  # noqa: E402
from pipeline.linear import cv  # noqa: E402

LAYERS = ("stage5", "stage6", "penultimate")
CROP = 0.875
SETS = {"none": (), "mirror": ("flip",), "mirror + centre crops": ("flip", "centre", "centre_flip"),
        "mirror + corners": ("flip", "top_left", "top_right", "bottom_left", "bottom_right"),
        "centre crop": ("centre",)}


def crop(pixels: np.ndarray, where: str) -> np.ndarray:
    """The crop of 7/8 of each side at ``where``, resized back to the batch's size."""
    import tensorflow as tf

    _, h, w, _ = pixels.shape
    ch, cw = int(h * CROP), int(w * CROP)
    y0 = {"centre": (h - ch) // 2, "top": 0, "bottom": h - ch}[where.split("_")[0]]
    x0 = {"centre": (w - cw) // 2, "left": 0, "right": w - cw}[where.split("_")[-1]]
    resized = tf.image.resize(tf.cast(pixels[:, y0:y0 + ch, x0:x0 + cw], tf.float32), (h, w))
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def view(pixels: np.ndarray, name: str) -> np.ndarray:
    if name == "flip":
        return pixels[:, :, ::-1]
    if name.endswith("_flip"):
        return crop(pixels, name.removesuffix("_flip"))[:, :, ::-1]
    return crop(pixels, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    backbone = load_backbone(DEFAULT_BACKBONE)
    network = frozen_network(backbone, "features", LAYERS)
    policy = resize_policy(backbone.spec)
    names = sorted({v for views in SETS.values() for v in views})
    for folder in args.data:
        dataset = discover(folder)
        y = np.unique(dataset.labels, return_inverse=True)[1]
        codes: dict[str, list] = {v: [] for v in ("image", *names)}
        for batch in decoded_batches([dataset.root / p for p in dataset.paths], policy, 32):
            for v in codes:
                out = network(np.ascontiguousarray(batch.pixels if v == "image" else view(batch.pixels, v)))
                codes[v].append(np.concatenate([o[:len(batch.ok)] for o in out], axis=1))
        joined = {v: np.concatenate(c) for v, c in codes.items()}
        for label, views in SETS.items():
            X = np.stack([joined[v] for v in ("image", *views)]) if views else joined["image"]
            results, _ = cv.cross_validate({"joined": X}, y, dataset.class_names, views=(views,))
            print(f"{folder.name:16s} {label:24s} " + "  ".join(f"{r.classifier} {r.primary.mean:.4f}"
                                                             for r in results), flush=True)


if __name__ == "__main__":
    main()
