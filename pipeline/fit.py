"""The fit stage as a whole: store(s) in, cross-validated figures, metrics.json and bundles out."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from . import classify, regress
from .bundle import Bundle, save_bundle
from .errors import UserError
from .provenance import library_versions, now_iso
from .store import read_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """Settings of one fit run; the defaults are what ``scripts/fit_svm.py`` uses."""

    store: Path
    out: Path
    classifiers: tuple[str, ...] = classify.CLASSIFIERS
    layers: tuple[str, ...] | None = None
    normalise: str = "standard"
    folds: int = 5
    repeats: int | None = None
    class_weight: str | None = None
    test_size: float | None = None
    test_store: Path | None = None
    test_paths: tuple[str, ...] | None = None
    seed: int = 0
    jobs: int | None = None


def fit(cfg: FitConfig) -> dict:
    """Cross-validate, refit, save one bundle per classifier and ``metrics.json``; returns the metrics."""
    started = time.perf_counter()
    for kind in cfg.classifiers:
        classify.make_classifier(kind, 1.0, cfg.normalise)  # validates the names early
    if cfg.folds < 2:
        raise UserError("--folds must be at least 2")
    store = read_store(cfg.store)
    layers = list(cfg.layers or store.layers)
    X = {layer: store.codes(layer) for layer in layers}
    if store.labels is None and store.targets is not None:
        return _fit_regression(cfg, store, X, started)
    y, names = store.labels, store.class_names
    for layer in layers:
        classify.check_training_data(X[layer], y, names or [], str(cfg.store))

    test = None
    if sum(t is not None for t in (cfg.test_store, cfg.test_size, cfg.test_paths)) > 1:
        raise UserError("give one of --test-size and --test, not both")
    if cfg.test_size is not None or cfg.test_paths is not None:
        if cfg.test_paths is not None:
            held_out = set(cfg.test_paths)
            test_idx = np.array([i for i, p in enumerate(store.paths) if p in held_out], dtype=int)
            train_idx = np.array([i for i, p in enumerate(store.paths) if p not in held_out], dtype=int)
        else:
            train_idx, test_idx = classify.split_test(y, cfg.test_size, cfg.seed)
        test = ({layer: X[layer][test_idx] for layer in layers}, y[test_idx], f"{len(test_idx)} held-out images")
        X, y = {layer: X[layer][train_idx] for layer in layers}, y[train_idx]
        for layer in layers:
            classify.check_training_data(X[layer], y, names, f"{cfg.store} without its test split")
    elif cfg.test_store is not None:
        test_store = read_store(cfg.test_store)
        test = ({layer: test_store.codes(layer) for layer in layers},
                classify.align_test_store(store, test_store), str(cfg.test_store))

    results, protocol = classify.cross_validate(
        X, y, names, cfg.classifiers, cfg.folds, cfg.repeats, cfg.normalise, cfg.class_weight, cfg.seed, cfg.jobs)
    best = max(results, key=lambda r: r["accuracy"]["mean"])
    cfg.out.mkdir(parents=True, exist_ok=True)
    layer_of = {kind: max((r for r in results if r["classifier"] == kind),
                          key=lambda r: r["accuracy"]["mean"])["layer"] for kind in cfg.classifiers}
    refits = Parallel(n_jobs=min(len(cfg.classifiers), cfg.jobs or os.cpu_count() or 1))(
        delayed(classify.fit_final)(kind, X[layer_of[kind]], y, cfg.normalise, cfg.class_weight, cfg.seed)
        for kind in cfg.classifiers)
    final = {}
    for kind, (model, C) in zip(cfg.classifiers, refits):
        layer = layer_of[kind]
        mine = next(r for r in results if r["classifier"] == kind and r["layer"] == layer)
        entry = {"layer": layer, "C": C, "bundle": f"{kind}.joblib"}
        if test is not None:
            entry["test"] = {"data": test[2], **classify.test_metrics(model, test[0][layer], test[1], names)}
        save_bundle(Bundle(
            estimator=model, classifier=kind, layer=layer, class_names=list(names),
            store_config=store.config.to_json(), weights_source=str(store.attrs.get("weights_source", "")),
            C=C, normalise=cfg.normalise, metrics={"cross_validation": mine, **entry},
            versions=library_versions(), created=now_iso(),
        ), cfg.out / entry["bundle"])
        final[kind] = entry

    counts = np.bincount(store.labels, minlength=len(names))
    metrics = {
        "store": str(cfg.store), "run_dir": str(cfg.out), "backbone": store.config.backbone,
        "weights_checksum": store.config.weights_checksum,
        "images": int(len(store)), "classes": len(names), "class_names": list(names),
        "class_counts": {n: int(c) for n, c in zip(names, counts)},
        "protocol": asdict(protocol), "results": results,
        "best": {"layer": best["layer"], "classifier": best["classifier"]},
        "final": final, "seconds": time.perf_counter() - started,
        "versions": library_versions(), "created": now_iso(),
    }
    (cfg.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _fit_regression(cfg: FitConfig, store, X: dict, started: float) -> dict:
    """Ridge on a numeric target: nested CV (R², MAE), one bundle on the best layer."""
    y = store.targets
    if cfg.test_store is not None:
        raise UserError("--test with a separate store is for classification; use --test-size for regression")
    train_idx, test_idx = np.arange(len(y)), np.array([], dtype=int)
    if cfg.test_paths is not None:
        held_out = set(cfg.test_paths)
        test_idx = np.array([i for i, p in enumerate(store.paths) if p in held_out], dtype=int)
        train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    elif cfg.test_size is not None:
        rng = np.random.default_rng(cfg.seed)
        test_idx = np.sort(rng.choice(len(y), size=max(1, round(cfg.test_size * len(y))), replace=False))
        train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    for codes in X.values():
        regress.check_targets(codes[train_idx], y[train_idx], cfg.folds, str(cfg.store))
    results, protocol = regress.cross_validate_regression(
        {layer: codes[train_idx] for layer, codes in X.items()}, y[train_idx], cfg.folds, cfg.repeats,
        cfg.normalise, cfg.seed, cfg.jobs)
    best = max(results, key=lambda r: r["r2"]["mean"])
    layer = best["layer"]
    model = regress.make_regressor(cfg.normalise).fit(X[layer][train_idx], y[train_idx])
    alpha = float(model.named_steps["clf"].alpha_)
    entry = {"layer": layer, "C": 1 / alpha, "alpha": alpha, "bundle": "ridge.joblib"}
    if len(test_idx):
        entry["test"] = {"data": f"{len(test_idx)} held-out images",
                         **regress.test_metrics(model, X[layer][test_idx], y[test_idx])}
    cfg.out.mkdir(parents=True, exist_ok=True)
    save_bundle(Bundle(
        estimator=model, classifier="ridge", layer=layer, class_names=[], store_config=store.config.to_json(),
        weights_source=str(store.attrs.get("weights_source", "")), C=1 / alpha, normalise=cfg.normalise,
        metrics={"cross_validation": best, **entry}, versions=library_versions(), created=now_iso(),
    ), cfg.out / entry["bundle"])
    metrics = {
        "task": "regression", "store": str(cfg.store), "run_dir": str(cfg.out), "backbone": store.config.backbone,
        "weights_checksum": store.config.weights_checksum, "images": int(len(y)),
        "target": {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()), "max": float(y.max())},
        "protocol": asdict(protocol), "results": results, "best": {"layer": layer, "classifier": "ridge"},
        "final": {"ridge": entry}, "seconds": time.perf_counter() - started,
        "versions": library_versions(), "created": now_iso(),
    }
    (cfg.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _format_regression(metrics: dict) -> str:
    p = metrics["protocol"]
    lines = [f"{metrics['images']} images, numeric target (mean {metrics['target']['mean']:.3g}, "
             f"sd {metrics['target']['std']:.3g}), backbone {metrics['backbone']}",
             f"nested CV: {p['outer_folds']}-fold x {p['repeats']} repeat(s), alpha chosen by {p['inner']}", "",
             f"{'layer':14} {'model':8} {'R2':>7}  {'95% interval':17} {'MAE':>9}"]
    for r in sorted(metrics["results"], key=lambda r: -r["r2"]["mean"]):
        lines.append(f"{r['layer']:14} {'ridge':8} {r['r2']['mean']:7.3f}  [{r['r2']['ci95'][0]:.3f}, "
                     f"{r['r2']['ci95'][1]:.3f}]  {r['mae']['mean']:9.4g}")
    entry = metrics["final"]["ridge"]
    line = f"\nsaved {Path(metrics['run_dir']) / entry['bundle']} ({entry['layer']}, alpha={entry['alpha']:g})"
    if "test" in entry:
        line += f"; test on {entry['test']['data']}: R2 {entry['test']['r2']:.3f}, MAE {entry['test']['mae']:.4g}"
    lines += [line, f"time: {metrics['seconds']:.1f} s"]
    return "\n".join(lines)


def format_metrics(metrics: dict) -> str:
    """The human-readable summary printed by ``fit_svm.py`` (the same figures as metrics.json)."""
    if metrics.get("task") == "regression":
        return _format_regression(metrics)
    p = metrics["protocol"]
    lines = [
        f"{metrics['images']} images, {metrics['classes']} classes, backbone {metrics['backbone']}",
        f"nested CV: {p['outer_folds']}-fold x {p['repeats']} repeat(s), C chosen by {p['inner']} "
        f"(seed {p['seed']})",
        *[f"note: {n}" for n in p["notes"]],
        "",
        f"{'layer':14} {'classifier':10} {'accuracy':>8}  {'95% interval':15} {'macro-F1':>8}  {'C (most chosen)':15}",
    ]
    for r in sorted(metrics["results"], key=lambda r: -r["accuracy"]["mean"]):
        acc, f1 = r["accuracy"], r["macro_f1"]
        lines.append(
            f"{r['layer']:14} {r['classifier']:10} {acc['mean']:8.3f}  "
            f"[{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}]  {f1['mean']:8.3f}  {next(iter(r['chosen_C'])):15}"
        )
    best = metrics["best"]
    lines.append(f"\nbest: {best['classifier']} on {best['layer']}")
    for entry in metrics["final"].values():
        line = f"saved {Path(metrics['run_dir']) / entry['bundle']} ({entry['layer']}, C={entry['C']:g})"
        if "test" in entry:
            t = entry["test"]
            line += f"; test on {t['data']}: accuracy {t['accuracy']:.3f}, macro-F1 {t['macro_f1']:.3f}"
        lines.append(line)
    lines.append(f"time: {metrics['seconds']:.1f} s")
    return "\n".join(lines)
