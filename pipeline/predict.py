"""Predictions for new images from a saved bundle: backbone codes, then the classifier."""

from __future__ import annotations

import csv
import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .backbones.loading import load_backbone
from .bundle import Bundle, load_bundle
from .device import configure_precision
from .errors import UserError
from .extract import iter_codes
from .images import ResizePolicy, _is_candidate, _walk

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Top-k classes of one image with their probabilities, or the reason it was skipped."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    skipped: str | None = None


def collect_images(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Prediction]]:
    """Files, folders (searched recursively) and glob patterns -> image files, plus inputs that match nothing."""
    files, missing = [], []
    for item in map(str, inputs):
        if any(ch in item for ch in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(item, recursive=True)) if Path(m).is_file()]
            files += [m for m in matches if _is_candidate(m)]
            if not matches:
                missing.append(Prediction(item, skipped="no file matches this pattern"))
        elif Path(item).is_dir():
            files += _walk(Path(item))[0]
        elif Path(item).is_file() or Path(item).is_symlink():
            files.append(Path(item))
        else:
            missing.append(Prediction(item, skipped="file not found"))
    return list(dict.fromkeys(files)), missing


def load_for_prediction(bundle_path: str | Path, weights: str | Path | None = None):
    """The bundle and a feature model for its layer, refusing a backbone whose weights differ."""
    bundle = load_bundle(bundle_path)
    backbone = load_backbone(bundle.backbone, weights)
    if backbone.weights_checksum != bundle.store_config["weights_checksum"]:
        raise UserError(
            f"the installed {bundle.backbone} weights ({backbone.weights_source}) differ from those the bundle "
            f"was trained on ({bundle.weights_source}); install those or pass them with --weights"
        )
    return bundle, backbone.feature_model([bundle.layer])


def predict_images(bundle_path: str | Path, inputs: Sequence[str | Path], top_k: int = 3, batch_size: int = 32,
                   weights: str | Path | None = None, precision: str = "auto",
                   progress: bool = True) -> list[Prediction]:
    files, predictions = collect_images(inputs)
    if not files and not predictions:
        raise UserError("no images given")
    configure_precision(precision)
    bundle, model = load_for_prediction(bundle_path, weights)
    policy = ResizePolicy(**bundle.store_config["resize"])
    k = max(1, min(top_k, len(bundle.class_names)))
    for batch, codes in iter_codes(model, [bundle.layer], files, policy, batch_size, progress=progress,
                                   desc="predict"):
        if batch.ok:
            probabilities = bundle.estimator.predict_proba(codes[bundle.layer])
            for i, p in zip(batch.ok, probabilities):
                order = np.argsort(-p)[:k]
                predictions.append(Prediction(str(files[i]), [(bundle.class_names[c], float(p[c])) for c in order]))
        predictions += [Prediction(str(files[i]), skipped=reason) for i, reason in batch.failed]
    return predictions


def write_csv(predictions: Sequence[Prediction], path: str | Path, top_k: int) -> None:
    """One row per image: path, then class and probability for each rank, then the skip reason."""
    columns = ["path"] + [f"{what}_{r}" for r in range(1, top_k + 1) for what in ("class", "probability")]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns + ["skipped"])
        for p in predictions:
            cells = [c for name, prob in p.top for c in (name, f"{prob:.6f}")]
            writer.writerow([p.path] + cells + [""] * (2 * top_k - len(cells)) + [p.skipped or ""])


def describe(bundle: Bundle) -> str:
    kind = "calibrated SVM probabilities (Platt)" if bundle.classifier == "svm" else "softmax probabilities"
    return f"{bundle.classifier} on {bundle.backbone}/{bundle.layer}: {kind}"
