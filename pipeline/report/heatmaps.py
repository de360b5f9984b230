"""Where a report's model looked: occlusion heatmaps (:mod:`pipeline.deploy.explain`) of the class it predicted,
on its most confident mistakes and on a sample of the images it got right, so that a user can check that
"boat" is decided by the boat and not by the water."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.decode import DecodeError, decode_image
from ..deploy.explain import GRID, encoded, explained, occlusion
from ..deploy.predict import Predictor

log = logging.getLogger(__name__)


@dataclass
class Heatmaps:
    """The images explained (path, true and predicted class, confidence, whether it was a mistake), how, and
    their overlays as JPEG bytes (None where the image cannot be read any more; not written to JSON)."""

    method: str
    images: list[dict]
    pictures: list[bytes | None] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"method": self.method, "images": self.images}


def explain_predictions(predictor: Predictor, root: Path, paths: list[str], y: np.ndarray, proba: np.ndarray,
                        class_names: list[str], shown: int, seed: int, how: str) -> Heatmaps:
    """Heatmaps of the ``shown`` most confident mistakes of ``proba`` (one row per image of ``paths``, columns
    ``class_names``) and of ``shown`` images it got right, drawn at random with ``seed``; ``how``: which model
    ``predictor`` is, for the report."""
    predicted = proba.argmax(axis=1)
    confidence = proba[np.arange(len(y)), predicted]
    wrong = np.flatnonzero(predicted != y)
    right = np.flatnonzero(predicted == y)
    picked = [*wrong[np.argsort(-confidence[wrong], kind="stable")][:shown],
              *np.sort(np.random.default_rng(seed).permutation(right)[:shown])]
    images, pictures = [], []
    for i in picked:
        images.append({"path": paths[i], "true": class_names[y[i]], "predicted": class_names[predicted[i]],
                       "confidence": float(confidence[i]), "mistake": bool(predicted[i] != y[i])})
        try:
            pixels = decode_image(root / paths[i], predictor.policy)
        except DecodeError as e:
            log.info("no heatmap of %s: %s", paths[i], e)
            pictures.append(None)
            continue
        target = predictor.class_names.index(class_names[predicted[i]])
        heat = occlusion(predictor.probabilities, pixels, target)
        pictures.append(encoded(explained(pixels, heat, class_names[predicted[i]]), "JPEG"))
    method = (f"occlusion on a {GRID}x{GRID} grid: each cell covered in turn with the image's mean colour; the "
              f"brighter, the more the predicted class's probability fell. Model: {how}")
    return Heatmaps(method, images, pictures)
