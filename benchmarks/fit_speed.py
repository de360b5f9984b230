"""Fit speed, run by hand: both classifiers with the full nested cross-validation.

On synthetic codes of 10,000 x 1,280 in 10 classes (non-negative like pooled
ReLU activations, class structure in a 32-d subspace plus noise) and on the
Tux Paint codes (extracted first if needed). Goal: the 10,000-image fit,
cross-validation included, in under a minute on the 2-core CPU machine.

    python benchmarks/fit_speed.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def synthetic(n=10_000, d=1280, k=10, seed=0):
    rng = np.random.default_rng(seed)
    basis, centres = rng.normal(size=(32, d)), rng.normal(size=(k, 32))
    y = rng.integers(0, k, n)
    X = np.maximum(0, (centres[y] + rng.normal(scale=1.5, size=(n, 32))) @ basis / 6
                   + rng.normal(scale=0.5, size=(n, d)))
    return X.astype(np.float32), y


def timed_fit(store: Path, out: Path) -> tuple[float, dict]:
    from pipeline.linear.config import FitConfig
    from pipeline.linear.fit import fit

    started = time.perf_counter()
    metrics = fit(FitConfig(store=store, out=out)).to_json()
    return time.perf_counter() - started, metrics


def main() -> None:
    from conftest import write_store

    from pipeline.store.config import ExtractConfig
    from pipeline.store.extract import extract

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        X, y = synthetic()
        store = write_store(tmp / "synthetic.h5", {"penultimate": X}, y, [f"c{i}" for i in range(10)])
        tux = tmp / "tuxpaint.h5"
        if not tux.exists():
            extract(ExtractConfig(data=ROOT / "data" / "tuxpaint", out=tux, progress=False))
        for name, path in (("synthetic 10,000 x 1,280, 10 classes", store), ("Tux Paint 220 x 1,280, 7 classes", tux)):
            seconds, metrics = timed_fit(path, tmp / "run")
            p = metrics["protocol"]
            print(f"{name}: {seconds:.1f} s for svm + softmax "
                  f"({p['outer_folds']}-fold x {p['repeats']}, C by {p['inner']}, refits included)")
            for r in metrics["results"]:
                acc = r["accuracy"]
                print(f"    {r['classifier']:8} accuracy {acc['mean']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}]"
                      f"  fold fits {r['fit_seconds']:.1f} s")


if __name__ == "__main__":
    main()
