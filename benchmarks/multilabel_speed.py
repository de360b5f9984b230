"""Several labels per image against one, run by hand: the fit stage's time on the same codes.

Tux Paint's codes (200 images; extracted first) with their 7 classes, and with
11 labels made from them (each label a set of classes, one image in ten given a
wrong value); then synthetic codes of 2,000 images the same way. Each fit is
the fit stage with its defaults (both kinds, nested cross-validation, refits,
thresholds). Goal (#43): the multi-label fit within 2x the single-label one.

    python benchmarks/multilabel_speed.py [--sizes 200 2000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

LABELS = 11


def labels_of(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """11 labels per image from its class: each label the union of a random set of classes, 10% flipped."""
    rng = np.random.default_rng(seed)
    classes = int(y.max()) + 1
    sets = [rng.choice(classes, size=rng.integers(1, max(2, classes // 2) + 1), replace=False) for _ in range(LABELS)]
    Y = np.stack([np.isin(y, s) for s in sets], axis=1)
    flip = rng.random(Y.shape) < 0.1
    return (Y ^ flip).astype(np.uint8)


def codes(n: int, tmp: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(codes, classes, what they are): Tux Paint's first ``n`` images' penultimate codes, or synthetic ones."""
    if n > 220:
        from fit_speed import synthetic

        X, y = synthetic(n)
        return X, y, f"synthetic {n:,} x {X.shape[1]:,}"
    from pipeline.store.config import ExtractConfig
    from pipeline.store.extract import extract
    from pipeline.store.reader import read_store

    path = tmp / "tux.h5"
    if not path.exists():
        extract(ExtractConfig(data=ROOT / "data" / "tuxpaint", out=path, layers=("penultimate",), progress=False))
    store = read_store(path)
    keep = np.random.default_rng(0).permutation(len(store))[:n]
    return store.codes("penultimate")[keep], store.labels[keep], f"Tux Paint {n} x 1,280"


def timed(store: Path, out: Path) -> float:
    from pipeline.linear.config import FitConfig
    from pipeline.linear.fit import fit

    started = time.perf_counter()
    fit(FitConfig(store=store, out=out, progress=False, duplicate_threshold=None))
    return time.perf_counter() - started


def main() -> None:
    from conftest import write_store

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in args.sizes:
            X, y, what = codes(n, tmp)
            names = [f"c{k}" for k in range(int(y.max()) + 1)]
            single = write_store(tmp / f"single{n}.h5", {"penultimate": X}, y, names)
            several = write_store(tmp / f"several{n}.h5", {"penultimate": X}, None, [f"l{k}" for k in range(LABELS)],
                                  multilabels=labels_of(y))
            a, b = timed(single, tmp / f"s{n}"), timed(several, tmp / f"m{n}")
            print(f"{what}: one label {a:.1f} s, {LABELS} labels {b:.1f} s: {b / a:.2f}x")


if __name__ == "__main__":
    main()
