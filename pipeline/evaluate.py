"""Evaluation reports: the grid (every dataset x backbone x layer x classifier, and fine-tuning) and a bundle.

The grid scores every configuration of a dataset on the same outer folds (they
depend on the labels and the seed only), so the comparison is paired; codes are
cached under ``features/``, so one more backbone extracts only that backbone.
A saved bundle on a new labelled folder gets the same sections, with bootstrap
intervals over its test images (:func:`evaluate_bundle`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from . import classify, metrics, tta
from .advise import advise
from .bundle import load_bundle
from .diagnostics import code_map, model_details
from .duplicates import DEFAULT_THRESHOLD, duplicate_sets, store_groups
from .errors import UserError
from .extract import DEFAULT_BACKBONE, ExtractConfig, ExtractResult, extract, update_store
from .finetune import FinetuneConfig, finetune
from .images import ResizePolicy, discover
from .predict import bundle_backbone, predict_images
from .provenance import file_sha256, library_versions, now_iso
from .results import CVResult
from .layer_sets import layer_parts
from .store import FeatureStore, read_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of one grid; the defaults are the command line's."""

    data: tuple[Path, ...]
    out: Path
    backbones: tuple[str, ...] = (DEFAULT_BACKBONE,)
    classifiers: tuple[str, ...] = classify.CLASSIFIERS
    layers: tuple[str, ...] = ("penultimate",)
    views: tuple[str, ...] = ()  # views of each image (pipeline.tta): configurations with and without them compete
    finetune: bool = False
    image_size: int | None = None
    epochs: tuple[int, int] = (5, 5)
    features: Path = Path("features")
    folds: int = 5
    repeats: int | None = None
    normalise: str = "power"  # pipeline.scaling
    advise: bool = True
    seed: int = 0
    jobs: int | None = None
    engine: str = "auto"
    command: str = ""
    progress: bool = True
    duplicate_threshold: float | None = DEFAULT_THRESHOLD  # near-duplicates stay in one fold; None: not looked for
    class_weight: str | None = "auto"  # as fit's: auto compares none and balanced when the classes differ 1.5x


def store_path(features: Path, data: Path, backbone: str, layers: tuple[str, ...], views: tuple[str, ...] = ()) -> Path:
    """Where the codes of ``data`` through ``backbone`` are cached (the extract command's default name for the
    penultimate)."""
    suffix = ("" if tuple(layers) == ("penultimate",) else "_" + "+".join(layers)) + "".join(f"_{v}" for v in views)
    return features / f"{Path(data).resolve().stem}_{backbone}{suffix}.h5"


def _extract_all(data: Path, cfg: EvaluateConfig) -> tuple[dict[str, FeatureStore], dict[str, dict]]:
    stores, extraction = {}, {}
    for backbone in cfg.backbones:
        layers = tuple(dict.fromkeys(part for layer in cfg.layers for part in layer_parts(layer)))
        path = store_path(cfg.features, data, backbone, layers, cfg.views)
        result = extract(ExtractConfig(data=data, out=path, backbone=backbone, layers=layers, views=cfg.views,
                                       engine=cfg.engine, progress=cfg.progress))
        log.info("%s", result.summary())
        stores[backbone] = read_store(path)
        extraction[backbone] = extraction_record(result, stores[backbone])
    return stores, extraction


def extraction_record(result: ExtractResult, store: FeatureStore) -> dict:
    """What the report says of a store's extraction; the speed is this run's, or the one cached with the codes."""
    return {"store": str(store.path), "images": result.images, "extracted": result.extracted,
            "reused": result.reused, "engine": (json.loads(store.attrs.get("runs", "[]")) or [{}])[-1].get("engine"),
            "images_per_second": float(store.attrs.get("extract_images_per_second", 0.0)),
            "measured": "this run" if result.extracted else "when the codes were cached"}


def make_section(data: Path, root: Path, names: list[str], y: np.ndarray, protocol: dict, configs: list[dict],
                 best: dict, codes: np.ndarray, advice, seed: int) -> tuple[dict, dict]:
    """One dataset's part of a report (JSON-ready), and the arrays its figures need.

    ``best`` names the configuration the details are about, with :func:`model_details` merged in;
    ``codes`` are the codes its map shows."""
    embeddings, explained = code_map(codes, seed)
    section = {
        "name": Path(data).resolve().stem, "data": str(data), "root": str(root), "images": int(len(y)),
        "classes": len(names), "class_names": list(names),
        "class_counts": dict(zip(names, np.bincount(y, minlength=len(names)).tolist())),
        "protocol": protocol, "configs": configs, "best": best,
        "map": {"backbone": best["backbone"], "layer": best["map_layer"], "methods": list(embeddings),
                "pca_explained_variance": explained},
        "advice": None if advice is None else {**advice.to_json(), "text": advice.format()},
    }
    return section, {"embeddings": embeddings, "y": y}


def _common_rows(stores: dict[str, FeatureStore]) -> tuple[list[str], dict[str, np.ndarray]]:
    """The images every store holds, in one order, and each store's row indices for them."""
    first = next(iter(stores.values()))
    if first.labels is None:
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


def _finetune_config(data: Path, root: Path, backbone: str, paths: list[str], y: np.ndarray, names: list[str],
                     folds, cfg: EvaluateConfig) -> tuple[dict, np.ndarray]:
    """Fine-tune ``backbone`` once per fold; the fold figures and the out-of-fold probabilities."""
    proba = np.zeros((len(y), len(names)))
    accuracy, macro_f1, seconds = [], [], 0.0
    for f, (_, test) in enumerate(folds):
        out = cfg.out / "finetune" / f"{Path(data).resolve().stem}_{backbone}" / f"fold{f}"
        log.info("fine-tuning %s, fold %d of %d", backbone, f + 1, len(folds))
        result = finetune(FinetuneConfig(
            data=data, out=out, backbone=backbone, image_size=cfg.image_size, head_epochs=cfg.epochs[0],
            finetune_epochs=cfg.epochs[1], seed=cfg.seed, test_paths=tuple(paths[i] for i in test),
            progress=cfg.progress))
        accuracy.append(result.test.scores["accuracy"])
        macro_f1.append(result.test.scores["macro_f1"])
        seconds += result.validation.fit_seconds
        predictions, _ = predict_images(out / "model.keras", [root / paths[i] for i in test], top_k=len(names),
                                        progress=False)
        by_path = {p.path: p for p in predictions}
        column = {name: k for k, name in enumerate(names)}
        for i in test:
            for name, probability in by_path[str(root / paths[i])].top:
                proba[i, column[name]] = probability
    n_test = len(y) // len(folds)
    result = CVResult("whole network", "fine-tuned",
                      {"accuracy": metrics.nadeau_bengio(accuracy, len(y) - n_test, n_test),
                       "macro_f1": metrics.nadeau_bengio(macro_f1, len(y) - n_test, n_test)},
                      {}, fit_seconds=seconds)
    return result, proba


def _paired_delta(config: dict, best: dict, metric: str, n: int, k: int) -> dict:
    """``config``'s ``metric`` minus ``best``'s, over the folds both were scored on, with its interval."""
    mine, theirs = config[metric]["folds"], best[metric]["folds"]
    m = min(len(mine), len(theirs))
    d = metrics.nadeau_bengio(np.subtract(mine[:m], theirs[:m]), n - n // k, n // k, bounded=False)
    return {"mean": d.mean, "ci95": list(d.ci95), "folds": m, "clearly_worse": d.ci95[1] < 0}


def _paired_deltas(configs: list[dict], metric: str, n: int, k: int) -> None:
    """Each configuration's ``metric`` minus the best's (the first), over the folds both were scored on."""
    configs[0]["vs_best"] = None
    for c in configs[1:]:
        c["vs_best"] = _paired_delta(c, configs[0], metric, n, k)


def _section(data: Path, cfg: EvaluateConfig, backbones: dict) -> tuple[dict, dict]:
    """One dataset's part of the report, and the arrays its figures need."""
    stores, extraction = _extract_all(data, cfg)
    paths, rows = _common_rows(stores)
    first = next(iter(stores.values()))
    root = Path(first.attrs.get("dataset_root", Path(data).resolve()))
    y, names = first.labels[rows[cfg.backbones[0]]], list(first.class_names)
    codes = {b: {layer: tta.rows(s.view_codes(layer), rows[b]) for layer in cfg.layers} for b, s in stores.items()}
    for b in codes:
        for layer in cfg.layers:
            classify.check_training_data(codes[b][layer], y, names, str(data))
    # the same for every backbone
    groups, duplicates = store_groups(first, rows[cfg.backbones[0]], cfg.duplicate_threshold)
    configs, candidates, protocol = [], [], None
    for backbone in cfg.backbones:
        backbones[backbone] = {"weights_checksum": stores[backbone].config.weights_checksum,
                               "weights_source": str(stores[backbone].attrs.get("weights_source", ""))}
        results, protocol = classify.cross_validate(codes[backbone], y, names, cfg.classifiers, cfg.folds,
                                                    cfg.repeats, cfg.normalise,
                                                    classify.class_weightings(y, cfg.class_weight), cfg.seed,
                                                    cfg.jobs, groups, views=classify.view_options(cfg.views))
        configs += [{"backbone": backbone, **r.to_json(), "extraction": extraction[backbone]} for r in results]
        candidates += [replace(r, layer=f"{backbone} {r.layer}") if len(cfg.backbones) > 1 else r for r in results]
    metric = protocol.metric
    nested = classify.nested_choice(candidates, len(y), protocol.outer_folds)
    folds = classify.outer_folds(y, protocol.outer_folds, 1, cfg.seed, groups)
    finetuned = {}
    if cfg.finetune:
        for backbone in cfg.backbones:
            result, finetuned[backbone] = _finetune_config(data, root, backbone, paths, y, names, folds, cfg)
            configs.append({"backbone": backbone, **result.to_json(), "extraction": extraction[backbone]})
    configs.sort(key=lambda c: (-c[metric]["mean"], -c["accuracy"]["mean"]))
    _paired_deltas(configs, metric, len(y), protocol.outer_folds)
    best = configs[0]
    if best["classifier"] == "fine-tuned":
        proba, map_layer = finetuned[best["backbone"]], cfg.layers[-1]
        how = "fine-tuned networks"
    else:
        map_layer = best["layer"]
        proba = classify.out_of_fold_proba(best["classifier"], _best_codes(codes, best), y, folds,
                                           cfg.normalise, best.get("class_weight"), cfg.seed, cfg.jobs, groups=groups,
                                           metric=metric)
        how = ("models made as fit_svm.py makes the saved one (C chosen inside the fold"
               + (", Platt-calibrated probabilities)" if best["classifier"] == "svm" else ")"))
    advice = advise(data, cfg.backbones[0], seed=cfg.seed, engine=cfg.engine) if cfg.advise else None
    protocol = {
        "kind": "cross-validation", **asdict(protocol),
        "paired": "every configuration is scored on the same outer folds",
        **({"nested_choice": {**nested.to_json(),
                              "vs_best": _paired_delta(nested.to_json(), best, metric, len(y), protocol.outer_folds)}}
           if nested else {}),
        "interval": "Nadeau-Bengio corrected t interval over the outer folds",
        **({"finetune_folds": f"one network per fold of the first repeat ({len(folds)} folds)"}
           if cfg.finetune else {}),
    }
    details = {"backbone": best["backbone"], "layer": best["layer"], "classifier": best["classifier"],
               **{k: best[k] for k in ("class_weight", "views") if k in best}, "map_layer": map_layer,
               "predictions": f"out-of-fold: every image predicted once, by one of the {len(folds)} {how} "
                              "trained without it (first repeat's folds)",
               **model_details(paths, y, proba, names)}
    if groups is not None:
        details["duplicates"] = _duplicates(paths, y, names, groups, duplicates, best, codes, cfg, metric)
        protocol["notes"].append(f"{len(details['duplicates']['groups'])} group(s) of near-duplicate images kept "
                                 "inside one fold")
    return make_section(data, root, names, y, protocol, configs, details, codes[best["backbone"]][map_layer][0],
                        advice, cfg.seed)


def _best_codes(codes: dict, best: dict) -> np.ndarray:
    """The codes the best configuration uses: its backbone's and layer's, with or without the views."""
    return tta.using(codes[best["backbone"]][best["layer"]], best.get("views", ()))


def _duplicates(paths, y, names, groups, duplicates, best: dict, codes, cfg: EvaluateConfig, metric: str) -> dict:
    """The near-duplicate groups, and the best configuration's accuracy with every group split across folds."""
    ungrouped = None
    if best["classifier"] != "fine-tuned":
        plain, _ = classify.cross_validate({best["layer"]: _best_codes(codes, best)}, y, names,
                                           (best["classifier"],), cfg.folds, cfg.repeats, cfg.normalise,
                                           (best.get("class_weight"),), cfg.seed, cfg.jobs, metric=metric,
                                           views=(tuple(best.get("views", ())),))
        ungrouped = plain[0].primary.mean
    sets = [] if duplicates is None else duplicate_sets(duplicates)
    return {"threshold": cfg.duplicate_threshold, "groups": [[paths[i] for i in s] for s in sets],
            "accuracy_grouped": best["accuracy"]["mean"], "accuracy_ungrouped": ungrouped}


def evaluate(cfg: EvaluateConfig) -> tuple[dict, dict]:
    """Run the grid on every dataset; the report (JSON-ready) and, per dataset, the arrays its figures need."""
    if not cfg.data:
        raise UserError("give at least one dataset", param="data")
    if not cfg.backbones:
        raise UserError("give at least one backbone", param="backbones")
    for kind in cfg.classifiers:
        classify.make_classifier(kind, 1.0, cfg.normalise)  # validates the names before any work
    if cfg.folds < 2:
        raise UserError("must be at least 2", param="folds")
    for data in cfg.data:
        if not Path(data).exists():
            raise UserError(f"dataset {data} does not exist", param="data")
    backbones: dict[str, dict] = {}
    sections, arrays = [], []
    for data in cfg.data:
        section, extra = _section(Path(data), cfg, backbones)
        sections.append(section)
        arrays.append(extra)
    report = {
        "title": "Evaluation of " + ", ".join(s["name"] for s in sections),
        "mode": "grid", "sections": sections,
        "meta": {"created": now_iso(), "command": cfg.command, "seed": cfg.seed, "backbones": backbones,
                 "versions": library_versions()},
    }
    return report, arrays


def evaluate_bundle(bundle_path: Path, data: Path, features: Path = Path("features"), seed: int = 0,
                    run_advisor: bool = True, command: str = "", progress: bool = True,
                    weights: Path | None = None, engine: str = "auto") -> tuple[dict, list[dict]]:
    """The report (JSON-ready) of ``bundle_path`` on the labelled folder ``data``, and the arrays its figures need."""
    if Path(bundle_path).suffix == ".keras":
        raise UserError("takes a fitted classifier bundle (.skops); compare fine-tuned networks in the grid, "
                        "or predict with one", param="bundle")
    bundle = load_bundle(bundle_path)
    if bundle.classifier == "ridge":
        raise UserError(f"{bundle_path} is a regression bundle; the report is for classifiers", param="bundle")
    dataset = discover(data)
    if not dataset.labelled:
        raise UserError(f"{data} has no class labels: give a folder with one sub-folder per class, or a manifest "
                        "with a label column", param="data")
    unknown = sorted(set(dataset.class_names) - set(bundle.class_names))
    if unknown:
        raise UserError(f"{data} has classes the bundle was not trained on: {', '.join(unknown)}", param="data")
    backbone = bundle_backbone(bundle, weights)
    layers = layer_parts(bundle.layer)
    views = tuple(bundle.views)
    path = store_path(features, data, bundle.backbone, tuple(layers), views)
    result = update_store(dataset, path, backbone, layers, ResizePolicy(**bundle.store_config["resize"]),
                          progress=progress, engine=engine, views=views)
    log.info("%s", result.summary())
    store = read_store(path)
    names = list(bundle.class_names)
    index = {name: k for k, name in enumerate(names)}
    y = np.array([index[store.class_names[label]] for label in store.labels])
    codes = store.view_codes(bundle.layer)
    proba = np.zeros((len(y), len(names)))
    proba[:, bundle.estimator.classes_] = tta.scores(bundle.estimator, codes)
    cv = bundle.metrics.get("cross_validation", {})
    config = {
        "backbone": bundle.backbone, "layer": bundle.layer, "classifier": bundle.classifier,
        **({"views": list(views)} if views else {}),
        **{name: s.to_json() for name, s in metrics.bootstrap(y, proba.argmax(axis=1), seed=seed).items()},
        "chosen_C": {f"{bundle.C:g}": 1}, "fit_seconds": float(cv.get("fit_seconds", 0.0)),
        "training_cv_accuracy": cv.get("accuracy"),
        "extraction": extraction_record(result, store),
    }
    advice = advise(data, bundle.backbone, seed=seed, engine=engine) if run_advisor else None
    protocol = {"kind": "held-out test", "bundle": str(bundle_path), "trained": bundle.created, "seed": seed,
                "interval": "95% percentile bootstrap over the test images (1000 resamples)"}
    details = {"backbone": bundle.backbone, "layer": bundle.layer, "classifier": bundle.classifier,
               **({"views": list(views)} if views else {}), "map_layer": bundle.layer,
               "predictions": f"the bundle's own predictions on the {len(y)} images of {data}",
               **model_details(store.paths, y, proba, names)}
    section, arrays = make_section(data, Path(store.attrs.get("dataset_root", Path(data).resolve())), names, y,
                                   protocol, [config], details, codes[0], advice, seed)
    report = {
        "title": f"{Path(bundle_path).name} on {section['name']}", "mode": "bundle", "sections": [section],
        "meta": {"created": now_iso(), "command": command, "seed": seed,
                 "backbones": {bundle.backbone: {"weights_checksum": backbone.weights_checksum,
                                                 "weights_source": backbone.weights_source}},
                 "bundle": {"path": str(bundle_path), "sha256": file_sha256(bundle_path), "created": bundle.created,
                            "versions": bundle.versions},
                 "versions": library_versions()},
    }
    return report, [arrays]
