"""Ray extraction against the local extract stage, on real camera-sized JPEGs; and the streamed fit's memory.

Run by hand (``make bench`` runs it): prints, from one run on this machine,

* the local extract stage (ONNX engine) and the same extraction on a Ray cluster
  of this machine (``ray start --head``), both in images/s once the network is
  loaded; Ray's start-up (joining, starting the actor) is printed apart;
* the driver's peak memory on N and 3N images (flat: about 1.0);
* the streamed fit's peak memory on synthetic stores 4x and 16x its budget
  (flat: about 1.0), and its time per epoch and GiB of codes;
* the figures the throughput projection in docs/benchmarks.md is built from: one thread's
  JPEG decoding rate and the network's rate alone.

Goal on this machine class: Ray at least 0.85x the local stage.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from extract_speed import make_photos, peak_rss_mib  # noqa: E402
from ray_head import local_head  # noqa: E402

EPOCHS = 3


def phase_extract(data: Path, out: Path, address: str | None) -> dict:
    """One extraction in this process; with Ray, the time from the first finished batch on is timed apart."""
    from pipeline.store.config import ExtractConfig
    from pipeline.store.extract import Here, extract

    arrivals: list[tuple[float, int]] = []

    class Timed:
        """The site, with the arrival of each finished shard timed."""

        def __init__(self, site):
            self.site, self.lister = site, site.lister

        def fingerprint(self, path):
            return self.site.fingerprint(path)

        def shards(self, job):
            for block in self.site.shards(job):
                arrivals.append((time.perf_counter(), len(block[1]) + len(block[2])))
                yield block

    if address is None:
        result = extract(ExtractConfig(data=data, out=out, progress=False), Here())
        arrivals.clear()  # the local stage is timed whole
    else:
        from pipeline.scaleout.extract import OnCluster

        result = extract(ExtractConfig(data=data, out=out, progress=False), Timed(OnCluster(address)))
    out_dict = {"images": result.extracted, "seconds": result.seconds}
    if arrivals:
        first = arrivals[0]
        steady = sum(n for _, n in arrivals[1:]) / (arrivals[-1][0] - first[0])
        out_dict |= {"steady": steady, "startup": result.seconds - sum(n for _, n in arrivals) / steady}
    return out_dict


def phase_stream(store: Path, budget: int, epochs: int = EPOCHS) -> dict:
    """The streamed fit, held to ``epochs`` epochs: memory does not depend on their number, the time is per
    epoch."""
    from pipeline.linear import stream as stream_fit
    from pipeline.linear.config import FitConfig
    from pipeline.linear.fit import fit

    stream_fit.MAX_EPOCHS = epochs

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        fit(FitConfig(store=store, out=Path(tmp) / "run", classifiers=("softmax",), max_memory=budget,
                      progress=False))
        return {"seconds": (time.perf_counter() - started) / epochs}


def run_phase(*args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--phase", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def synthetic_store(path: Path, rows: int, dim: int) -> None:
    """A valid store of ``rows`` random codes, written shard by shard (the writer's memory stays small)."""
    from pipeline.store.layout import StoreConfig
    from pipeline.store.writer import Row, Shards, assemble

    config = StoreConfig("efficientnet_lite0", "synthetic", ("penultimate",), 224,
                         {"mean": [0.0] * 3, "std": [1.0] * 3, "bgr": False}, {"size": 224, "mode": "crop"})
    shards, rng, out_rows, labels = Shards(path, config), np.random.default_rng(0), [], []
    centres = rng.normal(0, 0.3, (10, dim)).astype(np.float32)
    for start in range(0, rows, 20_000):
        n = min(20_000, rows - start)
        y = np.sort(rng.integers(0, 10, n))
        names = [f"c{label}/img_{start + i:08d}.png" for i, label in enumerate(y)]
        shards.write(names, np.zeros((n, 2), np.int64),
                     {("penultimate", None): centres[y] + rng.normal(0, 1, (n, dim)).astype(np.float32)}, [])
        out_rows += [Row(p, (0, 0), shards.files[-1], i) for i, p in enumerate(names)]
        labels += y.tolist()
    order = np.argsort([r.path for r in out_rows], kind="stable")
    assemble(path, config, [out_rows[i] for i in order], {"penultimate": dim}, [labels[i] for i in order],
             [f"c{k}" for k in range(10)], [], {"weights_source": "synthetic"})
    shards.remove()


def ray_phases(tmp: Path, images: int) -> None:
    make_photos(tmp / "photos", images)
    make_photos(tmp / "more", 3 * images, seed=1)
    print(f"{images} and {3 * images} camera-sized JPEGs; efficientnet_lite0, ONNX engine")
    local = run_phase("extract", str(tmp / "photos"), str(tmp / "local.h5"))
    (tmp / "ray").mkdir()
    with local_head(tmp / "ray") as address:
        on_ray = run_phase("extract", str(tmp / "photos"), str(tmp / "ray.h5"), address)
        more = run_phase("extract", str(tmp / "more"), str(tmp / "more.h5"), address)
    local_rate = local["images"] / local["seconds"]
    print(f"  local extract stage                 {local_rate:7.1f} images/s   driver peak RSS "
          f"{local['peak_rss_mib']:6.0f} MiB")
    print(f"  Ray, whole job                      {on_ray['images'] / on_ray['seconds']:7.1f} images/s   "
          f"(start-up {on_ray['startup']:.1f} s)")
    print(f"  Ray, once the actor is up           {on_ray['steady']:7.1f} images/s   driver peak RSS "
          f"{on_ray['peak_rss_mib']:6.0f} MiB")
    print(f"  Ray / local = {on_ray['steady'] / local_rate:.2f}   (goal >= 0.85)")
    print(f"  driver peak RSS on {3 * images} images: {more['peak_rss_mib']:.0f} MiB, "
          f"{more['peak_rss_mib'] / on_ray['peak_rss_mib']:.2f} x that on {images} (flat: ~1.0)")


def stream_phases(tmp: Path) -> None:
    from pipeline.linear.stream import ALPHAS

    budget, dim = 64 * 2**20, 256
    stream = {}
    for times in (4, 16):
        rows = times * budget // (4 * dim)
        synthetic_store(tmp / f"codes{times}.h5", rows, dim)
        stream[times] = run_phase("stream", str(tmp / f"codes{times}.h5"), str(budget)) | {"rows": rows}
        (tmp / f"codes{times}.h5").unlink()
    for times, r in stream.items():
        gib = r["rows"] * dim * 4 / 2**30
        print(f"  streamed fit, store {times:2d}x the 64 MiB budget ({r['rows']} x {dim}): peak RSS "
              f"{r['peak_rss_mib']:6.0f} MiB, {r['seconds'] / gib:.0f} s per epoch and GiB of codes "
              f"(softmax, {len(ALPHAS)} penalties)")
    print(f"  streamed fit peak RSS 16x / 4x = {stream[16]['peak_rss_mib'] / stream[4]['peak_rss_mib']:.2f} "
          "(flat: ~1.0)")


def million_phase(tmp: Path, rows: int = 1_000_000, dim: int = 2064, budget: int = 2 * 2**30) -> None:
    """The store a million images of lite0's default layers make (1,000,000 x 2,064 float32, 7.7 GiB): its
    assembly from shards, then one epoch of the streamed fit under a 2 GiB budget, with its peak memory."""
    started = time.perf_counter()
    synthetic_store(tmp / "million.h5", rows, dim)
    built = time.perf_counter() - started
    size = (tmp / "million.h5").stat().st_size / 2**30
    print(f"  {rows:,} x {dim:,} codes: shards written and the store assembled in {built:.0f} s ({size:.1f} GiB)")
    r = run_phase("stream", str(tmp / "million.h5"), str(budget), "1")
    print(f"  streamed fit under a {budget / 2**30:.0f} GiB budget: {r['seconds']:.0f} s per epoch "
          f"({r['seconds'] / size:.0f} s per epoch and GiB), peak RSS {r['peak_rss_mib']:.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--only", choices=("ray", "stream", "million"),
                   help="only Ray's extraction, only the streamed fit, or only a million images' codes (7.7 GiB of "
                        "disk, twice that while assembling)")
    args = p.parse_args()
    if args.phase:
        kind, *rest = args.phase
        result = (phase_extract(Path(rest[0]), Path(rest[1]), rest[2] if len(rest) > 2 else None)
                  if kind == "extract" else phase_stream(Path(rest[0]), int(rest[1]), *map(int, rest[2:])))
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.only in (None, "ray"):
            ray_phases(tmp, args.images)
        if args.only in (None, "stream"):
            stream_phases(tmp)
        if args.only == "million":
            million_phase(tmp)


if __name__ == "__main__":
    main()
