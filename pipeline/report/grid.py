"""The evaluation grid: every dataset x backbone x layer x classifier (and fine-tuning) in one report.

The grid scores every configuration of a dataset on the same outer folds (they
depend on the labels and the seed only), so the comparison is paired; codes are
cached (:mod:`pipeline.report.cache`), so one more backbone extracts only that
backbone. The best configuration's details come from out-of-fold predictions.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import metrics
from ..backbones.spec import safe_name
from ..deploy.config import PredictConfig
from ..deploy.predict import bundle_predictor, predict_images
from ..errors import UserError
from ..escalate.advise import advise
from ..escalate.config import AdviseConfig
from ..finetune.config import FinetuneConfig
from ..finetune.stage import finetune
from ..linear import cv, tta
from ..linear.bundle import Bundle
from ..linear.classify import check_training_data
from ..linear.duplicates import duplicate_sets, store_groups
from ..linear.kinds import get_kind
from ..linear.plan import CVPlan
from ..provenance import library_versions, now_iso
from ..results import CVResult
from ..store.config import ExtractConfig
from ..store.extract import extract
from ..store.layout import layer_parts
from ..store.reader import FeatureStore, read_store
from ..task import CLASSIFICATION, MULTILABEL
from .cache import extraction_record, store_path
from .config import EvaluateConfig
from .content import (
    Details,
    DuplicateGroups,
    Extraction,
    GridProtocol,
    PairedDelta,
    Report,
    Row,
    Section,
)
from .diagnostics import model_details
from .heatmaps import Heatmaps, explain_predictions
from .multilabel_report import MultiLabelSection, grid_section

log = logging.getLogger(__name__)

FINETUNED = get_kind("fine-tuned")


def _extract_all(data: Path, cfg: EvaluateConfig) -> tuple[dict[str, FeatureStore], dict[str, Extraction]]:
    stores, extraction = {}, {}
    for backbone in cfg.backbones:
        layers = tuple(dict.fromkeys(part for layer in cfg.layers_of(backbone) for part in layer_parts(layer)))
        path = store_path(cfg.features, data, backbone, layers, cfg.views)
        try:
            settings = ExtractConfig(data=data, out=path, backbone=backbone, layers=layers, views=cfg.views,
                                     engine=cfg.engine, progress=cfg.progress, allow_outside=cfg.allow_outside)
        except UserError as e:  # the cache's store is no output of the user's: its folder is the setting at fault
            raise UserError(e.message, param="features" if e.param == "out" else e.param) from None
        result = extract(settings)
        log.info("%s", result.summary())
        stores[backbone] = read_store(path)
        extraction[backbone] = extraction_record(result, stores[backbone])
    return stores, extraction


def _common_rows(stores: dict[str, FeatureStore]) -> tuple[list[str], dict[str, np.ndarray]]:
    """The images every store holds, in one order, and each store's row indices for them."""
    first = next(iter(stores.values()))
    if first.labels is None and first.multilabels is None:
        raise UserError(f"{first.attrs.get('dataset_root', first.path)} has no class labels; the evaluation "
                        "compares classifiers (one sub-folder per class, or a manifest with a label column)",
                        param="data")
    for store in stores.values():
        if store.class_names != first.class_names:
            raise UserError(f"{store.path} and {first.path} have different classes; extract them again",
                            param="data")
    shared = set.intersection(*(set(s.paths) for s in stores.values()))
    paths = [p for p in first.paths if p in shared]
    if len(paths) < len(first.paths) or any(len(s) != len(paths) for s in stores.values()):
        log.warning("the backbones decoded different images; comparing on the %d all of them hold", len(paths))
    rows = {name: np.array([s.paths.index(p) for p in paths]) if len(s) != len(paths) or s.paths != paths
            else np.arange(len(paths)) for name, s in stores.items()}
    return paths, rows


def _finetune_row(data: Path, root: Path, backbone: str, paths: list[str], y: np.ndarray, names: list[str],
                  folds, cfg: EvaluateConfig) -> tuple[CVResult, np.ndarray]:
    """Fine-tune ``backbone`` once per fold; the fold figures and the out-of-fold probabilities."""
    proba = np.zeros((len(y), len(names)))
    accuracy, macro_f1, seconds = [], [], 0.0
    for f, (_, test) in enumerate(folds):
        out = cfg.out / "finetune" / f"{Path(data).resolve().stem}_{safe_name(backbone)}" / f"fold{f}"
        log.info("fine-tuning %s, fold %d of %d", backbone, f + 1, len(folds))
        result = finetune(FinetuneConfig(
            data=data, out=out, backbone=backbone, image_size=cfg.image_size, head_epochs=cfg.epochs[0],
            finetune_epochs=cfg.epochs[1], seed=cfg.seed, test_paths=tuple(paths[i] for i in test),
            progress=cfg.progress, allow_outside=cfg.allow_outside))
        accuracy.append(result.test.scores["accuracy"])
        macro_f1.append(result.test.scores["macro_f1"])
        seconds += result.validation.fit_seconds
        predictions, _ = predict_images(PredictConfig(out / FINETUNED.file, tuple(root / paths[i] for i in test),
                                                      top_k=len(names), progress=False))
        by_path = {p.path: p for p in predictions}
        column = {name: k for k, name in enumerate(names)}
        for i in test:
            for name, probability in by_path[str(root / paths[i])].top:
                proba[i, column[name]] = probability
    n_test = len(y) // len(folds)
    result = CVResult("whole network", FINETUNED.name,
                      {"accuracy": metrics.nadeau_bengio(accuracy, len(y) - n_test, n_test),
                       "macro_f1": metrics.nadeau_bengio(macro_f1, len(y) - n_test, n_test)},
                      {}, fit_seconds=seconds)
    return result, proba


def _paired_delta(result: CVResult, best: CVResult, metric: str, n: int, k: int) -> PairedDelta:
    """``result``'s ``metric`` minus ``best``'s, over the folds both were scored on, with its interval."""
    mine, theirs = result.scores[metric].folds, best.scores[metric].folds
    m = min(len(mine), len(theirs))
    d = metrics.nadeau_bengio(np.subtract(mine[:m], theirs[:m]), n - n // k, n // k, bounded=False)
    return PairedDelta(d.mean, list(d.ci95), m, d.ci95[1] < 0)


def _scaling(row: Row, cfg: EvaluateConfig):
    """How a row's codes are scaled: its blocks, or the grid's normalisation."""
    return row.result.blocks or cfg.plain


def _codes_of(codes: dict, row: Row) -> np.ndarray:
    """The codes a row's configuration uses: its backbone's and layer's, with or without the views."""
    return tta.using(codes[row.backbone][row.result.layer], row.result.views)


def _section(data: Path, cfg: EvaluateConfig, backbones: dict) -> Section | MultiLabelSection:
    """One dataset's part of the report."""
    stores, extraction = _extract_all(data, cfg)
    paths, rows = _common_rows(stores)
    first = next(iter(stores.values()))
    for backbone, store in stores.items():
        backbones[backbone] = {"weights_checksum": store.config.weights_checksum,
                               "weights_source": str(store.attrs.get("weights_source", ""))}
    if first.multilabels is not None:
        if cfg.finetune or cfg.views:
            raise UserError("several labels per image are compared on the codes alone: leave out fine-tuning and "
                            "views", param="finetune" if cfg.finetune else "views")
        if cfg.normalise != cfg.plain:
            raise UserError("the stages are weighed as blocks for classes only; use power or standard",
                            param="normalise")
        return grid_section(data, cfg, stores, extraction, paths, rows, _paired_delta)
    root = Path(first.attrs.get("dataset_root", Path(data).resolve()))
    y, names = first.labels[rows[cfg.backbones[0]]], list(first.class_names)
    layers = {b: cfg.layers_of(b, s.layers) for b, s in stores.items()}
    codes = {b: {layer: tta.rows(s.view_codes(layer), rows[b]) for layer in layers[b]} for b, s in stores.items()}
    for b in codes:
        for layer in layers[b]:
            check_training_data(codes[b][layer], y, names, str(data))
    # the same for every backbone
    groups, duplicates = store_groups(first, rows[cfg.backbones[0]], cfg.duplicate_threshold)
    table, candidates, protocol = [], [], None
    for backbone in cfg.backbones:
        results, protocol = CVPlan.of(cfg).run(codes[backbone], y, names,
                                               {x: stores[backbone].widths(x) for x in layers[backbone]}, groups,
                                               cv.view_options(cfg.views))
        table += [Row(backbone, r, extraction[backbone]) for r in results]
        candidates += [replace(r, layer=f"{backbone} {r.layer}") if len(cfg.backbones) > 1 else r for r in results]
    metric, k, n = protocol.metric, protocol.outer_folds, len(y)
    nested = cv.nested_choice(candidates, n, k)
    folds = cv.outer_folds(y, k, 1, cfg.seed, groups)
    finetuned = {}
    if cfg.finetune:
        for backbone in cfg.backbones:
            result, finetuned[backbone] = _finetune_row(data, root, backbone, paths, y, names, folds, cfg)
            table.append(Row(backbone, result, extraction[backbone]))
    table.sort(key=lambda row: (-row.result.scores[metric].mean, -row.result.scores["accuracy"].mean))
    best = table[0]
    for row in table[1:]:
        row.vs_best = _paired_delta(row.result, best.result, metric, n, k)
    if best.linear:
        map_layer = best.result.layer
        proba = cv.out_of_fold_proba(best.result.classifier, _codes_of(codes, best), y, folds, _scaling(best, cfg),
                                     best.result.class_weight, cfg.seed, cfg.jobs, groups=groups, metric=metric)
        how = ("models made as the fit stage makes the saved one (C chosen inside the fold"
               + (", Platt-calibrated probabilities)" if get_kind(best.result.classifier).calibrated else ")"))
    else:
        proba, map_layer, how = finetuned[best.backbone], layers[best.backbone][-1], "fine-tuned networks"
    advice = advise(AdviseConfig(data, cfg.backbones[0], seed=cfg.seed, engine=cfg.engine)) if cfg.advise else None
    grid = GridProtocol(protocol, nested, _paired_delta(nested, best.result, metric, n, k) if nested else None,
                        len(folds) if cfg.finetune else None)
    details = Details(best, map_layer, f"out-of-fold: every image predicted once, by one of the {len(folds)} {how} "
                                       "trained without it (first repeat's folds)",
                      model_details(paths, y, proba, names))
    if cfg.heatmaps and best.linear:
        details.heatmaps = _heatmaps(stores[best.backbone], best, _codes_of(codes, best), y, names, paths, proba,
                                     root, groups, metric, cfg)
    if groups is not None:
        details.duplicates = _duplicates(paths, y, names, duplicates, best, codes, cfg, metric)
        protocol.notes.append(f"{len(details.duplicates.groups)} group(s) of near-duplicate images kept inside one "
                              "fold")
    return Section.make(data, root, names, y, grid, table, details, codes[best.backbone][map_layer][0], advice,
                        cfg.seed)


def _heatmaps(store: FeatureStore, best: Row, X: np.ndarray, y: np.ndarray, names: list[str], paths: list[str],
              proba: np.ndarray, root: Path, groups, metric: str, cfg: EvaluateConfig) -> Heatmaps:
    """Heatmaps of the best configuration's out-of-fold predictions, drawn with it refitted on every image (as
    the fit stage saves it)."""
    r = best.result
    model, hyper = cv.fit_final(r.classifier, X, y, _scaling(best, cfg), r.class_weight, cfg.seed, groups, metric)
    bundle = Bundle(model, r.classifier, r.layer, names, store.config.to_json(),
                    str(store.attrs.get("weights_source", "")), hyper["C"], str(_scaling(best, cfg)),
                    views=list(r.views))
    return explain_predictions(bundle_predictor(bundle, engine=cfg.engine), root, paths, y, proba, names,
                               cfg.heatmaps, cfg.seed, "the best configuration refitted on every image, for the "
                                                       "class its out-of-fold model predicted")


def _duplicates(paths, y, names, duplicates, best: Row, codes, cfg: EvaluateConfig, metric: str) -> DuplicateGroups:
    """The near-duplicate groups, and the best configuration's accuracy with every group split across folds."""
    ungrouped = None
    if best.linear:
        ungrouped = CVPlan.of(cfg).ungrouped(best.result, _codes_of(codes, best), y, names, _scaling(best, cfg),
                                             metric)
    sets = [] if duplicates is None else duplicate_sets(duplicates)
    return DuplicateGroups(cfg.duplicate_threshold, [[paths[i] for i in s] for s in sets],
                           best.result.scores["accuracy"].mean, ungrouped)


def evaluate(cfg: EvaluateConfig) -> Report:
    """Run the grid on every dataset."""
    backbones: dict[str, dict] = {}
    sections = [_section(Path(data), cfg, backbones) for data in cfg.data]
    several = {isinstance(s, MultiLabelSection) for s in sections}
    if len(several) > 1:
        raise UserError("some of these datasets give several labels per image and some one: report them "
                        "separately", param="data")
    return Report("Evaluation of " + ", ".join(s.name for s in sections), "grid", sections, now_iso(), cfg.command,
                  cfg.seed, backbones, library_versions(), task=MULTILABEL if several == {True} else CLASSIFICATION)
