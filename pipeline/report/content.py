"""What a report holds, typed: its sections, each with its table of configurations, the protocol behind the
figures and the details of the best (or only) model. The evaluate stage reasons on these; they become JSON
(``to_json``) only where a report is written (:mod:`pipeline.report.render`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..escalate.advise import Advice
from ..linear.kinds import get_kind
from ..results import CVResult, Protocol
from ..task import CLASSIFICATION, Task
from .diagnostics import ModelDetails, code_map
from .heatmaps import Heatmaps


@dataclass(frozen=True)
class Extraction:
    """How a configuration's codes were extracted; the speed is this run's, or the one cached with the codes."""

    store: str
    images: int
    extracted: int
    reused: int
    engine: str | None
    images_per_second: float
    measured: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedDelta:
    """A configuration's score minus the best's over the ``folds`` both were scored on, with its 95% interval."""

    mean: float
    ci95: list[float]
    folds: int
    clearly_worse: bool

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Row:
    """One configuration of a report's table: a backbone's candidate, scored. The grid's rows are ranked and
    ``paired`` (each carries its difference from the best); a bundle's one row carries its training figure."""

    backbone: str
    result: CVResult
    extraction: Extraction
    paired: bool = True
    vs_best: PairedDelta | None = None
    training_cv_accuracy: dict | None = None

    @property
    def linear(self) -> bool:
        """A linear model on codes, not a fine-tuned network."""
        return get_kind(self.result.classifier).linear

    def to_json(self) -> dict:
        out = {"backbone": self.backbone, **self.result.to_json()}
        if not self.paired:
            out["training_cv_accuracy"] = self.training_cv_accuracy
        out["extraction"] = self.extraction.to_json()
        if self.paired:
            out["vs_best"] = None if self.vs_best is None else self.vs_best.to_json()
        return out


@dataclass
class GridProtocol:
    """How a grid's figures were obtained: nested cross-validation on shared outer folds, the honest figure of
    choosing inside each fold, and (with fine-tuning) how many networks were trained."""

    cv: Protocol
    nested: CVResult | None = None
    nested_vs_best: PairedDelta | None = None
    finetune_folds: int | None = None

    def to_json(self) -> dict:
        return {"kind": "cross-validation", **asdict(self.cv),
                "paired": "every configuration is scored on the same outer folds",
                **({"nested_choice": {**self.nested.to_json(), "vs_best": self.nested_vs_best.to_json()}}
                   if self.nested else {}),
                "interval": "Nadeau-Bengio corrected t interval over the outer folds",
                **({"finetune_folds": f"one network per fold of the first repeat ({self.finetune_folds} folds)"}
                   if self.finetune_folds else {})}


@dataclass(frozen=True)
class HeldOutProtocol:
    """How a bundle's figures were obtained: its predictions on a labelled folder, bootstrap intervals."""

    bundle: str
    trained: str
    seed: int

    def to_json(self) -> dict:
        return {"kind": "held-out test", "bundle": self.bundle, "trained": self.trained, "seed": self.seed,
                "interval": "95% percentile bootstrap over the test images (1000 resamples)"}


@dataclass(frozen=True)
class DuplicateGroups:
    """Near-duplicate images kept inside one fold, and the best configuration's accuracy with and without."""

    threshold: float | None
    groups: list[list[str]]
    accuracy_grouped: float
    accuracy_ungrouped: float | None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Details:
    """The model the details are about (``row``), the layer its map shows, how its predictions were made and
    what they show."""

    row: Row
    map_layer: str
    predictions: str
    model: ModelDetails
    duplicates: DuplicateGroups | None = None
    heatmaps: Heatmaps | None = None

    def to_json(self) -> dict:
        r = self.row.result
        return {"backbone": self.row.backbone, "layer": r.layer, "classifier": r.classifier,
                **({"class_weight": r.class_weight} if r.class_weight else {}),
                **({"views": list(r.views)} if r.views else {}), "map_layer": self.map_layer,
                "predictions": self.predictions, **self.model.to_json(),
                **({"duplicates": self.duplicates.to_json()} if self.duplicates else {}),
                **({"heatmaps": self.heatmaps.to_json()} if self.heatmaps else {})}


@dataclass
class Section:
    """One dataset's part of a report, and the arrays its figures need (``embeddings`` of ``codes``, ``y``)."""

    data: Path
    root: Path
    class_names: list[str]
    y: np.ndarray
    protocol: GridProtocol | HeldOutProtocol
    rows: list[Row]
    details: Details
    advice: Advice | None
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    explained: list[float] = field(default_factory=list)

    @classmethod
    def make(cls, data: Path, root: Path, class_names: list[str], y: np.ndarray, protocol, rows: list[Row],
             details: Details, codes: np.ndarray, advice: Advice | None, seed: int) -> Section:
        """The section, with the map of ``codes`` (the codes of the details' model)."""
        embeddings, explained = code_map(codes, seed)
        return cls(data, root, class_names, y, protocol, rows, details, advice, embeddings, explained)

    @property
    def name(self) -> str:
        return Path(self.data).resolve().stem

    def to_json(self) -> dict:
        d = self.details
        return {
            "name": self.name, "data": str(self.data), "root": str(self.root), "images": int(len(self.y)),
            "classes": len(self.class_names), "class_names": list(self.class_names),
            "class_counts": dict(zip(self.class_names, np.bincount(self.y, minlength=len(self.class_names)).tolist())),
            "protocol": self.protocol.to_json(), "configs": [r.to_json() for r in self.rows], "best": d.to_json(),
            "map": {"backbone": d.row.backbone, "layer": d.map_layer, "methods": list(self.embeddings),
                    "pca_explained_variance": self.explained},
            "advice": None if self.advice is None else {**self.advice.to_json(), "text": self.advice.format()},
        }


@dataclass
class Report:
    """A whole report: ``grid`` (configurations compared) or ``bundle`` (one saved model on new images), of classes
    or of several labels per image (``task``)."""

    title: str
    mode: str
    sections: list[Section]
    created: str
    command: str
    seed: int
    backbones: dict[str, dict]
    versions: dict
    bundle: dict | None = None  # the bundle reported: its path, sha256, when made and with what
    task: Task = CLASSIFICATION

    def to_json(self) -> dict:
        return {"title": self.title, "mode": self.mode, "task": self.task.name,
                "sections": [s.to_json() for s in self.sections],
                "meta": {"created": self.created, "command": self.command, "seed": self.seed,
                         "backbones": self.backbones, **({"bundle": self.bundle} if self.bundle else {}),
                         "versions": self.versions}}
