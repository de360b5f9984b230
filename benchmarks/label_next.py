"""Does ``suggest`` spend labels better than picking at random? Learning curves on cached codes.

    python benchmarks/label_next.py [--sets tuxpaint fashion_mnist] [--seeds 0 1 2] [--work DIR]

Each set's store is extracted once (the default backbone and layers) into
WORK. For each seed: a stratified 20% of the images is held out for testing;
the rest is the pool, of which 5 images per class (drawn at random) start
labelled. Then 5 rounds: the model is made as fit_svm.py makes the saved
softmax (C chosen by inner cross-validation), and 20 more images of the pool
are labelled, chosen by :func:`pipeline.linear.label_next.rank` (what
``suggest.py`` runs) or at random; the held-out accuracy is measured after
every round. Printed: the mean curves, the labels ``suggest`` needed to reach
random's final accuracy, and a PNG of the curves (``--plot``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "data")]

from fetch_data import fetch_fashion_mnist, fetch_tuxpaint, first_per_class  # noqa: E402

from pipeline.linear import cv  # noqa: E402
from pipeline.linear.label_next import rank  # noqa: E402
from pipeline.store.layout import default_candidates  # noqa: E402
from pipeline.store.reader import read_store  # noqa: E402

SETS = {"tuxpaint": lambda work: fetch_tuxpaint(),
        "fashion_mnist": lambda work: first_per_class(fetch_fashion_mnist(), 300, work / "data" / "fashion_mnist")}
START, BATCH, ROUNDS = 5, 20, 5


def store_of(name: str, work: Path):
    """The set's store in ``work``, extracted with the defaults the first time."""
    from pipeline.store.config import ExtractConfig
    from pipeline.store.extract import extract

    path = work / f"{name}.h5"
    if not path.exists():
        extract(ExtractConfig(data=SETS[name](work), out=path, progress=False))
    return read_store(path)


def curve(X: np.ndarray, pen: np.ndarray, y: np.ndarray, seed: int, strategy: str) -> list[tuple[int, float]]:
    """(labelled images, held-out accuracy) after the start and after each round."""
    pool, test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)
    rng = np.random.default_rng(seed)
    labelled = np.concatenate([rng.choice(pool[y[pool] == c], START, replace=False) for c in np.unique(y)])
    points = []
    for round_ in range(ROUNDS + 1):
        model, _ = cv.fit_final("softmax", X[labelled], y[labelled], seed=seed)
        points.append((len(labelled), float(np.mean(model.predict(X[test]) == y[test]))))
        if round_ == ROUNDS:
            return points
        rest = np.setdiff1d(pool, labelled)
        if strategy == "random":
            new = rng.choice(rest, BATCH, replace=False)
        else:
            new = rest[rank(model.predict_proba(X[rest]), pen[rest], pen[labelled], BATCH, seed).chosen]
        labelled = np.concatenate([labelled, new])
    return points


def labels_to_reach(points: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, acc in points if acc >= target - 1e-9), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "label_next")
    p.add_argument("--plot", type=Path, help="write the curves to this PNG")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.sets:
        store = store_of(name, args.work)
        X, pen = store.codes(default_candidates(store.layers)[0]), store.codes("penultimate")
        for strategy in ("random", "suggest"):
            results[name, strategy] = [curve(X, pen, store.labels, seed, strategy) for seed in args.seeds]
        print(f"\n{name}: {len(store)} images, {len(store.class_names)} classes; held-out accuracy, mean of seeds "
              f"{args.seeds} (per seed)")
        print("| labelled | random | suggest |\n|---|---|---|")
        random_, suggest_ = (np.array([[a for _, a in c] for c in results[name, s]]) for s in ("random", "suggest"))
        counts = [n for n, _ in results[name, "random"][0]]
        for k, n in enumerate(counts):
            print(f"| {n} | {random_[:, k].mean():.3f} ({', '.join(f'{a:.3f}' for a in random_[:, k])}) | "
                  f"{suggest_[:, k].mean():.3f} ({', '.join(f'{a:.3f}' for a in suggest_[:, k])}) |")
        target = random_[:, -1].mean()
        reached = labels_to_reach(list(zip(counts, suggest_.mean(axis=0))), target)
        per_seed = [labels_to_reach(results[name, "suggest"][k], random_[k, -1]) for k in range(len(args.seeds))]
        print(f"random's final mean accuracy {target:.3f} at {counts[-1]} labels; suggest's mean curve reached it at "
              f"{reached if reached is not None else 'none of the'} labels; per seed (each against that seed's "
              f"random): {per_seed}")
    (args.work / "curves.json").write_text(json.dumps({f"{n}/{s}": v for (n, s), v in results.items()}))
    if args.plot:
        _plot(results, args.sets, args.plot)
        print(f"wrote {args.plot}")


def _plot(results: dict, sets: list[str], path: Path) -> None:
    from pipeline.plots import png, subplots

    fig, axes = subplots(1, len(sets), figsize=(5 * len(sets), 3.6), squeeze=False)
    for ax, name in zip(axes[0], sets):
        for strategy, colour in (("random", "tab:grey"), ("suggest", "tab:blue")):
            curves = np.array([[a for _, a in c] for c in results[name, strategy]])
            counts = [n for n, _ in results[name, strategy][0]]
            ax.plot(counts, curves.mean(0), marker="o", color=colour, label=strategy)
            ax.fill_between(counts, curves.min(0), curves.max(0), color=colour, alpha=0.2)
        ax.set(title=name, xlabel="labelled images", ylabel="held-out accuracy")
        ax.legend()
    path.write_bytes(png(fig))


if __name__ == "__main__":
    main()
