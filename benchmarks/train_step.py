"""Seconds per training step of full mode's network and images/s of the frozen one, on whatever Keras backend
and device is active: per precision, per augmentation, with the base frozen (phase 1) or training.

    python benchmarks/train_step.py [--size 224] [--batch 32] [--steps 20]
    KERAS_BACKEND=jax python benchmarks/train_step.py     # the GPU check (docs/gpu.md)
    python benchmarks/train_step.py --size 128 --precisions float32 --frozen-batches --steps 5

Random pixels; the first call of each network (tracing, compilation) is timed
apart from the steps that follow it, so compile cost and steady speed show
separately. Ratios are within one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import keras  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.backbones.device import accelerators  # noqa: E402
from pipeline.backbones.factory import create_model, set_trainable  # noqa: E402
from pipeline.backbones.loading import load_backbone  # noqa: E402
from pipeline.finetune.full import augmentation  # noqa: E402


def keras_layers() -> keras.Sequential:
    """What full mode used before RandomAffine: a resampling of the whole batch per layer."""
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=0),
        keras.layers.RandomRotation(0.05, fill_mode="nearest", seed=0),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=0),
        keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=0),
    ])


AUGMENTATIONS = {"off": lambda: None, "keras": keras_layers, "affine": lambda: augmentation(0)}


def timed(call, steps: int) -> tuple[float, float]:
    """(seconds of the first call, mean seconds of the ``steps`` calls after it)."""
    started = time.perf_counter()
    call()
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        call()
    return first, (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_float16"])
    parser.add_argument("--frozen-batches", type=int, nargs="*", default=[1, 8], metavar="K",
                        help="time the frozen network on batches of K times --batch (none: skip it)")
    parser.add_argument("--phases", nargs="+", choices=["head", "all"], default=["head", "all"],
                        help="head: phase 1, the base frozen; all: the base trains too (BatchNorm stays frozen)")
    parser.add_argument("--augmentation", nargs="+", choices=list(AUGMENTATIONS), default=list(AUGMENTATIONS),
                        help="off; keras: Keras' RandomFlip, RandomRotation, RandomTranslation and RandomZoom; "
                             "affine: the project's RandomAffine (what full mode uses)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.batch)
    print(f"Keras {keras.__version__} on {keras.backend.backend()} ({', '.join(accelerators()) or 'CPU'}), "
          f"{args.backbone} at {args.size} px, batch {args.batch}")
    for precision in args.precisions:
        backbone = load_backbone(args.backbone, precision=precision)
        frozen = create_model(backbone, "features")  # at the backbone's own resolution
        small = rng.integers(0, 256, (args.batch, *frozen.input_shape[1:]), dtype=np.uint8)
        for batch in (np.concatenate([small] * k) for k in args.frozen_batches):
            first, step = timed(lambda b=batch: frozen.predict_on_batch(b), args.steps)
            print(f"{precision:14s} frozen codes, batch {len(batch):4d}: first call {first:6.1f} s, "
                  f"{len(batch) / step:8.0f} images/s")
        for name in args.augmentation:
            model = create_model(backbone, "finetune", classes=10, input_size=args.size,
                                 augmentation=AUGMENTATIONS[name]())
            for phase in args.phases:
                if phase == "all":  # phase 2 at its widest: every layer of the base but BatchNorm
                    set_trainable(model, model.get_layer("base").layers[0].name)
                model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
                first, step = timed(lambda m=model: m.train_on_batch(pixels, labels), args.steps)
                print(f"{precision:14s} train step ({phase}), augmentation {name:6s}: first call {first:6.1f} s, "
                      f"{step * 1000:8.1f} ms/step ({args.batch / step:6.0f} images/s)")


if __name__ == "__main__":
    main()
