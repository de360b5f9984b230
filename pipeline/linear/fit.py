"""The fit stage: store(s) in, cross-validated figures, metrics.json and bundles out.

Classification (the classifiers of :mod:`pipeline.linear.kinds`) and regression
(ridge on a numeric target) share one flow; the task (:mod:`pipeline.linear.tasks`)
answers what differs. Codes over the memory budget are streamed instead
(:mod:`pipeline.linear.stream`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from ..errors import UserError
from ..machine import usable_cores
from ..outputs import replace_folder
from ..provenance import library_versions, now_iso
from ..results import CVResult, FinalModel, Protocol
from ..run_files import METRICS
from ..store.layout import JOIN, default_candidates
from ..store.reader import FeatureStore, read_store
from . import classify, cv, stream, tta
from .bundle import Bundle, save_bundle
from .config import BLOCK_SETTINGS, FitConfig
from .duplicates import duplicate_sets, subset
from .fit_result import FitResult
from .kinds import get_kind
from .plan import CVPlan
from .tasks import Classification, MultiLabel, Regression, codes_of, scaling, task_of

log = logging.getLogger(__name__)

Task = Classification | Regression | MultiLabel


@dataclass
class _Data:
    """The codes a fit trains on (by candidate layer), their targets and groups, and the test part if any:
    ``(codes by layer, targets, what they are)``."""

    X: dict[str, np.ndarray]
    y: np.ndarray
    groups: np.ndarray | None
    duplicates: np.ndarray | None
    train_rows: np.ndarray | None = None  # the store's rows trained on, when a test part was held out
    test: tuple[dict, np.ndarray, str] | None = None


def _held_out_rows(task: Task, store: FeatureStore, y, cfg: FitConfig, groups=None):
    """(training rows, test rows) for a test fraction (``groups`` on one side) or explicit test paths; None
    without either."""
    if cfg.test_paths is not None:
        held = set(cfg.test_paths)
        test = np.array([i for i, p in enumerate(store.paths) if p in held], dtype=int)
        return np.setdiff1d(np.arange(len(y)), test), test
    if cfg.test_size is not None:
        return task.split(y, cfg.test_size, cfg.seed, groups)
    return None


def _data(task: Task, store: FeatureStore, layers: list[str], cfg: FitConfig) -> _Data:
    """The codes and targets of every candidate layer, checked, with the test part split off or read."""
    X = {layer: task.codes(store, layer) for layer in layers}
    y = task.targets(store)
    for layer in layers:
        task.check(X[layer], y, store, cfg, str(cfg.store))
    groups, duplicates = task.groups(store, cfg)
    rows = _held_out_rows(task, store, y, cfg, groups)
    if rows is not None:
        train, held = rows
        test = ({layer: tta.rows(X[layer], held) for layer in layers}, y[held], f"{len(held)} held-out images")
        data = _Data({layer: tta.rows(X[layer], train) for layer in layers}, y[train], subset(groups, train),
                     subset(duplicates, train), train, test)
        for layer in layers:
            task.check(data.X[layer], data.y, store, cfg, f"{cfg.store} without its test split")
        return data
    test = None
    if cfg.test_store is not None:
        test_store = read_store(cfg.test_store)
        test = ({layer: task.codes(test_store, layer) for layer in layers},
                classify.align_test_store(store, test_store), str(cfg.test_store))
    return _Data(X, y, groups, duplicates, None, test)


def fit(cfg: FitConfig) -> FitResult:
    """Cross-validate, refit, save one bundle per model kind and ``metrics.json``."""
    started = time.perf_counter()
    store = read_store(cfg.store)
    task = task_of(store)
    cfg = replace(cfg, normalise=cfg.normalise or task.normalise)
    if cfg.normalise in BLOCK_SETTINGS and not task.weighs_blocks:
        raise UserError(f"{task.task.name}: the stages are weighed as blocks for classes only; use power or standard",
                        param="normalise")
    kinds = task.kinds(cfg)
    layers = [store.check_layer(layer, "layers") for layer in cfg.layers or default_candidates(store.layers)]
    budget = cfg.max_memory or stream.default_max_memory()
    need = stream.codes_bytes(store, layers)
    if need > budget:  # one stored layer, the last named
        return _streamed(cfg, task, store, layers[-1].split(JOIN)[-1], budget, need, started)
    data = _data(task, store, layers, cfg)
    X, y, groups = data.X, data.y, data.groups

    results, protocol = task.cross_validate(X, y, store, cfg, groups)
    best = max(results, key=lambda r: r.scores[protocol.metric].mean)
    nested = cv.nested_choice(results, len(y), protocol.outer_folds)
    grouping = _grouping(cfg, store, data, best, protocol) if groups is not None else None
    chosen = {kind: max((r for r in results if r.classifier == kind), key=lambda r: r.scores[protocol.metric].mean)
              for kind in kinds}
    refits = Parallel(n_jobs=min(len(kinds), cfg.jobs or usable_cores()))(
        delayed(task.fit_final)(chosen[kind], codes_of(X, chosen[kind]), y, cfg, groups, protocol.metric)
        for kind in kinds)
    final = {}
    for kind, (model, hyper) in zip(kinds, refits):
        test = None
        if data.test is not None:
            test_X, test_y, what = data.test
            test = task.held_out(model, hyper, codes_of(test_X, chosen[kind]), test_y, store, what)
        final[kind] = FinalModel(chosen[kind].layer, hyper, get_kind(kind).file, test,
                                 task.reject(chosen[kind], X, y, cfg, protocol, groups), chosen[kind].class_weight,
                                 chosen[kind].views)
    return _save(cfg, task, store, kinds, refits, final, chosen, protocol, results, best, started, grouping, nested)


def _grouping(cfg: FitConfig, store: FeatureStore, data: _Data, best: CVResult, protocol: Protocol) -> dict:
    """What keeping groups inside one fold did: the near-duplicate groups, how many the manifest named, and the
    best candidate's accuracy grouped and not (noted in the protocol too)."""
    sets = duplicate_sets(data.duplicates) if data.duplicates is not None else []
    paths = np.asarray(store.paths, dtype=object)[data.train_rows if data.train_rows is not None else slice(None)]
    named = store.groups is not None and len({g for g in store.groups if g})
    if sets:
        protocol.notes.append(f"{len(sets)} group(s) of near-duplicate images ({sum(map(len, sets))} images) "
                              "kept inside one fold")
    if named:
        protocol.notes.append(f"the images of each of the manifest's {named} group(s) kept inside one fold")
    ungrouped = CVPlan.of(cfg).ungrouped(best, data.X[best.layer], data.y, store.class_names, scaling(best, cfg),
                                         protocol.metric)
    return {"threshold": cfg.duplicate_threshold, "groups": [paths[s].tolist() for s in sets],
            **({"manifest_groups": named} if named else {}),
            "accuracy_grouped": best.primary.mean, "accuracy_ungrouped": ungrouped}


def _save(cfg: FitConfig, task: Task, store: FeatureStore, kinds, refits, final, chosen, protocol, results, best,
          started: float, duplicates: dict | None = None, nested: CVResult | None = None) -> FitResult:
    """The result, and the bundles, checksums and metrics.json, replaced together."""
    result = FitResult(task.task, str(cfg.store), str(cfg.out), store.config.backbone,
                       store.config.weights_checksum, int(len(store)), task.describe(store, task.targets(store)),
                       protocol, results, best, final, time.perf_counter() - started, library_versions(), now_iso(),
                       duplicates, nested)

    def write(folder: Path) -> None:
        for kind, (model, hyper) in zip(kinds, refits):
            save_bundle(Bundle(
                estimator=model, classifier=kind, layer=final[kind].layer, class_names=list(store.class_names or []),
                store_config=store.config.to_json(), weights_source=str(store.attrs.get("weights_source", "")),
                C=hyper.get("C", 0.0), normalise=str(scaling(chosen[kind], cfg)),
                metrics={"cross_validation": chosen[kind].to_json(), **final[kind].to_json()},
                views=list(final[kind].views),
                versions=library_versions(), created=now_iso(),
            ), folder / final[kind].bundle)
        METRICS.write(folder, result.to_json())

    replace_folder(cfg.out, "fit", write)
    return result


def _streamed(cfg: FitConfig, task: Task, store: FeatureStore, layer: str, budget: int, need: int,
              started: float) -> FitResult:
    """The fit for codes over the memory budget (:mod:`pipeline.linear.stream`), on one layer."""
    if not task.streams:
        raise UserError(f"the codes take {stream.size_text(need)}, over the budget; streaming fits "
                        "classifiers only: raise the budget", param="max_memory")
    if cfg.test_store is not None:
        raise UserError("a streamed fit tests on a held-out fraction of the store, not a second store",
                        param="test_store")
    kinds = task.kinds(cfg)
    y = store.labels
    if cfg.test_size is not None:
        train, held = stream.stratified_split(y, np.arange(len(y)), cfg.test_size, cfg.seed)
    else:
        rows = _held_out_rows(task, store, y, cfg)
        train, held = rows if rows is not None else (np.arange(len(y)), None)
    log.info("%s: %s of codes over the %s budget; streaming %s", cfg.store, stream.size_text(need),
             stream.size_text(budget), layer)
    weight = "balanced" if cfg.class_weight == "balanced" else None  # no choice without cross-validation
    fitted = {kind: stream.stream_fit(kind, store, layer, train, budget, cfg.plain, weight, cfg.seed)
              for kind in kinds}
    results = [r for _, r, _ in fitted.values()]
    refits = [(model, {"alpha": chosen["alpha"]}) for model, _, chosen in fitted.values()]
    final = {kind: FinalModel(layer, hyper, get_kind(kind).file, None if held is None else stream.held_out(
        model, store, layer, held, budget, f"{len(held)} held-out images"))
        for kind, (model, hyper) in zip(kinds, refits)}
    protocol = stream.protocol(cfg.plain, weight, cfg.seed, budget, need,
                               {kind: chosen["epochs"] for kind, (_, _, chosen) in fitted.items()})
    best = max(results, key=lambda r: r.primary.mean)
    return _save(cfg, task, store, kinds, refits, final, {r.classifier: r for r in results}, protocol, results,
                 best, started)

