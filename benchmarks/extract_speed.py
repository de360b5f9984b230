"""Extraction speed, run by hand: each engine against itself and the other, and the Keras-guide way.

On a few hundred real photos re-encoded as camera-sized JPEGs (Tux Paint
stamps and foolbox's ImageNet photos, composited on white and scaled to
several hundred pixels), each phase runs in a fresh process (own peak memory;
every phase pays its own tracing once, from a built network to codes for every
image), on both engines (``keras``, ``onnx``):

  a  the network alone, on images already decoded in memory
  b  the extract stage: decoding, network and shard writes (``ExtractResult.seconds``),
     plus the whole ``scripts/extract.py`` command's wall time for reference
  c  the Keras guides' way: ``keras.utils.image_dataset_from_directory`` +
     ``model.predict`` + ``np.save``

Goals on the 2-core CPU machine with efficientnet_lite0 (issue #11): a on onnx
at least 2.5 times a on keras; b on onnx at least 0.8 times a on onnx and at
least 2.5 times c. Then b (onnx) with 1, 2 and 4 decoding threads (the cores
shared between decoding and ONNX Runtime), b again on four times as many images
(its peak memory must stay flat), single-thread decoding speed of the JPEGs and
of PNG copies, with and without libspng, and how much of the machine's FLOP
limit each phase uses: the backbone's floating-point operations per image
(TensorFlow's profiler on the frozen graph that ONNX Runtime runs) times
images/s, over float32 matmul GFLOP/s measured in the same run (numpy's BLAS on
every core, best of five).

    python benchmarks/extract_speed.py [--images 300] [--backbone efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "data"))  # fetch_data.py

from flops import matmul_gflops, model_gflop  # noqa: E402


def make_photos(dest: Path, count: int, seed: int = 0) -> None:
    """JPEGs of 640 to 1600 px on the long side from the real data sets, in two class folders."""
    from fetch_data import fetch_foolbox, fetch_tuxpaint

    from pipeline.data.decode import to_rgb

    sources = sorted(fetch_tuxpaint().rglob("*.png")) + sorted((fetch_foolbox() / "imagenet").glob("*.jpg"))
    rng = np.random.default_rng(seed)
    for i in range(count):
        src = sources[i % len(sources)]
        with Image.open(src) as im:
            im = to_rgb(im)
        long_side = int(rng.integers(640, 1601))
        s = long_side / max(im.size)
        im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BICUBIC)
        if i >= len(sources):
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        folder = dest / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"photo_{i:04d}.jpg", quality=90)


def phase_model_alone(data: Path, backbone_name: str, batch: int, engine: str, workers: int | None) -> dict:
    from pipeline.backbones.codes import resize_policy
    from pipeline.backbones.engine import frozen_network
    from pipeline.backbones.loading import load_backbone
    from pipeline.data.decode import decode_image

    backbone = load_backbone(backbone_name)
    spec = backbone.spec
    policy = resize_policy(spec)
    pixels = np.stack([decode_image(p, policy) for p in sorted(data.rglob("*.jpg"))])
    n = len(pixels)
    pixels = np.concatenate([pixels, np.zeros((-n % batch, *pixels.shape[1:]), np.uint8)])
    network = frozen_network(backbone, engine=engine)
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        network(pixels[i:i + batch])
        if i == 0:
            first = time.perf_counter() - start
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": seconds, "steady": (len(pixels) - batch) / (seconds - first)}


def phase_extract(data: Path, backbone_name: str, batch: int, engine: str, workers: int | None) -> dict:
    from pipeline.store.config import ExtractConfig
    from pipeline.store.extract import extract

    with tempfile.TemporaryDirectory() as tmp:
        result = extract(ExtractConfig(data=data, out=Path(tmp) / "codes.h5", backbone=backbone_name,
                                       batch_size=batch, progress=False, engine=engine, workers=workers))
    return {"images": result.extracted, "seconds": result.seconds}


def phase_keras_way(data: Path, backbone_name: str, batch: int, engine: str, workers: int | None) -> dict:
    import keras
    import tensorflow as tf

    from pipeline.backbones.factory import create_model
    from pipeline.backbones.loading import load_backbone

    backbone = load_backbone(backbone_name)
    size = backbone.spec.input_size
    model = create_model(backbone)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        ds = keras.utils.image_dataset_from_directory(
            data, labels=None, image_size=(size, size), batch_size=batch, shuffle=False, verbose=False)
        ds = ds.map(lambda x: tf.cast(x, tf.uint8)).prefetch(tf.data.AUTOTUNE)
        codes = model.predict(ds, verbose=0)
        np.save(Path(tmp) / "codes.npy", codes)
        seconds = time.perf_counter() - start
    return {"images": len(codes), "seconds": seconds}


PHASES = {"a": phase_model_alone, "b": phase_extract, "c": phase_keras_way}


def run_phase(name: str, data: Path, backbone: str, batch: int, engine: str = "keras",
              workers: int | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--data", str(data), "--backbone", backbone,
         "--batch-size", str(batch), "--engine", engine, *(["--workers", str(workers)] if workers else [])],
        capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"phase {name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def decode_rates(data: Path, size: int) -> dict[str, float]:
    """Images/s of one thread decoding the JPEGs, and PNG copies of them with Pillow and with libspng."""
    from pipeline.data import decode as images
    from pipeline.data.decode import ResizePolicy, decode_image

    jpegs = sorted(data.rglob("*.jpg"))[:60]
    pngs = []
    for f in jpegs:
        with Image.open(f) as im:
            im.save(f.with_suffix(".png"))
        pngs.append(f.with_suffix(".png"))
    policy, rates, spng = ResizePolicy(size, interpolation="bicubic"), {}, images.pyspng
    for name, files, fast in (("JPEG", jpegs, spng), ("PNG, Pillow", pngs, None), ("PNG, libspng", pngs, spng)):
        images.pyspng = fast
        start = time.perf_counter()
        for f in files:
            decode_image(f, policy)
        rates[name] = len(files) / (time.perf_counter() - start)
    images.pyspng = spng
    for f in pngs:
        f.unlink()
    return rates


def backbone_gflop(backbone_name: str) -> float:
    """GFLOP per image of the graph phase a runs on ONNX Runtime (every feature layer)."""
    from pipeline.backbones.factory import create_model
    from pipeline.backbones.loading import load_backbone

    backbone = load_backbone(backbone_name)
    size = backbone.spec.input_size
    return model_gflop(create_model(backbone, "features", layers=backbone.spec.feature_layers),
                       (size, size, 3), "uint8")


def command_wall_time(data: Path, backbone: str, batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "scripts" / "extract.py"), str(data), "--out",
                        f"{tmp}/codes.h5", "--backbone", backbone, "--batch-size", str(batch), "--quiet"],
                       check=True, capture_output=True)
        return time.perf_counter() - start


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's ``ru_maxrss`` survives ``exec``: a phase started by a parent
    holding more memory would report the parent's. ``VmHWM`` belongs to the process's own address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--engine", default="keras", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        result = PHASES[args.phase](args.data, args.backbone, args.batch_size, args.engine, args.workers)
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "photos"
        make_photos(data, args.images)
        sizes = [Image.open(f).size for f in sorted(data.rglob("*.jpg"))]
        print(f"{len(sizes)} JPEGs, median {int(np.median([s[0] for s in sizes]))}x"
              f"{int(np.median([s[1] for s in sizes]))} px; backbone {args.backbone}, batch {args.batch_size}")
        results = {f"{name} {engine}": run_phase(name, data, args.backbone, args.batch_size, engine)
                   for name in "ab" for engine in ("keras", "onnx")}
        results["c keras"] = run_phase("c", data, args.backbone, args.batch_size)
        threads = {w: run_phase("b", data, args.backbone, args.batch_size, "onnx", w) for w in (1, 2, 4)}
        wall = command_wall_time(data, args.backbone, args.batch_size)
        from pipeline.backbones.registry import get_spec

        decoding = decode_rates(data, get_spec(args.backbone).input_size)
        gflop, limit = backbone_gflop(args.backbone), matmul_gflops()
        make_photos(Path(tmp) / "more", 4 * args.images)
        more = run_phase("b", Path(tmp) / "more", args.backbone, args.batch_size, "onnx")
    labels = {"a": "network alone (decoded arrays)", "b": "extract stage (decode + network + store)",
              "c": "keras way (image_dataset_from_directory + predict)"}
    for name, r in results.items():
        print(f"  {name:8} {labels[name[0]]:52} {r['images'] / r['seconds']:7.1f} images/s   "
              f"peak RSS {r['peak_rss_mib']:6.0f} MiB")
    rate = {name: r["images"] / r["seconds"] for name, r in results.items()}
    print("  (network alone after its first batch, without the one-time tracing: "
          + ", ".join(f"{e} {results['a ' + e]['steady']:.1f}" for e in ("keras", "onnx")) + " images/s)")
    print(f"  whole scripts/extract.py command (auto engine), start-up included: {wall:.1f} s wall")
    print(f"  a: onnx/keras = {rate['a onnx'] / rate['a keras']:.2f}   (goal >= 2.5)")
    print(f"  b: onnx/keras = {rate['b onnx'] / rate['b keras']:.2f}")
    print(f"  b/a on onnx = {rate['b onnx'] / rate['a onnx']:.2f}   (goal >= 0.8);   "
          f"on keras = {rate['b keras'] / rate['a keras']:.2f}")
    print(f"  b onnx / c = {rate['b onnx'] / rate['c keras']:.2f}   (goal >= 2.5)")
    steady = {f"a {e} after its first batch": results[f"a {e}"]["steady"] for e in ("keras", "onnx")}
    print(f"  FLOP limit: {args.backbone} {gflop:.3f} GFLOP per image; float32 matmul {limit:.0f} GFLOP/s on "
          f"{len(os.sched_getaffinity(0))} cores; share of it used: "
          + ", ".join(f"{name} {r * gflop / limit:.0%}" for name, r in {**rate, **steady}.items()))
    print("  extract stage on onnx by decoding threads: "
          + ", ".join(f"{w}: {r['images'] / r['seconds']:.1f}" for w, r in threads.items()) + " images/s")
    print("  one thread decoding to the input size: "
          + ", ".join(f"{k} {v:.0f}" for k, v in decoding.items()) + " images/s")
    print(f"  extract stage on {more['images']} images: peak RSS {more['peak_rss_mib']:.0f} MiB, "
          f"{more['peak_rss_mib'] / results['b onnx']['peak_rss_mib']:.2f} x that on {results['b onnx']['images']} "
          "(flat: ~1.0)")


if __name__ == "__main__":
    main()
