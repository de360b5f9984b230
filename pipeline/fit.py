"""The fit stage: store(s) in, cross-validated figures, metrics.json and bundles out.

Classification (a linear SVM and a softmax) and regression (ridge on a numeric
target) share one flow; a :class:`Task` holds what differs between them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from joblib import Parallel, delayed

from . import classify, regress, stream_fit, tta
from .reject import DEFAULT_RATE, check_rate, reject_rule
from .bundle import Bundle, replace_folder, save_bundle
from .duplicates import DEFAULT_THRESHOLD, duplicate_sets, store_groups, subset
from .errors import UserError
from .provenance import library_versions, now_iso
from .results import CVResult, FinalModel, Protocol
from .layer_sets import JOIN, default_candidates
from .store import FeatureStore, read_store

log = logging.getLogger(__name__)

_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "r2": "R2", "mae": "MAE"}


@dataclass(frozen=True)
class FitConfig:
    """Settings of one fit run; the defaults are the command line's."""

    store: Path
    out: Path
    classifiers: tuple[str, ...] = classify.CLASSIFIERS
    layers: tuple[str, ...] | None = None
    normalise: str | None = None  # pipeline.scaling; None: the task's own (power for classifiers, standard for ridge)
    folds: int = 5
    repeats: int | None = None
    class_weight: str | None = "auto"  # auto: none and balanced compete when the classes differ 1.5x; none; balanced
    views: str = "auto"  # the store's views of each image (pipeline.tta): auto compares with and without; on; off
    test_size: float | None = None
    test_store: Path | None = None
    test_paths: tuple[str, ...] | None = None
    seed: int = 0
    jobs: int | None = None
    max_memory: int | None = None  # bytes of codes above which the fit streams (default: a quarter of memory)
    reject_rate: float = DEFAULT_RATE  # share of known images the saved "unknown" threshold rejects
    duplicate_threshold: float | None = DEFAULT_THRESHOLD  # near-duplicates stay in one fold; None: not looked for


def _classifiers(cfg: FitConfig) -> tuple[str, ...]:
    for kind in cfg.classifiers:
        classify.make_classifier(kind, 1.0, cfg.normalise)  # validates the names before any work
    return tuple(cfg.classifiers)


def _ridge(cfg: FitConfig) -> tuple[str, ...]:
    if cfg.test_store is not None:
        raise UserError("a separate test store is for classification; hold out a fraction for regression",
                        param="test_store")
    return ("ridge",)


def _class_counts(store: FeatureStore, y) -> dict:
    counts = np.bincount(y, minlength=len(store.class_names))
    return {"classes": len(store.class_names), "class_names": list(store.class_names),
            "class_counts": {n: int(c) for n, c in zip(store.class_names, counts)}}


def _target_statistics(store: FeatureStore, y) -> dict:
    return {"target": {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()), "max": float(y.max())}}


@dataclass(frozen=True)
class Task:
    """What differs between classifying (labels) and regressing (numeric targets); :func:`fit`'s flow is one."""

    name: str
    kinds: Callable  # (cfg) -> model kinds, validated
    codes: Callable  # (store, layer) -> X: for a classifier, with the store's views (pipeline.tta)
    targets: Callable  # (store) -> y
    check: Callable  # (X, y, store, cfg, what) raises UserError
    split: Callable  # (y, test_size, seed, groups) -> (training rows, test rows)
    cross_validate: Callable  # (X_by_layer, y, store, cfg, groups) -> ([CVResult], Protocol)
    fit_final: Callable  # (candidate, X, y, cfg, groups, metric) -> (model, hyper-parameters)
    held_out: Callable  # (model, X, y, store, data) -> HeldOut
    describe: Callable  # (store, y) -> what metrics.json says of the data
    reject: Callable | None = None  # (candidate, X by layer, y, cfg, folds, groups) -> the "unknown" rule's figures
    normalise: str = "power"  # the default scaling of the codes (pipeline.scaling)


def _reject(candidate: CVResult, X: dict, y: np.ndarray, cfg: FitConfig, folds, groups) -> dict:
    """The "unknown" threshold of the saved model of ``candidate``, from out-of-fold probabilities of models made
    as it is, at the C nested cross-validation chose in each fold."""
    proba = classify.out_of_fold_proba(candidate.classifier, _codes(X, candidate), y, folds, cfg.normalise,
                                       candidate.class_weight, cfg.seed, cfg.jobs, candidate.fold_hyper[:len(folds)],
                                       groups)
    return reject_rule(y, proba, cfg.reject_rate).to_json()


def _codes(X: dict, candidate: CVResult) -> np.ndarray:
    """The codes ``candidate`` uses: its layer's, with or without the views."""
    return tta.using(X[candidate.layer], candidate.views)


CLASSIFICATION = Task(
    "classification", _classifiers, lambda store, layer: store.view_codes(layer), lambda store: store.labels,
    lambda X, y, store, cfg, what: classify.check_training_data(X, y, store.class_names or [], what),
    classify.split_test,
    lambda X, y, store, cfg, groups: classify.cross_validate(
        X, y, store.class_names, cfg.classifiers, cfg.folds, cfg.repeats, cfg.normalise,
        classify.class_weightings(y, cfg.class_weight), cfg.seed, cfg.jobs, groups,
        views=classify.view_options(store.views, cfg.views)),
    lambda c, X, y, cfg, groups, metric: classify.fit_final(c.classifier, X, y, cfg.normalise, c.class_weight,
                                                            cfg.seed, groups, metric),
    lambda model, X, y, store, data: classify.held_out(model, X, y, store.class_names, data), _class_counts,
    _reject)

REGRESSION = Task(
    "regression", _ridge, lambda store, layer: store.codes(layer), lambda store: store.targets,
    lambda X, y, store, cfg, what: regress.check_targets(X, y, cfg.folds, what),
    lambda y, test_size, seed, groups: regress.split_test(y, test_size, seed),  # groups: None, not looked for
    lambda X, y, store, cfg, groups: regress.cross_validate(X, y, cfg.folds, cfg.repeats, cfg.normalise, cfg.seed,
                                                            cfg.jobs),  # groups: None, not looked for
    lambda c, X, y, cfg, groups, metric: regress.fit_final(X, y, cfg.normalise),
    lambda model, X, y, store, data: regress.held_out(model, X, y, data), _target_statistics,
    normalise="standard")  # the power scaling was measured on classifiers only


def _kind(r: CVResult) -> str:
    return r.classifier + (" bal." if r.class_weight else "") + (f" +{'+'.join(r.views)}" if r.views else "")


@dataclass
class FitResult:
    """Everything the fit stage found and saved, as written to ``metrics.json``."""

    task: str
    store: str
    run_dir: str
    backbone: str
    weights_checksum: str
    images: int
    dataset: dict  # classes and their counts, or the target's statistics
    protocol: Protocol
    results: list[CVResult]
    best: CVResult
    final: dict[str, FinalModel]
    seconds: float
    versions: dict
    created: str
    duplicates: dict | None = None  # the groups kept inside one fold, and what grouping changed
    nested: CVResult | None = None  # the honest figure of choosing between the candidates inside each fold

    def to_json(self) -> dict:
        return {**({"task": self.task} if self.task != "classification" else {}),
                "store": self.store, "run_dir": self.run_dir, "backbone": self.backbone,
                "weights_checksum": self.weights_checksum, "images": self.images, **self.dataset,
                "protocol": asdict(self.protocol), "results": [r.to_json() for r in self.results],
                "best": {"layer": self.best.layer, "classifier": self.best.classifier,
                         **({"class_weight": self.best.class_weight} if self.best.class_weight else {}),
                         **({"views": list(self.best.views)} if self.best.views else {})},
                **({"nested_choice": self.nested.to_json()} if self.nested else {}),
                "final": {kind: m.to_json() for kind, m in self.final.items()}, "seconds": self.seconds,
                **({"duplicates": self.duplicates} if self.duplicates else {}),
                "versions": self.versions, "created": self.created}

    def format(self) -> str:
        """The human-readable summary (the same figures as metrics.json)."""
        p = self.protocol
        regression = self.task == "regression"
        first, second = ("r2", "mae") if regression else ("accuracy", "macro_f1")
        w = max(14, *(len(r.layer) for r in self.results))
        k = max(10, *(len(_kind(r)) for r in self.results))
        if regression:
            t = self.dataset["target"]
            head = [f"{self.images} images, numeric target (mean {t['mean']:.3g}, sd {t['std']:.3g}), "
                    f"backbone {self.backbone}",
                    f"nested CV: {p.outer_folds}-fold x {p.repeats} repeat(s), alpha chosen by {p.inner}"]
            columns = (f"{'layer':{w}} {'model':{k}} {'R2':>8}  {'95% interval':15} {'MAE':>8}  "
                       f"{'alpha (most chosen)':15}")
        else:
            how = (f"streamed fit: SGD on chunks, epochs and alpha chosen on {p.inner}" if p.outer_folds == 0 else
                   f"nested CV: {p.outer_folds}-fold x {p.repeats} repeat(s), C chosen by {p.inner}")
            head = [f"{self.images} images, {self.dataset['classes']} classes, backbone {self.backbone}",
                    f"{how} (seed {p.seed})"]
            columns = (f"{'layer':{w}} {'classifier':{k}} {'accuracy':>8}  {'95% interval':15} {'macro-F1':>8}  "
                       f"{'C (most chosen)' if p.outer_folds else 'alpha':15}")
        lines = [*head, *[f"note: {n}" for n in p.notes], "", columns]
        metric = p.metric if p.metric in self.best.scores else first
        for r in sorted(self.results, key=lambda r: -r.scores[metric].mean):
            a, b = r.scores[first], r.scores[second]
            lines.append(f"{r.layer:{w}} {_kind(r):{k}} {a.mean:8.3f}  [{a.ci95[0]:.3f}, {a.ci95[1]:.3f}]  "
                         f"{b.mean:{'8.4g' if regression else '8.3f'}}  {next(iter(r.chosen)):15}")
        if any(r.class_weight for r in self.results):
            lines.append("bal.: classes weighted inversely to their size")
        for views in dict.fromkeys(r.views for r in self.results if r.views):
            lines.append(f"+{'+'.join(views)}: trained on each image and its {'+'.join(views)} view too, predicted "
                         "on the mean of their probabilities")
        lines.append(f"\nbest: {self.best.name}" + ("" if metric == first else f" (by {_LABELS[metric]})"))
        if self.nested:
            a, b = self.nested.scores[first], self.nested.scores[second]
            picks = ", ".join(f"{name} {n}x" for name, n in self.nested.chosen.items())
            lines.append(f"chosen inside each outer fold instead (the honest figure of this choice): accuracy "
                         f"{a.mean:.3f} [{a.ci95[0]:.3f}, {a.ci95[1]:.3f}], macro-F1 {b.mean:.3f}; picked {picks}")
        if self.duplicates:
            d = self.duplicates
            kept = [f"{len(d['groups'])} near-duplicate group(s)"] + (
                [f"{d['manifest_groups']} manifest group(s)"] if d.get("manifest_groups") else [])
            lines.append(f"kept inside one fold: {', '.join(kept)}; best accuracy {d['accuracy_grouped']:.3f} "
                         f"grouped, {d['accuracy_ungrouped']:.3f} if they were not")
        for m in self.final.values():
            hyper = ", ".join(f"{k}={v:g}" for k, v in m.hyper.items())
            line = f"saved {Path(self.run_dir) / m.bundle} ({m.layer}, {hyper})"
            if m.test is not None:
                line += f"; test on {m.test.data}: " + ", ".join(
                    f"{_LABELS[name]} {value:.4g}" for name, value in m.test.scores.items())
            lines.append(line)
            if m.reject is not None and m.reject["threshold"] > 0:
                r = m.reject
                lines.append(f"  predict.py --reject: unknown under probability {r['threshold']:.3f}; out of fold "
                             f"it rejected {r['rejected']:.1%} of known images (accuracy on the rest "
                             f"{r['accuracy_kept']:.3f}, {r['accuracy_all']:.3f} on all)")
        lines.append(f"time: {self.seconds:.1f} s")
        return "\n".join(lines)


def _held_out_rows(task: Task, store: FeatureStore, y, cfg: FitConfig, groups=None):
    """(training rows, test rows) for ``--test-size`` (``groups`` on one side) or explicit test paths; None
    without either."""
    if cfg.test_paths is not None:
        held = set(cfg.test_paths)
        test = np.array([i for i, p in enumerate(store.paths) if p in held], dtype=int)
        return np.setdiff1d(np.arange(len(y)), test), test
    if cfg.test_size is not None:
        return task.split(y, cfg.test_size, cfg.seed, groups)
    return None


def fit(cfg: FitConfig) -> FitResult:
    """Cross-validate, refit, save one bundle per model kind and ``metrics.json``."""
    started = time.perf_counter()
    if cfg.folds < 2:
        raise UserError("must be at least 2", param="folds")
    check_rate(cfg.reject_rate)
    classify.check_class_weight(cfg.class_weight)
    classify.check_view_setting(cfg.views)
    if sum(t is not None for t in (cfg.test_store, cfg.test_size, cfg.test_paths)) > 1:
        raise UserError("give one way of testing: a test fraction, a test store or test paths", param="test_store")
    store = read_store(cfg.store)
    task = REGRESSION if store.labels is None and store.targets is not None else CLASSIFICATION
    cfg = replace(cfg, normalise=cfg.normalise or task.normalise)
    kinds = task.kinds(cfg)
    layers = list(cfg.layers or default_candidates(store.layers))
    budget = cfg.max_memory or stream_fit.default_max_memory()
    need = stream_fit.codes_bytes(store, layers)
    if need > budget:  # one stored layer, the last named
        return _streamed(cfg, task, store, layers[-1].split(JOIN)[-1], budget, need, started)
    X = {layer: task.codes(store, layer) for layer in layers}
    y = task.targets(store)
    for layer in layers:
        task.check(X[layer], y, store, cfg, str(cfg.store))

    groups, duplicates = (store_groups(store, None, cfg.duplicate_threshold) if task is CLASSIFICATION
                          else (None, None))
    test = None
    rows = _held_out_rows(task, store, y, cfg, groups)
    if rows is not None:
        train, held = rows
        test = ({layer: tta.rows(X[layer], held) for layer in layers}, y[held], f"{len(held)} held-out images")
        X, y = {layer: tta.rows(X[layer], train) for layer in layers}, y[train]
        groups, duplicates = subset(groups, train), subset(duplicates, train)
        for layer in layers:
            task.check(X[layer], y, store, cfg, f"{cfg.store} without its test split")
    elif cfg.test_store is not None:
        test_store = read_store(cfg.test_store)
        test = ({layer: task.codes(test_store, layer) for layer in layers},
                classify.align_test_store(store, test_store), str(cfg.test_store))

    results, protocol = task.cross_validate(X, y, store, cfg, groups)
    best = max(results, key=lambda r: r.scores[protocol.metric].mean)
    nested = classify.nested_choice(results, len(y), protocol.outer_folds)
    grouping = None
    if groups is not None:
        grouping = _grouping(cfg, store, rows, X, y, groups, duplicates, best, protocol)
    chosen = {kind: max((r for r in results if r.classifier == kind), key=lambda r: r.scores[protocol.metric].mean)
              for kind in kinds}
    refits = Parallel(n_jobs=min(len(kinds), cfg.jobs or os.cpu_count() or 1))(
        delayed(task.fit_final)(chosen[kind], _codes(X, chosen[kind]), y, cfg, groups, protocol.metric)
        for kind in kinds)
    rules = dict.fromkeys(kinds)
    if task.reject is not None:
        folds = classify.outer_folds(y, protocol.outer_folds, 1, cfg.seed, groups)  # the first repeat
        rules = {kind: task.reject(chosen[kind], X, y, cfg, folds, groups) for kind in kinds}
    final = {kind: FinalModel(chosen[kind].layer, hyper, f"{kind}.skops", None if test is None else
                              task.held_out(model, _codes(test[0], chosen[kind]), test[1], store, test[2]),
                              rules[kind], chosen[kind].class_weight, chosen[kind].views)
             for kind, (model, hyper) in zip(kinds, refits)}
    return _save(cfg, task, store, kinds, refits, final, chosen, protocol, results, best, started, grouping, nested)


def _grouping(cfg: FitConfig, store: FeatureStore, rows, X, y, groups, duplicates, best: CVResult,
              protocol) -> dict:
    """What keeping groups inside one fold did: the near-duplicate groups, how many the manifest named, and the
    best candidate's accuracy grouped and not (noted in the protocol too)."""
    sets = duplicate_sets(duplicates) if duplicates is not None else []
    paths = np.asarray(store.paths, dtype=object)[rows[0] if rows is not None else slice(None)]
    named = store.groups is not None and len({g for g in store.groups if g})
    if sets:
        protocol.notes.append(f"{len(sets)} group(s) of near-duplicate images ({sum(map(len, sets))} images) "
                              "kept inside one fold")
    if named:
        protocol.notes.append(f"the images of each of the manifest's {named} group(s) kept inside one fold")
    plain, _ = classify.cross_validate({best.layer: X[best.layer]}, y, store.class_names, (best.classifier,),
                                       cfg.folds, cfg.repeats, cfg.normalise, (best.class_weight,), cfg.seed,
                                       cfg.jobs, metric=protocol.metric, views=(best.views,))
    return {"threshold": cfg.duplicate_threshold, "groups": [paths[s].tolist() for s in sets],
            **({"manifest_groups": named} if named else {}),
            "accuracy_grouped": best.primary.mean, "accuracy_ungrouped": plain[0].primary.mean}



def _save(cfg: FitConfig, task: Task, store: FeatureStore, kinds, refits, final, chosen, protocol, results, best,
          started: float, duplicates: dict | None = None, nested: CVResult | None = None) -> FitResult:
    """The result, and the bundles, checksums and metrics.json, replaced together."""
    result = FitResult(task.name, str(cfg.store), str(cfg.out), store.config.backbone,
                       store.config.weights_checksum, int(len(store)), task.describe(store, task.targets(store)),
                       protocol, results, best, final, time.perf_counter() - started, library_versions(), now_iso(),
                       duplicates, nested)

    def write(folder: Path) -> None:
        for kind, (model, hyper) in zip(kinds, refits):
            save_bundle(Bundle(
                estimator=model, classifier=kind, layer=final[kind].layer, class_names=list(store.class_names or []),
                store_config=store.config.to_json(), weights_source=str(store.attrs.get("weights_source", "")),
                C=hyper.get("C", 0.0), normalise=cfg.normalise, metrics={"cross_validation": chosen[kind].to_json(),
                                                                         **final[kind].to_json()},
                views=list(final[kind].views),
                versions=library_versions(), created=now_iso(),
            ), folder / final[kind].bundle)
        (folder / "metrics.json").write_text(json.dumps(result.to_json(), indent=2))

    replace_folder(cfg.out, write)
    return result


def _streamed(cfg: FitConfig, task: Task, store: FeatureStore, layer: str, budget: int, need: int,
              started: float) -> FitResult:
    """The fit for codes over the memory budget (:mod:`pipeline.stream_fit`), on one layer."""
    if task is not CLASSIFICATION:
        raise UserError(f"the codes take {stream_fit.size_text(need)}, over the budget; streaming fits "
                        "classifiers only: raise the budget", param="max_memory")
    if cfg.test_store is not None:
        raise UserError("a streamed fit tests on a held-out fraction of the store, not a second store",
                        param="test_store")
    kinds = task.kinds(cfg)
    y = store.labels
    if cfg.test_size is not None:
        classify.check_test_size(cfg.test_size)
        train, held = stream_fit.stratified_split(y, np.arange(len(y)), cfg.test_size, cfg.seed)
    else:
        rows = _held_out_rows(task, store, y, cfg)
        train, held = rows if rows is not None else (np.arange(len(y)), None)
    log.info("%s: %s of codes over the %s budget; streaming %s", cfg.store, stream_fit.size_text(need),
             stream_fit.size_text(budget), layer)
    weight = "balanced" if cfg.class_weight == "balanced" else None  # no choice without cross-validation
    fitted = {kind: stream_fit.stream_fit(kind, store, layer, train, budget, cfg.normalise, weight, cfg.seed)
              for kind in kinds}
    results = [r for _, r, _ in fitted.values()]
    refits = [(model, {"alpha": chosen["alpha"]}) for model, _, chosen in fitted.values()]
    final = {kind: FinalModel(layer, hyper, f"{kind}.skops", None if held is None else stream_fit.held_out(
        model, store, layer, held, budget, f"{len(held)} held-out images"))
        for kind, (model, hyper) in zip(kinds, refits)}
    protocol = stream_fit.protocol(cfg.normalise, weight, cfg.seed, budget, need,
                                   {kind: chosen["epochs"] for kind, (_, _, chosen) in fitted.items()})
    best = max(results, key=lambda r: r.primary.mean)
    return _save(cfg, task, store, kinds, refits, final, {r.classifier: r for r in results}, protocol, results,
                 best, started)
