"""Reports on several labels per image: the grid's configurations cross-validated on iterative-stratified folds
(:mod:`pipeline.linear.multilabel`), or a multi-label bundle on a labelled manifest with bootstrap intervals.
Their figures are the task's own (micro- and macro-F1, subset accuracy, mAP, per-label precision, recall and
F1) and their gallery the images with the most labels wrong."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

from ..errors import UserError
from ..linear import multilabel
from ..linear.bundle import Bundle
from ..linear.kinds import multilabel_kind
from ..results import CVResult
from ..store.reader import FeatureStore
from .content import Extraction, GridProtocol, HeldOutProtocol, Row

METRIC = "micro_f1"  # what ranks the configurations


@dataclass
class MultiLabelSection:
    """One dataset's part of a multi-label report."""

    data: Path
    root: Path
    label_names: list[str]
    Y: np.ndarray
    protocol: GridProtocol | HeldOutProtocol
    rows: list[Row]
    per_label: dict  # the best (or only) model's figures per label
    wrong: list[dict]
    wrong_total: int
    predictions: str  # how the per-label figures and the gallery's labels were made

    @property
    def name(self) -> str:
        return Path(self.data).resolve().stem

    def to_json(self) -> dict:
        return {"name": self.name, "data": str(self.data), "root": str(self.root), "images": int(len(self.Y)),
                "labels": len(self.label_names), "label_names": list(self.label_names),
                "label_counts": dict(zip(self.label_names, self.Y.sum(axis=0).astype(int).tolist())),
                "protocol": self.protocol.to_json(), "configs": [r.to_json() for r in self.rows],
                "best": {"predictions": self.predictions, "per_label": self.per_label, "wrong": self.wrong,
                         "wrong_total": self.wrong_total}}


def _kinds(classifiers) -> tuple[str, ...]:
    return tuple(multilabel_kind(c) for c in classifiers)


def grid_section(data: Path, cfg, stores: dict[str, FeatureStore], extraction: dict[str, Extraction],
                 paths: list[str], rows: dict[str, np.ndarray], paired_delta) -> MultiLabelSection:
    """Every backbone x layer x classifier cross-validated on the same folds, best first; the best one's
    out-of-fold labels per image."""
    first = stores[cfg.backbones[0]]
    names = list(first.class_names)
    Y = first.multilabels[rows[cfg.backbones[0]]]
    multilabel.check(Y, names, str(data))
    table, protocol = [], None
    for backbone, store in stores.items():
        X = {layer: store.codes(layer)[rows[backbone]] for layer in cfg.layers_of(backbone, store.layers)}
        results, protocol = multilabel.cross_validate(X, Y, names, _kinds(cfg.classifiers), cfg.folds, cfg.repeats,
                                                      cfg.normalise, cfg.seed, cfg.jobs, cfg.progress)
        table += [Row(backbone, r, extraction[backbone]) for r in results]
    table.sort(key=lambda row: -row.result.scores[METRIC].mean)
    best = table[0]
    for row in table[1:]:
        row.vs_best = paired_delta(row.result, best.result, METRIC, len(Y), protocol.outer_folds)
    X = stores[best.backbone].codes(best.result.layer)[rows[best.backbone]]
    predicted = multilabel.out_of_fold(best.result.classifier, X, Y, protocol.outer_folds, cfg.normalise, cfg.seed,
                                       cfg.jobs)
    wrong, total = multilabel.most_wrong(paths, Y, predicted, names)
    return MultiLabelSection(data, Path(first.attrs.get("dataset_root", Path(data).resolve())), names, Y,
                             GridProtocol(protocol), table, best.result.per_class, wrong, total,
                             f"out-of-fold: every image labelled once, by one of the {protocol.outer_folds} models "
                             "trained without it (first repeat's folds), at thresholds chosen inside its fold")


def bundle_section(data: Path, root: Path, bundle: Bundle, store: FeatureStore, row_extraction: Extraction,
                   protocol: HeldOutProtocol, seed: int) -> MultiLabelSection:
    """A multi-label bundle's figures on a labelled manifest, each label at the bundle's threshold."""
    names = list(bundle.class_names)
    unknown = sorted(set(store.class_names) - set(names))
    if unknown:
        raise UserError(f"{data} has labels the bundle was not trained on: {', '.join(unknown)}", param="data")
    Y = np.zeros((len(store), len(names)), np.uint8)
    for j, name in enumerate(store.class_names):
        Y[:, names.index(name)] = store.multilabels[:, j]
    proba = bundle.estimator.predict_proba(store.codes(bundle.layer))
    thresholds = np.asarray(bundle.metrics["thresholds"])
    predicted = proba >= thresholds
    scored = CVResult(bundle.layer, bundle.classifier, multilabel.bootstrap(Y, proba, thresholds, seed=seed),
                      {f"{bundle.C:g}": 1})
    trained = bundle.metrics.get("cross_validation", {})
    row = Row(bundle.backbone, scored, row_extraction, paired=False, training_cv_accuracy=trained.get(METRIC))
    per_label = multilabel.per_label(Y, predicted, names)
    for k, name in enumerate(names):
        per_label[name]["threshold"] = float(thresholds[k])
        per_label[name]["average_precision"] = (float(average_precision_score(Y[:, k], proba[:, k]))
                                                if Y[:, k].any() else None)
    wrong, total = multilabel.most_wrong(store.paths, Y, predicted, names)
    return MultiLabelSection(data, root, names, Y, protocol, [row], per_label, wrong, total,
                             f"the bundle's own labels for the {len(Y)} images of {data}, each over its threshold")
