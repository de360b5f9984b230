"""The escalation checked against outcomes: every row of the advisor table run both ways, three seeds each.

    python benchmarks/advisor_table.py run [--only NAME ...] [--seeds 0 1 2] [--work DIR]
    python benchmarks/advisor_table.py report [--work DIR]

``run`` runs ``run.py``'s pipeline with its defaults (``--finetune auto``) on
each set-and-size row and seed (the seed fixes run.py's held-out split), then
whatever auto did not: the pilot where the set was small, the full fine-tune
where the decision was linear, so every case has both outcomes on the same
held-out images. Each case is appended to ``WORK/cases.jsonl`` as it ends (a
rerun skips the cases there); seeds after the first reuse the first's feature
store. ``report`` prints the table: per row the winner with its paired 95%
interval, the heuristic's, the pilot's and the decision's verdicts, the cheap
scores, the minutes; then the regret of three policies (the heuristic alone,
the pilot alone, heuristic + pilot): held-out accuracy lost against the better
strategy, and minutes spent on fine-tuning that bought nothing. The heuristic's
thresholds are refitted leaving each row out and scored on that row only.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "data")]

from fetch_data import (  # noqa: E402
    fetch_digits,
    fetch_fashion_mnist,
    fetch_mnist,
    fetch_tuxpaint,
    first_per_class,
)
from make_sets import make_cells, make_clipart, make_glyphs  # noqa: E402

from pipeline.escalate.decide import decide  # noqa: E402
from pipeline.escalate.pilot import EPOCHS, PilotResult  # noqa: E402
from pipeline.escalate.rule import SIMILAR_DIVERGENCE, SMALL_IMAGES, SMALL_MEDIAN_CLASS, Strategy  # noqa: E402
from pipeline.metrics import PairedDifference, paired_difference  # noqa: E402


@dataclass(frozen=True)
class Row:
    name: str
    make: Callable[[Path, str], Path]  # (the work folder, the row's name) -> the image folder
    flip: bool  # whether a mirror keeps the class


def _subset(fetch, per_class: int):
    return lambda work, name: first_per_class(fetch(), per_class, work / "data" / name)


ROWS = (
    Row("tuxpaint", lambda work, name: fetch_tuxpaint(), True),
    Row("clipart_600", lambda work, name: make_clipart(86, work / "data" / name), True),
    Row("clipart_2520", lambda work, name: make_clipart(360, work / "data" / name), True),
    Row("fashion_mnist_300", _subset(fetch_fashion_mnist, 30), True),
    Row("fashion_mnist_3000", _subset(fetch_fashion_mnist, 300), True),
    Row("mnist_300", _subset(fetch_mnist, 30), False),
    Row("mnist_3000", _subset(fetch_mnist, 300), False),
    Row("digits", lambda work, name: fetch_digits(), False),
    Row("glyphs_500", lambda work, name: make_glyphs(50, work / "data" / name), False),
    Row("glyphs_3000", lambda work, name: make_glyphs(300, work / "data" / name), False),
    Row("glyphs_cluttered_3000", lambda work, name: make_glyphs(300, work / "data" / name, clutter=True), False),
    Row("cells_3000", lambda work, name: make_cells(500, work / "data" / name), True),
)


def _linear_right(store, candidate, rows: np.ndarray) -> np.ndarray:
    from pipeline.linear import tta
    from pipeline.linear.bundle import load_bundle

    bundle = load_bundle(candidate.model)
    predicted = tta.predict(bundle.estimator, tta.using(store.view_codes(bundle.layer, rows), bundle.views))
    return predicted == store.labels[rows]


def _tuned_right(store, finetuned, rows: np.ndarray) -> np.ndarray:
    as_store = np.array([list(store.class_names).index(n) for n in finetuned.class_names])
    predicted = as_store[[int(np.argmax(finetuned.test_outputs[store.paths[i]])) for i in rows]]
    return predicted == store.labels[rows]


def measure(row: Row, seed: int, work: Path) -> dict:
    """One case: run.py's defaults on ``row`` at ``seed``, then whatever they left out."""
    from pipeline.escalate.config import RunConfig
    from pipeline.escalate.pilot import run_pilot
    from pipeline.escalate.run import finetune_config, finetuned_candidate, run
    from pipeline.linear.classify import split_test
    from pipeline.store.reader import read_store

    data = row.make(work, row.name)
    out = work / "runs" / row.name / f"seed{seed}"
    first = work / "runs" / row.name / "seed0" / "features.h5"
    if seed and first.exists() and not (out / "features.h5").exists():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(first, out / "features.h5")
    cfg = RunConfig(data=data, out=out, flip=row.flip, seed=seed, progress=False)
    started = time.perf_counter()
    result = run(cfg)
    run_seconds = time.perf_counter() - started
    store = read_store(out / "features.h5")
    test_rows = np.sort(split_test(store.labels, cfg.test_size, seed)[1])
    ft = finetune_config(cfg, result.proposal, tuple(store.paths[i] for i in test_rows))
    pilot = result.pilot or run_pilot(ft, store, result.fit)
    tuned, finetuned = ((next(c for c in result.candidates if c.name == "fine-tuned network"), result.finetuned)
                        if result.finetuned else finetuned_candidate(ft))
    linear = max((c for c in result.candidates if c.name != "fine-tuned network"),
                 key=lambda c: (c.test_accuracy, c.test_macro_f1))
    test = paired_difference(_linear_right(store, linear, test_rows), _tuned_right(store, finetuned, test_rows),
                             level=0.95, seed=seed)
    a = result.advice
    return {"row": row.name, "seed": seed, "images": a.images, "classes": a.classes, "median_class": a.median_class,
            "divergence": a.divergence, "proposal": result.proposal.name,
            "cheap": {k: v.to_json() for k, v in result.transferability.items()},
            "pilot": pilot.to_json(),
            "decision": result.decision.to_json(), "linear": {"name": linear.name, "accuracy": linear.test_accuracy,
                                                              "minutes": linear.seconds / 60},
            "tuned": {"accuracy": tuned.test_accuracy, "minutes": tuned.seconds / 60}, "test": test.to_json(),
            "run_minutes": run_seconds / 60}


def run_cases(rows, seeds, work: Path) -> None:
    path = work / "cases.jsonl"
    done = set()
    if path.exists():
        done = {(c["row"], c["seed"]) for c in map(json.loads, path.read_text().splitlines())}
    for seed in seeds:
        for row in rows:
            if (row.name, seed) in done:
                continue
            case = measure(row, seed, work)
            with path.open("a") as f:
                f.write(json.dumps(case) + "\n")
            print(f"{row.name} seed {seed}: linear {case['linear']['accuracy']:.3f}, fine-tuned "
                  f"{case['tuned']['accuracy']:.3f}, pilot {case['pilot']['verdict']}, decision "
                  f"{'fine-tune' if case['decision']['finetune'] else 'linear'}, run.py {case['run_minutes']:.1f} min",
                  flush=True)


def repilot(rows, seeds, epochs: int, work: Path) -> None:
    """Rerun the pilot of each finished case with ``epochs`` tail epochs (the full run's settings and the linear
    stage's choice as recorded), appending its verdict to ``WORK/pilots_EPOCHS.jsonl``."""
    from types import SimpleNamespace

    from pipeline.escalate import pilot as pilot_module
    from pipeline.escalate.config import RunConfig
    from pipeline.escalate.run import finetune_config
    from pipeline.linear.classify import split_test
    from pipeline.store.reader import read_store

    path, done = work / f"pilots_{epochs}.jsonl", set()
    if path.exists():
        done = {(c["row"], c["seed"]) for c in map(json.loads, path.read_text().splitlines())}
    pilot_module.EPOCHS = epochs
    cases = [json.loads(line) for line in (work / "cases.jsonl").read_text().splitlines()]
    for case in cases:
        row = next(r for r in rows if r.name == case["row"])
        if case["seed"] not in seeds or (row.name, case["seed"]) in done:
            continue
        out = work / "runs" / row.name / f"seed{case['seed']}"
        cfg = RunConfig(data=row.make(work, row.name), out=out, flip=row.flip, seed=case["seed"], progress=False)
        store = read_store(out / "features.h5")
        test_rows = np.sort(split_test(store.labels, cfg.test_size, case["seed"])[1])
        ft = finetune_config(cfg, Strategy[case["proposal"]], tuple(store.paths[i] for i in test_rows))
        recorded = json.loads((out / "linear" / "metrics.json").read_text())
        kind = recorded["best"]["classifier"]
        final = recorded["final"][kind]
        fitted = SimpleNamespace(best=SimpleNamespace(classifier=kind), final={kind: SimpleNamespace(
            layer=final["layer"], hyper={"C": final["C"]}, class_weight=final.get("class_weight"))})
        result = pilot_module.run_pilot(ft, store, fitted)
        with path.open("a") as f:
            f.write(json.dumps({"row": row.name, "seed": case["seed"], "pilot": result.to_json()}) + "\n")
        print(f"{row.name} seed {case['seed']}: pilot at {epochs} epochs {result.verdict} "
              f"({result.comparison.difference:+.3f}), {result.seconds / 60:.1f} min", flush=True)


# The report: everything below reads cases.jsonl (and pilots_N.jsonl) only.

def _pilot(case: dict) -> PilotResult:
    p = case["pilot"]
    c = {**p["comparison"], "interval": tuple(p["comparison"]["interval"])}
    return PilotResult(PairedDifference(**c), p["linear"], p["mode"], p["seconds"], p["full_minutes"])


def _proposal(case: dict, small_images: float, far: float) -> Strategy:
    """The heuristic's situation under the given size and far thresholds (similar and median-class ones as the
    library's)."""
    small = case["images"] < small_images or case["median_class"] < SMALL_MEDIAN_CLASS
    return Strategy.for_situation(small, case["divergence"] < SIMILAR_DIVERGENCE, case["divergence"] >= far)


def _library_small(case: dict) -> bool:
    return case["images"] < SMALL_IMAGES or case["median_class"] < SMALL_MEDIAN_CLASS


def _won(case: dict) -> bool:
    return case["tuned"]["accuracy"] > case["linear"]["accuracy"]  # a tie counts for linear


def _outcome(case: dict, finetunes: bool, piloted: bool) -> tuple[float, float]:
    """(points of held-out accuracy lost against the better strategy, minutes spent on fine-tuning for nothing)."""
    lin, tun = case["linear"]["accuracy"], case["tuned"]["accuracy"]
    got = max(lin, tun) if finetunes else lin
    spent = (case["pilot"]["seconds"] / 60 if piloted else 0) + (case["tuned"]["minutes"] if finetunes else 0)
    return 100 * (max(lin, tun) - got), 0.0 if finetunes and _won(case) else spent


def _fit_heuristic(cases: list[dict]) -> tuple[float, float]:
    """The size and far thresholds with the fewest wrong calls on ``cases`` (ties: the least accuracy lost, then
    the most conservative, i.e. the largest thresholds)."""
    sizes = sorted({c["images"] for c in cases} | {np.inf})
    fars = sorted({round(c["divergence"], 3) for c in cases} | {np.inf})
    best = None
    for s in sizes:
        for f in fars:
            calls = [(_proposal(c, s, f).finetunes, c) for c in cases]
            wrong = sum(ft != _won(c) for ft, c in calls)
            lost = sum(_outcome(c, ft, False)[0] for ft, c in calls)
            key = (wrong, lost, -s, -f)
            best = min(best, (key, s, f)) if best else (key, s, f)
    return best[1], best[2]


LIBRARY = "run.py's decision (its pilot, the rule's thresholds from the earlier six rows)"


def _policies(cases: list[dict], pilots: dict | None = None, label: str = ""
              ) -> dict[str, list[tuple[bool, bool, dict]]]:
    """Each policy's (fine-tunes, ran a pilot, case) per case, the heuristic refitted without the case's row;
    ``pilots``: (row, seed) -> another pilot's record to read instead of the case's own."""
    out: dict[str, list] = {"heuristic alone": [], f"pilot{label} alone": [], f"heuristic + pilot{label}": [],
                            LIBRARY: []}
    for case in cases:
        s, f = _fit_heuristic([c for c in cases if c["row"] != case["row"]])
        if pilots:  # the other pilot's evidence and cost
            case = {**case, "pilot": pilots[case["row"], case["seed"]]["pilot"]}
        proposal = _proposal(case, s, f)
        small = case["images"] < s or case["median_class"] < SMALL_MEDIAN_CLASS
        pilot = _pilot(case)
        out["heuristic alone"].append((proposal.finetunes, False, case))
        out[f"pilot{label} alone"].append((pilot.verdict == "ahead", True, case))
        out[f"heuristic + pilot{label}"].append((decide(proposal, None if small else pilot).finetune, not small,
                                                 case))
        out[LIBRARY].append((case["decision"]["finetune"], not _library_small(case), case))
    return out


def _verdict(pilot: dict) -> str:
    c = pilot["comparison"]
    return f"{pilot['verdict']} ({c['difference']:+.3f} [{c['interval'][0]:+.3f}, {c['interval'][1]:+.3f}])"


def _row_table(cases: list[dict]) -> None:
    """Per row over its seeds: the mean held-out gain of fine-tuning, the seeds it won and won clearly, the
    heuristic's proposal, each seed's pilot verdict and decision, the mean minutes."""
    print("| set | images | divergence | seeds | fine-tuned - linear (mean; per seed) | fine-tuning won (clearly) | "
          "heuristic | pilot per seed | decision per seed | run.py min (mean) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(c["row"] for c in cases):
        row = sorted((c for c in cases if c["row"] == name), key=lambda c: c["seed"])
        diffs = [c["test"]["difference"] for c in row]
        clear = sum(c["test"]["interval"][0] > 0 for c in row)
        print(f"| {name} | {row[0]['images']} | {np.mean([c['divergence'] for c in row]):.3f} | {len(row)} | "
              f"{np.mean(diffs):+.3f}; {', '.join(f'{d:+.3f}' for d in diffs)} | {sum(map(_won, row))} ({clear}) | "
              f"{Strategy[row[0]['proposal']].value} | {', '.join(c['pilot']['verdict'] for c in row)} | "
              f"{', '.join('fine-tune' if c['decision']['finetune'] else 'linear' for c in row)} | "
              f"{np.mean([c['run_minutes'] for c in row]):.1f} |")


def _case_table(cases: list[dict]) -> None:
    print("| set | seed | images | divergence | winner (fine-tuned - linear, 95% interval) | heuristic | pilot "
          "(difference, 90% interval) | decision | k-NN / LogME (best layer) | linear min | pilot min | "
          "fine-tune min (estimated) | run.py min |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        t, p = c["test"], c["pilot"]
        knn = max(c["cheap"].values(), key=lambda s: s["knn_accuracy"])
        logme = max(v["logme"] for v in c["cheap"].values())
        winner = "fine-tune" if _won(c) else "linear"
        print(f"| {c['row']} | {c['seed']} | {c['images']} | {c['divergence']:.3f} | {winner} "
              f"({t['difference']:+.3f} [{t['interval'][0]:+.3f}, {t['interval'][1]:+.3f}]) | "
              f"{Strategy[c['proposal']].value} | {_verdict(p)} | "
              f"{'fine-tune' if c['decision']['finetune'] else 'linear'} | {knn['knn_accuracy']:.3f} / {logme:.2f} | "
              f"{c['linear']['minutes']:.1f} | {p['seconds'] / 60:.1f} | {c['tuned']['minutes']:.1f} "
              f"({p['full_minutes']:.1f}) | {c['run_minutes']:.1f} |")


def _regret(policies: dict) -> None:
    print("| policy | wrong calls | of them clear (the winner's interval excludes 0) | accuracy lost, points "
          "(mean, worst) | minutes for nothing (total) |")
    print("|---|---|---|---|---|")
    for name, calls in policies.items():
        outcomes = [_outcome(c, ft, piloted) for ft, piloted, c in calls]
        wrong = [c for ft, _, c in calls if ft != _won(c)]
        clear = sum(c["test"]["interval"][0] > 0 or c["test"]["interval"][1] < 0 for c in wrong)
        lost = [o[0] for o in outcomes]
        print(f"| {name} | {len(wrong)} of {len(calls)} | {clear} | {np.mean(lost):.2f}, {max(lost):.1f} | "
              f"{sum(o[1] for o in outcomes):.1f} |")


def report(work: Path) -> None:
    cases = [json.loads(line) for line in (work / "cases.jsonl").read_text().splitlines()]
    cases.sort(key=lambda c: ([r.name for r in ROWS].index(c["row"]), c["seed"]))
    _row_table(cases)
    print()
    _case_table(cases)
    print()
    _regret(_policies(cases))
    for path in sorted(work.glob("pilots_*.jsonl")):
        epochs = path.stem.split("_")[1]
        pilots = {(p["row"], p["seed"]): p for p in map(json.loads, path.read_text().splitlines())}
        subset = [c for c in cases if (c["row"], c["seed"]) in pilots]
        print(f"\nThe {len(subset)} cases with a {epochs}-epoch pilot beside run.py's {EPOCHS}-epoch one:")
        print(f"\n| set | seed | pilot, {EPOCHS} epochs | pilot, {epochs} epochs | pilot minutes ({EPOCHS}, {epochs}) |"
              "\n|---|---|---|---|---|")
        for c in subset:
            p = pilots[c["row"], c["seed"]]["pilot"]
            before = c["pilot"]
            print(f"| {c['row']} | {c['seed']} | {_verdict(before)} | {_verdict(p)} | {before['seconds'] / 60:.1f}, "
                  f"{p['seconds'] / 60:.1f} |")
        print()
        label = f" ({epochs} epochs)"
        _regret({**_policies(subset), **{k: v for k, v in _policies(subset, pilots, label).items() if label in k}})
    print()
    _cheap_report(cases)


def _loo_threshold_calls(cases: list[dict], score: Callable[[dict], float]) -> int:
    """Right calls of "fine-tune when the score is below t", t refitted without each case's row."""
    right = 0
    for case in cases:
        others = [c for c in cases if c["row"] != case["row"]]
        ts = sorted({score(c) for c in others}) + [np.inf]
        t = max(ts, key=lambda t: (sum((score(c) < t) == _won(c) for c in others), -t))
        right += (score(case) < t) == _won(case)
    return right


def _cheap_report(cases: list[dict]) -> None:
    """How well the cheap scores (each at its best layer) order the strategies: as a threshold for the winner
    refitted leaving each row out, and by rank correlation with fine-tuning's gain over linear."""
    from scipy.stats import spearmanr

    knn = lambda c: max(s["knn_accuracy"] for s in c["cheap"].values())  # noqa: E731
    logme = lambda c: max(s["logme"] for s in c["cheap"].values())  # noqa: E731
    gain = [c["tuned"]["accuracy"] - c["linear"]["accuracy"] for c in cases]
    n = len(cases)
    for name, score in (("k-NN accuracy", knn), ("LogME", logme)):
        rho = spearmanr([score(c) for c in cases], gain).statistic
        print(f"{name}: fine-tune when below a left-out-row threshold: {_loo_threshold_calls(cases, score)} of {n} "
              f"calls right; Spearman correlation with fine-tuning's gain {rho:+.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("run", "repilot", "report"))
    p.add_argument("--pilot-epochs", type=int, default=8, help="repilot: the pilot's tail epochs")
    p.add_argument("--only", nargs="+", choices=[r.name for r in ROWS], help="rows to run (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "advisor_table")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = [r for r in ROWS if not args.only or r.name in args.only]
    if args.action == "run":
        run_cases(rows, args.seeds, args.work)
    elif args.action == "repilot":
        repilot(rows, args.seeds, args.pilot_epochs, args.work)
    else:
        report(args.work)


if __name__ == "__main__":
    main()
