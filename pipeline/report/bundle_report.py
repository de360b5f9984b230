"""A saved bundle's report on a new labelled folder: the grid's sections, with bootstrap intervals over the
folder's images instead of cross-validation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import metrics
from ..backbones.registry import get_spec
from ..data.decode import ResizePolicy
from ..data.discover import discover
from ..deploy.predict import bundle_backbone, bundle_predictor
from ..errors import UserError
from ..escalate.advise import advise
from ..escalate.config import AdviseConfig
from ..linear import tta
from ..linear.bundle import load_bundle
from ..linear.kinds import get_kind
from ..provenance import file_sha256, library_versions, now_iso
from ..results import CVResult
from ..store.extract import update_store
from ..store.layout import layer_parts
from ..store.reader import is_store_of, read_store
from .cache import extraction_record, store_path
from .config import BundleReportConfig
from .content import Details, HeldOutProtocol, Report, Row, Section
from .diagnostics import model_details
from .heatmaps import explain_predictions
from .multilabel_report import bundle_section

log = logging.getLogger(__name__)


def evaluate_bundle(cfg: BundleReportConfig) -> Report:
    """The report of the bundle ``cfg.bundle`` on the labelled folder ``cfg.data``."""
    bundle = load_bundle(cfg.bundle)
    task = get_kind(bundle.classifier).task
    if task.numeric:
        raise UserError(f"{cfg.bundle} is a regression bundle; the report is for classifiers", param="bundle")
    several = task.several
    dataset = discover(cfg.data, outside=cfg.allow_outside)
    if several and not dataset.multilabel:
        raise UserError(f"{cfg.data} gives no labels column: a multi-label bundle is reported on a manifest with "
                        "several labels per image", param="data")
    if not several and not dataset.labelled:
        raise UserError(f"{cfg.data} has no class labels: give a folder with one sub-folder per class, or a "
                        "manifest with a label column", param="data")
    unknown = sorted(set(dataset.class_names) - set(bundle.class_names))
    if unknown:
        raise UserError(f"{cfg.data} has {'labels' if several else 'classes'} the bundle was not trained on: "
                        f"{', '.join(unknown)}", param="data")
    backbone = bundle_backbone(bundle, cfg.weights)
    path, layers = _store_for(cfg, bundle, backbone.weights_checksum)
    views = tuple(bundle.views)
    result = update_store(dataset, path, backbone, layers, ResizePolicy.from_dict(bundle.store_config["resize"]),
                          progress=cfg.progress, engine=cfg.engine, views=views)
    log.info("%s", result.summary())
    store = read_store(path)
    root = Path(store.attrs.get("dataset_root", Path(cfg.data).resolve()))
    protocol = HeldOutProtocol(str(cfg.bundle), bundle.created, cfg.seed)
    if several:
        section = bundle_section(cfg.data, root, bundle, store, extraction_record(result, store), protocol, cfg.seed)
    else:
        section = _single_label(cfg, bundle, store, result, root, protocol)
    return Report(f"{Path(cfg.bundle).name} on {section.name}", "bundle", [section],
                  now_iso(), cfg.command, cfg.seed, {bundle.backbone: {"weights_checksum": backbone.weights_checksum,
                                                                       "weights_source": backbone.weights_source}},
                  library_versions(), {"path": str(cfg.bundle), "sha256": file_sha256(cfg.bundle),
                                       "created": bundle.created, "versions": bundle.versions}, task)


def _store_for(cfg: BundleReportConfig, bundle, checksum: str) -> tuple[Path, list[str]]:
    """Where the bundle's codes of ``cfg.data`` are kept, and the layers that store holds: the store extract
    makes of that folder by default (under ``cfg.features``) where it holds the bundle's layers through the same
    weights, resize and views, so that they are not extracted again; else the report's own cache of them."""
    layers, views = layer_parts(bundle.layer), tuple(bundle.views)
    made = store_path(cfg.features, cfg.data, bundle.backbone, get_spec(bundle.backbone).default_layers, views)
    try:
        config = read_store(made).config if is_store_of(made, Path(cfg.data)) else None
    except UserError:  # a damaged or foreign file there: the report keeps to its own cache
        config = None
    if config is not None and set(layers) <= set(config.layers) and config.weights_checksum == checksum \
            and config.resize == bundle.store_config["resize"] and tuple(config.views) == views:
        return made, list(config.layers)
    return store_path(cfg.features, cfg.data, bundle.backbone, tuple(layers), views), layers


def _single_label(cfg: BundleReportConfig, bundle, store, result, root: Path, protocol: HeldOutProtocol) -> Section:
    """The section of a bundle with one label per image: its figures, details, heatmaps and the advice."""
    views = tuple(bundle.views)
    names = list(bundle.class_names)
    index = {name: k for k, name in enumerate(names)}
    y = np.array([index[store.class_names[label]] for label in store.labels])
    codes = store.view_codes(bundle.layer)
    proba = np.zeros((len(y), len(names)))
    proba[:, bundle.estimator.classes_] = tta.scores(bundle.estimator, codes)
    trained = bundle.metrics.get("cross_validation", {})
    scored = CVResult(bundle.layer, bundle.classifier, metrics.bootstrap(y, proba.argmax(axis=1), seed=cfg.seed),
                      {f"{bundle.C:g}": 1}, fit_seconds=float(trained.get("fit_seconds", 0.0)), views=views)
    row = Row(bundle.backbone, scored, extraction_record(result, store), paired=False,
              training_cv_accuracy=trained.get("accuracy"))
    advice = advise(AdviseConfig(cfg.data, bundle.backbone, seed=cfg.seed, engine=cfg.engine)) if cfg.advise else None
    details = Details(row, bundle.layer, f"the bundle's own predictions on the {len(y)} images of {cfg.data}",
                      model_details(store.paths, y, proba, names))
    if cfg.heatmaps:
        details.heatmaps = explain_predictions(bundle_predictor(bundle, cfg.weights, engine=cfg.engine), root,
                                               store.paths, y, proba, names, cfg.heatmaps, cfg.seed,
                                               "the bundle, for the class it predicted")
    return Section.make(cfg.data, root, names, y, protocol, [row], details, codes[0], advice, cfg.seed)
