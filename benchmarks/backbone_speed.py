"""Every registered backbone on this CPU: images per second, peak memory and bytes per image in the store.

    python benchmarks/backbone_speed.py [--batches 4] [--batch-size 32] [--engine onnx] [NAME ...]

Each backbone runs in a fresh process, built with random weights (the same
operations as its real weights, so the same speed; nothing is downloaded): its
default layers' codes on ONNX Runtime (the CPU's engine) or Keras, for uint8
batches of its input size, the first batch (tracing, warm-up) not counted. Peak
memory is the process's maximum resident set, conversion to ONNX included.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]


def measure(name: str, batches: int, batch_size: int, engine: str) -> dict:
    """One backbone, in this process."""
    import numpy as np

    from pipeline.backbones.codes import code_dim
    from pipeline.backbones.engine import frozen_network
    from pipeline.backbones.loading import Backbone
    from pipeline.backbones.registry import get_spec

    spec = get_spec(name)
    backbone = Backbone(spec, spec.builder(spec, None), "random")
    network = frozen_network(backbone, "features", layers=spec.default_layers, engine=engine)
    pixels = np.random.default_rng(0).integers(0, 256, (batch_size, spec.input_size, spec.input_size, 3), np.uint8)
    network(pixels)
    started = time.perf_counter()
    for _ in range(batches):
        network(pixels)
    seconds = time.perf_counter() - started
    values = sum(code_dim(backbone, layer) for layer in spec.default_layers)
    return {"backbone": name, "engine": engine, "images_per_second": batches * batch_size / seconds,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "values": values,
            "kb_per_image": values * 4 / 1024, "params_m": backbone.classifier.count_params() / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="backbones (default: every registered one)")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--engine", default="onnx", choices=("onnx", "keras"))
    p.add_argument("--one", help=argparse.SUPPRESS)  # the child process's backbone
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.batches, args.batch_size, args.engine)))
        return
    from pipeline.backbones.registry import available

    print("| backbone | parameters | default layers: values, KB per image | images/s | peak memory |")
    print("|---|---|---|---|---|")
    for name in args.names or available():
        done = subprocess.run([sys.executable, __file__, "--one", name, "--batches", str(args.batches),
                               "--batch-size", str(args.batch_size), "--engine", args.engine],
                              capture_output=True, text=True)
        if done.returncode:
            print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1]} | | | |", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| `{name}` | {r['params_m']:.1f} M | {r['values']:,}, {r['kb_per_image']:.1f} | "
              f"{r['images_per_second']:.1f} | {r['peak_mib']:,.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
