"""Seconds per epoch: tail fine-tuning from cached activations against the full network on pixels.

    python benchmarks/finetune_speed.py [--images 480] [--size 160] [--cut stage5]

On Fashion-MNIST images at one resolution, in one process: an epoch of the full
network on augmented pixels with everything trainable (what run.py's full mode
trains for data unlike ImageNet), the same with only the blocks after the cut
trainable, and an epoch of the tail from the cached activations; the first
epoch of each (tracing) is not counted. Also the one-off cost of the cache, and
the FLOP rates: forward GFLOP per image of the full network and of the tail
(TensorFlow's profiler), a training step counted as three forward passes of
what trains (forward, gradients of the inputs and of the weights), against
float32 matmul GFLOP/s measured in the same run: the rate the tail would need
for a given speed-up over the full network.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "data"), str(ROOT / "benchmarks")]

import keras  # noqa: E402
import numpy as np  # noqa: E402
from fetch_data import fetch_fashion_mnist  # noqa: E402
from flops import matmul_gflops, model_gflop  # noqa: E402

from pipeline.backbones.codes import resize_policy  # noqa: E402
from pipeline.backbones.engine import frozen_network  # noqa: E402
from pipeline.backbones.factory import create_model, set_trainable  # noqa: E402
from pipeline.backbones.loading import load_backbone  # noqa: E402
from pipeline.data.discover import discover  # noqa: E402
from pipeline.finetune.full import augmentation, decode_all  # noqa: E402
from pipeline.finetune.tail import tail_network  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.last = time.perf_counter() - self.started


def seconds_per_epoch(model, x, y, batch_size: int) -> float:
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    timer = EpochTimer()
    model.fit(x, y, epochs=2, batch_size=batch_size, verbose=0, callbacks=[timer])
    return timer.last


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=480)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--cut", default="stage5")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    dataset = discover(fetch_fashion_mnist())
    pick = np.random.default_rng(0).choice(len(dataset.paths), args.images, replace=False)
    backbone = load_backbone("efficientnet_lite0")
    policy = dataclasses.replace(resize_policy(backbone.spec), size=args.size)
    pixels, ok, _ = decode_all([dataset.root / dataset.paths[i] for i in pick], policy, 64)
    labels = np.array([dataset.class_names.index(dataset.labels[pick[i]]) for i in ok])

    full = create_model(backbone, "finetune", classes=10, input_size=args.size, augmentation=augmentation(0))
    set_trainable(full, full.get_layer("base").layers[0].name)
    whole = seconds_per_epoch(full, pixels, labels, args.batch_size)

    model = create_model(backbone, "finetune", classes=10, input_size=args.size, augmentation=augmentation(0))
    tail, _, first = tail_network(model, backbone, args.cut)
    set_trainable(model, first)
    after_cut = seconds_per_epoch(model, pixels, labels, args.batch_size)

    front = frozen_network(backbone, "front", (args.cut,), size=args.size)
    front(pixels[:8])
    started = time.perf_counter()
    activations = np.concatenate([front(pixels[k:k + 64])[0] for k in range(0, len(pixels), 64)])
    cache = time.perf_counter() - started
    cached = seconds_per_epoch(tail, activations.astype(np.float16).astype(np.float32), labels, args.batch_size)

    plain = create_model(backbone, "finetune", classes=10, input_size=args.size)  # augmentation aside
    full_gflop = model_gflop(plain, pixels.shape[1:], str(pixels.dtype))
    tail_gflop = model_gflop(tail, activations.shape[1:])
    n = len(labels)
    print(f"{n} images at {args.size} px, cut {args.cut}, efficientnet_lite0, batch {args.batch_size}")
    print(f"full network, all trainable:          {whole:7.1f} s/epoch ({n / whole:6.1f} images/s)")
    print(f"full network, blocks after the cut:   {after_cut:7.1f} s/epoch ({n / after_cut:6.1f} images/s)")
    print(f"tail from the cache:                  {cached:7.1f} s/epoch ({n / cached:6.1f} images/s)")
    print(f"cache, one view ({front.engine}):            {cache:7.1f} s ({n / cache:6.1f} images/s)")
    print(f"tail against the full network: {whole / cached:.1f}x faster per epoch "
          f"({after_cut / cached:.1f}x against the same blocks trained on pixels)")
    limit, full_step, tail_step = matmul_gflops(), 3 * full_gflop, 3 * tail_gflop
    print(f"training GFLOP per image: full network {full_step:.3f}, tail {tail_step:.3f} "
          f"({full_step / tail_step:.1f}x fewer); achieved {n / whole * full_step:.0f} and "
          f"{n / cached * tail_step:.0f} GFLOP/s; float32 matmul {limit:.0f} GFLOP/s")
    print(f"10x the full network per epoch would need the tail at {10 * n / whole * tail_step:.0f} GFLOP/s "
          f"({10 * n / whole * tail_step / limit:.0%} of matmul)")


if __name__ == "__main__":
    main()
