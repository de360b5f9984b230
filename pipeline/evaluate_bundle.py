"""A saved bundle on a new labelled folder: the grid report's sections, for one model on held-out data.

The folder's codes are cached like the grid's (``features/``), with the
bundle's backbone, layer and resize policy; accuracy and macro-F1 get 95%
bootstrap intervals over the test images, since there are no folds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import metrics
from .advise import advise
from .bundle import load_bundle
from .diagnostics import model_details
from .errors import UserError
from .evaluate import extraction_record, make_section, store_path
from .extract import update_store
from .images import ResizePolicy, discover
from .predict import bundle_backbone
from .provenance import file_sha256, library_versions, now_iso
from .store import read_store

log = logging.getLogger(__name__)


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
    path = store_path(features, data, bundle.backbone, (bundle.layer,))
    result = update_store(dataset, path, backbone, [bundle.layer], ResizePolicy(**bundle.store_config["resize"]),
                          progress=progress, engine=engine)
    log.info("%s", result.summary())
    store = read_store(path)
    names = list(bundle.class_names)
    index = {name: k for k, name in enumerate(names)}
    y = np.array([index[store.class_names[label]] for label in store.labels])
    codes = store.codes(bundle.layer)
    proba = np.zeros((len(y), len(names)))
    proba[:, bundle.estimator.classes_] = bundle.estimator.predict_proba(codes)
    cv = bundle.metrics.get("cross_validation", {})
    config = {
        "backbone": bundle.backbone, "layer": bundle.layer, "classifier": bundle.classifier,
        **{name: s.to_json() for name, s in metrics.bootstrap(y, proba.argmax(axis=1), seed=seed).items()},
        "chosen_C": {f"{bundle.C:g}": 1}, "fit_seconds": float(cv.get("fit_seconds", 0.0)),
        "training_cv_accuracy": cv.get("accuracy"),
        "extraction": extraction_record(result, store),
    }
    advice = advise(data, bundle.backbone, seed=seed, engine=engine) if run_advisor else None
    protocol = {"kind": "held-out test", "bundle": str(bundle_path), "trained": bundle.created, "seed": seed,
                "interval": "95% percentile bootstrap over the test images (1000 resamples)"}
    details = {"backbone": bundle.backbone, "layer": bundle.layer, "classifier": bundle.classifier,
               "map_layer": bundle.layer,
               "predictions": f"the bundle's own predictions on the {len(y)} images of {data}",
               **model_details(store.paths, y, proba, names)}
    section, arrays = make_section(data, Path(store.attrs.get("dataset_root", Path(data).resolve())), names, y,
                                   protocol, [config], details, codes, advice, seed)
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
