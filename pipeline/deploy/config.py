"""The predict and export commands' settings (:mod:`pipeline.deploy.predict`, :mod:`pipeline.deploy.export`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..backbones.options import ENGINES, PRECISIONS
from ..errors import UserError
from ..settings import Settings, at_least, setting

FORMATS = ("onnx", "tflite", "savedmodel", "keras")
SUFFIXES = {"onnx": ".onnx", "tflite": ".tflite", "keras": ".keras"}  # a SavedModel is a folder
QUANTIZATIONS = ("float16", "int8")


@dataclass(frozen=True)
class PredictConfig(Settings):
    """Settings of one prediction run: ``model`` (a bundle, a fine-tuned or an exported model) on ``images``
    (files, folders searched recursively, glob patterns)."""

    model: Path
    images: tuple
    top_k: int = setting(3, check=at_least(1))
    batch_size: int = setting(32, check=at_least(1))
    weights: Path | None = None  # the backbone's local weights a bundle was extracted with
    precision: str = setting("auto", choices=PRECISIONS)
    engine: str = setting("auto", choices=ENGINES)
    reject: bool = False  # images under the model's "unknown" threshold are marked unknown
    explain: Path | None = None  # a folder for each image's heatmap of the top class (pipeline.deploy.explain)
    progress: bool = True


@dataclass(frozen=True)
class ExportConfig(Settings):
    """Settings of one export: ``model`` (a bundle or a fine-tuned network) as ``format`` to ``out``."""

    model: Path
    format: str = setting(choices=FORMATS)
    out: Path
    quantize: str | None = setting(None, choices=QUANTIZATIONS)  # tflite only
    calibration: Path | None = None  # typical images, for int8
    weights: Path | None = None

    def check(self) -> None:
        if self.quantize is not None and self.format != "tflite":
            raise UserError(f"quantizing takes {' or '.join(QUANTIZATIONS)} and the tflite format", param="quantize")
        if self.format in SUFFIXES and Path(self.out).suffix != SUFFIXES[self.format]:
            raise UserError(f"{self.format} models are written to {SUFFIXES[self.format]} files, not "
                            f"{Path(self.out).name}", param="out")
        if self.quantize == "int8" and self.calibration is None:
            raise UserError("int8 needs calibration images (a folder of typical inputs)", param="calibration")


@dataclass(frozen=True)
class SuggestConfig(Settings):
    """Settings of one suggestion: the ``count`` images of ``images`` (files, folders searched recursively, glob
    patterns, or one feature store of unlabelled images) whose labels would help ``model`` (a bundle) most."""

    model: Path
    images: tuple
    count: int = setting(20, check=at_least(1))
    labelled: Path | None = None  # the bundle's training store (default: the one its metrics.json names)
    seed: int = 0
    batch_size: int = setting(32, check=at_least(1))
    weights: Path | None = None
    precision: str = setting("auto", choices=PRECISIONS)
    engine: str = setting("auto", choices=ENGINES)
    progress: bool = True

    def check(self) -> None:
        if Path(self.model).suffix != ".skops":
            raise UserError(f"suggests for a bundle (.skops) of the fit stage, not {Path(self.model).name}",
                            param="model")
