"""The predict, export and suggest commands' settings (:mod:`pipeline.deploy.predict`,
:mod:`pipeline.deploy.export`, :mod:`pipeline.deploy.suggest`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..backbones.options import ENGINES, PRECISIONS
from ..errors import UserError
from ..outputs import check_out, csv_header
from ..settings import MAX_BATCH, Settings, seed_setting, setting, within

FORMATS = ("onnx", "tflite", "savedmodel", "keras")
SUFFIXES = {"onnx": ".onnx", "tflite": ".tflite", "keras": ".keras"}  # a SavedModel is a folder
QUANTIZATIONS = ("float16", "int8")
SUGGESTION_COLUMNS = ("rank", "path", "predicted", "score", "margin", "nearest_labelled")  # suggest's CSV


def _files(images) -> tuple:
    """The inputs among ``images`` that name files or folders (glob patterns name none of their own)."""
    return tuple(i for i in images if not any(ch in str(i) for ch in "*?["))


@dataclass(frozen=True)
class PredictConfig(Settings):
    """Settings of one prediction run: ``model`` (a bundle, a fine-tuned or an exported model) on ``images``
    (files, folders searched recursively, glob patterns)."""

    model: Path
    images: tuple
    top_k: int = setting(3, check=within(1, 1000))
    batch_size: int = setting(32, check=within(1, MAX_BATCH))
    weights: Path | None = None  # the backbone's local weights a bundle was extracted with
    precision: str = setting("auto", choices=PRECISIONS)
    engine: str = setting("auto", choices=ENGINES)
    reject: bool = False  # images under the model's "unknown" threshold are marked unknown
    explain: Path | None = None  # a folder for each image's heatmap of the top class (pipeline.deploy.explain)
    progress: bool = True
    out: Path | None = None  # the predictions' CSV (on a cluster, their Parquet folder)
    overwrite: bool = False  # replace an out or explain folder that predict did not write

    def check(self) -> None:
        inputs = (self.model, *_files(self.images))
        check_out(self.out, "predict", inputs=inputs, overwrite=self.overwrite, recognise=_predictions_csv)
        check_out(self.explain, "predict", inputs=inputs, overwrite=self.overwrite, param="explain")
        if self.out is not None and self.explain is not None and Path(self.out).resolve() == Path(
                self.explain).resolve():
            raise UserError("the heatmaps need a folder of their own, not the predictions' file", param="explain")


@dataclass(frozen=True)
class ExportConfig(Settings):
    """Settings of one export: ``model`` (a bundle or a fine-tuned network) as ``format`` to ``out``."""

    model: Path
    format: str = setting(choices=FORMATS)
    out: Path
    quantize: str | None = setting(None, choices=QUANTIZATIONS)  # tflite only
    calibration: Path | None = None  # typical images, for int8
    weights: Path | None = None
    overwrite: bool = False  # replace an out that is not an exported model

    def check(self) -> None:
        if self.quantize is not None and self.format != "tflite":
            raise UserError(f"quantizing takes {' or '.join(QUANTIZATIONS)} and the tflite format", param="quantize")
        if self.format in SUFFIXES and Path(self.out).suffix != SUFFIXES[self.format]:
            raise UserError(f"{self.format} models are written to {SUFFIXES[self.format]} files, not "
                            f"{Path(self.out).name}", param="out")
        if self.quantize == "int8" and self.calibration is None:
            raise UserError("int8 needs calibration images (a folder of typical inputs)", param="calibration")
        if self.calibration is not None and not Path(self.calibration).exists():
            raise UserError(f"{self.calibration} does not exist", param="calibration")
        check_out(self.out, "export", inputs=(self.model, self.weights, self.calibration), overwrite=self.overwrite,
                  recognise=_exported)


@dataclass(frozen=True)
class SuggestConfig(Settings):
    """Settings of one suggestion: the ``count`` images of ``images`` (files, folders searched recursively, glob
    patterns, or one feature store of unlabelled images) whose labels would help ``model`` (a bundle) most."""

    model: Path
    images: tuple
    count: int = setting(20, check=within(1, 10**6))
    labelled: Path | None = None  # the bundle's training store (default: the one its metrics.json names)
    seed: int = seed_setting()
    batch_size: int = setting(32, check=within(1, MAX_BATCH))
    weights: Path | None = None
    precision: str = setting("auto", choices=PRECISIONS)
    engine: str = setting("auto", choices=ENGINES)
    progress: bool = True
    out: Path | None = None  # the ranked CSV
    overwrite: bool = False  # replace an out that is not suggest's CSV

    def check(self) -> None:
        if Path(self.model).suffix != ".skops":
            raise UserError(f"suggests for a bundle (.skops) of the fit stage, not {Path(self.model).name}",
                            param="model")
        check_out(self.out, "suggest", inputs=(self.model, self.labelled, *_files(self.images)),
                  overwrite=self.overwrite, recognise=lambda path: csv_header(path) == list(SUGGESTION_COLUMNS))


def _predictions_csv(path: Path) -> bool:
    """predict's CSV: its header begins with ``path`` and ends with ``skipped``."""
    header = csv_header(path)
    return len(header) >= 2 and header[0] == "path" and header[-1] == "skipped"


def _exported(path: Path) -> bool:
    from .card import is_exported  # pillow, only where the path exists

    return is_exported(path)
