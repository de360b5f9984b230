"""Which codes and which linear model, on the advisor table's rows: today's default against every stage weighed as
blocks and the k-NN blend, on the same held-out images.

    python benchmarks/codes_table.py run [--only NAME ...] [--seeds 0 1 2] [--work DIR]
    python benchmarks/codes_table.py report [--work DIR]

``run`` extracts every stage of EfficientNet-Lite0 (``--layers all``) once per row of
``benchmarks/advisor_table.py``, then for each seed holds out 20% of the images (near-duplicates on one side,
as the fit stage finds them) and trains each option on the rest, its C (and blocks, k and weight) chosen by the
inner cross-validation alone, as the saved model's are; between the SVM and the softmax, the one with the better
inner score is kept, as the fit's choice would. Each option's right-or-wrong per held-out image is appended to
``WORK/cases.jsonl`` (a rerun skips the cases there). ``report`` prints per row the held-out accuracy of each
option and its paired difference from today's default (95% bootstrap interval per case), the mean over rows,
and the fit minutes on the 3,000-image rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from advisor_table import ROWS  # noqa: E402

from pipeline.metrics import paired_difference  # noqa: E402

TODAY = "stage5+stage6+penultimate"  # Lite0's default layers, joined and power-scaled
OPTIONS = {  # name -> (layer: TODAY or every stage, weighed as blocks, the kinds competing)
    "today": (TODAY, False, ("svm", "softmax")),
    "all joined": (None, False, ("svm", "softmax")),
    "all as blocks": (None, True, ("svm", "softmax")),
    "blend": (TODAY, False, ("blend",)),
    "blocks + blend": (None, True, ("blend",)),
}


def extract_all(row, work: Path) -> Path:
    from pipeline.store.config import ExtractConfig
    from pipeline.store.extract import extract

    out = work / "stores" / f"{row.name}.h5"
    if not out.exists():
        extract(ExtractConfig(data=row.make(work, row.name), out=out, layers=("all",), progress=False))
    return out


def _train(kind: str, X, y, normalise, seed: int, groups):
    """The saved model's way: blocks, C (and the kind's variant) chosen on the inner folds; (model, inner score,
    hyper)."""
    from pipeline.linear import blocks, cv
    from pipeline.linear.models import fit_with_C

    normalise = blocks.resolve(normalise, X, y, seed)
    hyper, inner = cv.tune_C(kind, X, y, normalise, None, seed, groups)
    if isinstance(normalise, blocks.Blocks):
        hyper["blocks"] = list(normalise.kept())
    return fit_with_C(kind, hyper, X, y, normalise, None, groups), inner, hyper


def measure(row, seed: int, work: Path) -> dict:
    from pipeline.linear.blocks import Blocks
    from pipeline.linear.classify import split_test
    from pipeline.linear.duplicates import store_groups, subset
    from pipeline.store.reader import read_store

    store = read_store(extract_all(row, work))
    every = "+".join(store.layers)
    y = store.labels
    groups, _ = store_groups(store)
    train, test = split_test(y, 0.2, seed, groups)
    case = {"row": row.name, "seed": seed, "images": len(y), "held_out": len(test), "options": {}}
    for name, (layer, weighed, kinds) in OPTIONS.items():
        layer = layer or every
        X = store.codes(layer)
        normalise = Blocks(store.widths(layer), tuple(layer.split("+"))) if weighed else "power"
        started = time.perf_counter()
        fits = [(kind, *_train(kind, X[train], y[train], normalise, seed, subset(groups, train))) for kind in kinds]
        kind, model, inner, hyper = max(fits, key=lambda f: f[2])
        right = model.predict(X[test]) == y[test]
        case["options"][name] = {"kind": kind, "hyper": hyper, "inner": inner, "accuracy": float(right.mean()),
                                 "right": right.astype(int).tolist(), "seconds": time.perf_counter() - started}
        print(f"  {row.name} seed {seed} {name}: {kind} {right.mean():.3f} ({time.perf_counter() - started:.0f} s)",
              flush=True)
    return case


def run_cases(rows, seeds, work: Path) -> None:
    path = work / "cases.jsonl"
    done = {(c["row"], c["seed"]) for c in map(json.loads, path.read_text().splitlines())} if path.exists() else set()
    for seed in seeds:
        for row in rows:
            if (row.name, seed) not in done:
                case = measure(row, seed, work)
                with path.open("a") as f:
                    f.write(json.dumps(case) + "\n")


def report(work: Path) -> None:
    cases = [json.loads(line) for line in (work / "cases.jsonl").read_text().splitlines()]
    names = list(OPTIONS)
    rows = list(dict.fromkeys(c["row"] for c in cases))
    print("| set | images | seeds | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    means = {n: [] for n in names}
    for row in rows:
        mine = [c for c in cases if c["row"] == row]
        cells = []
        for n in names:
            acc = np.mean([c["options"][n]["accuracy"] for c in mine])
            means[n].append(acc)
            if n == "today":
                cells.append(f"{acc:.3f}")
                continue
            diffs = [paired_difference(c["options"]["today"]["right"], c["options"][n]["right"], level=0.95,
                                       seed=c["seed"]) for c in mine]
            per_seed = ", ".join(f"{d.difference:+.3f} [{d.interval[0]:+.3f}, {d.interval[1]:+.3f}]" for d in diffs)
            cells.append(f"{acc:.3f} ({per_seed})")
        print(f"| {row} | {mine[0]['images']} | {len(mine)} | " + " | ".join(cells) + " |")
    print("| mean over rows | | | " + " | ".join(f"{np.mean(means[n]):.3f}" for n in names) + " |")
    big = [c for c in cases if c["images"] >= 2500]
    if big:
        print("\nfit minutes on the rows of 2,500 images or more (mean per case): " + ", ".join(
            f"{n} {np.mean([c['options'][n]['seconds'] for c in big]) / 60:.2f}" for n in names))
    picks = {}
    for c in cases:
        for b in c["options"]["all as blocks"]["hyper"].get("blocks", []):
            picks[b] = picks.get(b, 0) + 1
    print(f"blocks kept (all as blocks, {len(cases)} cases): " + ", ".join(f"{b} {n}" for b, n in picks.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--only", nargs="+", help="rows by name")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/codes_table"))
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.only or r.name in args.only]
    if args.command == "run":
        run_cases(rows, args.seeds, args.work)
    else:
        report(args.work)


if __name__ == "__main__":
    main()
