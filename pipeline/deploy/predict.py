"""Predictions for new images from a saved bundle (codes, then the classifier), a fine-tuned or an exported model.

Keras, TensorFlow and scikit-learn are imported only for the models that need
them, so an exported ``.onnx`` model predicts with the ``runtime`` extra alone.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..data.decode import ResizePolicy
from ..data.discover import LABEL_SEPARATOR, Lister, is_candidate, list_folder
from ..data.loader import decoded_batches
from ..data.views import views_of
from ..errors import UserError
from ..linear import tta
from ..linear.kinds import get_kind, is_network
from ..outputs import claim, file_name, write_bytes
from ..run_files import CLASSES, METRICS
from ..store.layout import layer_parts
from ..task import CLASSIFICATION, Task, get_task
from .config import PredictConfig
from .runtime import EXTENSIONS, ExportedModel

if TYPE_CHECKING:
    import keras

    from ..backbones.loading import Backbone
    from ..linear.bundle import Bundle

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Top-k classes of one image with their probabilities, or the reason it was skipped."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    skipped: str | None = None
    value: float | None = None  # regression models predict a number instead of classes
    unknown: bool = False  # rejecting: the top probability is under the model's threshold
    labels: list[tuple[str, float]] | None = None  # several labels per image: those over their thresholds
    heatmap: str | None = None  # explaining: the PNG of where the evidence for the top class lies

    @property
    def decision(self) -> str:
        """The top class, or ``unknown``."""
        return "unknown" if self.unknown else self.top[0][0] if self.top else ""


def collect_images(inputs: Sequence[str | Path], lister: Lister | None = None) -> tuple[list[Path], list[Prediction]]:
    """Files, folders (searched recursively; ``lister`` lists their parts) and glob patterns -> image files,
    plus inputs that match nothing."""
    files, missing = [], []
    for item in map(str, inputs):
        if any(ch in item for ch in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(item, recursive=True)) if Path(m).is_file()]
            files += [m for m in matches if is_candidate(m)]
            if not matches:
                missing.append(Prediction(item, skipped="no file matches this pattern"))
        elif Path(item).is_dir():
            files += list_folder(Path(item), lister)[0]
        elif Path(item).is_file() or Path(item).is_symlink():
            files.append(Path(item))
        else:
            missing.append(Prediction(item, skipped="file not found"))
    return list(dict.fromkeys(files)), missing


@dataclass
class Predictor:
    """What predicting needs, whatever the model: class names, the decoding policy, probabilities."""

    class_names: list[str]
    policy: ResizePolicy
    description: str
    probabilities: Callable[[np.ndarray, int], np.ndarray]  # (padded pixel batch, images in it) -> [n, classes]
    regression: bool = False  # then "probabilities" are the predicted values, [n, 1]
    reject_threshold: float | None = None  # top probabilities under it are "unknown" (pipeline.linear.reject)
    label_thresholds: np.ndarray | None = None  # several labels per image: a label is given over its threshold

    def threshold(self, reject: bool) -> float | None:
        """The threshold rejecting applies (None without ``reject``); one clear line when the model has none."""
        if not reject:
            return None
        if self.regression:
            raise UserError("is for classifiers; this model predicts a number", param="reject")
        if self.label_thresholds is not None:
            raise UserError("is for one label per image; this model gives each label over its own threshold",
                            param="reject")
        if self.reject_threshold is None:
            raise UserError("this model has no threshold for unknown images: fit or fine-tune it again (a "
                            "streamed fit has none)", param="reject")
        return self.reject_threshold

    def given(self, p: np.ndarray) -> list[tuple[str, float]]:
        """Several labels per image: the labels over their thresholds in one image's probabilities ``p``, the
        most probable first."""
        return [(self.class_names[c], float(p[c])) for c in np.argsort(-p, kind="stable")
                if p[c] >= self.label_thresholds[c]]


def bundle_backbone(bundle: Bundle, weights=None, precision: str = "auto") -> Backbone:
    """The backbone a bundle's codes came from, refusing other weights than those it was trained on."""
    from ..backbones.loading import load_backbone

    backbone = load_backbone(bundle.backbone, weights, precision)
    if backbone.weights_checksum != bundle.store_config["weights_checksum"]:
        raise UserError(
            f"the installed {bundle.backbone} weights ({backbone.weights_source}) differ from those the bundle "
            f"was trained on ({bundle.weights_source}); install those or give their file", param="weights")
    return backbone


def bundle_codes(bundle: Bundle, weights=None, precision: str = "auto", engine: str = "auto",
                 layers: Sequence[str] = ()) -> Callable[[np.ndarray, int], dict[str, np.ndarray]]:
    """(padded pixel batch, images in it) -> the codes of the bundle's layer and of ``layers``, from one pass of
    its backbone (a joined layer's parts side by side, as in the store)."""
    from ..backbones.engine import frozen_network

    wanted = list(dict.fromkeys([bundle.layer, *layers]))
    parts = list(dict.fromkeys(part for layer in wanted for part in layer_parts(layer)))
    network = frozen_network(bundle_backbone(bundle, weights, precision), "features", parts, engine)

    def codes(pixels: np.ndarray, n: int) -> dict[str, np.ndarray]:
        out = dict(zip(parts, network(pixels)))
        return {layer: np.concatenate([out[x] for x in layer_parts(layer)], axis=1)[:n] for layer in wanted}

    return codes


def bundle_predictor(bundle: Bundle, weights=None, precision: str = "auto", engine: str = "auto") -> Predictor:
    """The predictor of a bundle, loaded or made in memory: its backbone's codes, then its classifier."""
    network = bundle_codes(bundle, weights, precision, engine)

    def codes(pixels: np.ndarray, n: int) -> np.ndarray:
        return network(pixels, n)[bundle.layer]

    def proba(pixels: np.ndarray, n: int) -> np.ndarray:  # averaged over the image and its views
        return tta.scores(bundle.estimator, np.stack([codes(p, n) for p in views_of(pixels, bundle.views)]))

    kind = get_kind(bundle.classifier)
    if kind.task.several:
        thresholds = np.asarray(bundle.metrics["thresholds"], np.float64)
        return Predictor(bundle.class_names, ResizePolicy.from_dict(bundle.store_config["resize"]),
                         f"{bundle.classifier} on {bundle.backbone}/{bundle.layer}: {kind.outputs}, each label "
                         "given over its threshold", proba, label_thresholds=thresholds)
    if kind.task.numeric:
        return Predictor(["value"], ResizePolicy.from_dict(bundle.store_config["resize"]),
                         f"{kind.name} regression on {bundle.backbone}/{bundle.layer}: {kind.outputs}",
                         lambda pixels, n: bundle.estimator.predict(codes(pixels, n)).reshape(-1, 1),
                         regression=True)
    outputs = kind.outputs
    if bundle.views:
        outputs += f" averaged over each image and its {'+'.join(bundle.views)}"
    return Predictor(
        bundle.class_names, ResizePolicy.from_dict(bundle.store_config["resize"]),
        f"{bundle.classifier} on {bundle.backbone}/{bundle.layer}: {outputs}", proba,
        reject_threshold=(bundle.metrics.get("reject") or {}).get("threshold"))


@dataclass(frozen=True)
class FineTuned:
    """A network saved by the fine-tuning stage and what its run folder says of it: its class names (none for a
    numeric target), decoding policy, backbone, task and "unknown" threshold (None: none recorded)."""

    model: keras.Model
    class_names: list[str]
    policy: ResizePolicy
    backbone: str
    task: Task
    reject_threshold: float | None


def fine_tuned_network(path: Path) -> FineTuned:
    """The network at ``path`` with the ``classes.json`` and ``metrics.json`` beside it."""
    import keras

    from ..backbones.codes import resize_policy
    from ..backbones.registry import get_spec
    from ..data import augment  # noqa: F401  (registers full mode's RandomAffine for loading)

    class_names, run = CLASSES.read(path.parent, param="model"), METRICS.read(path.parent, param="model")
    try:
        backbone, task = run["backbone"], get_task(run.get("task", CLASSIFICATION.name))
        for module in get_spec(backbone).requires:  # the layers the saved network holds
            importlib.import_module(module)
        model = keras.models.load_model(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot load fine-tuned model {path}: {e}", param="model") from None
    reject = ((run.get("final") or {}).get("finetune") or {}).get("reject") or {}
    size = int(model.input_shape[1])
    return FineTuned(model, class_names, dataclasses.replace(resize_policy(get_spec(backbone)), size=size), backbone,
                     task, reject.get("threshold"))


def _keras_predictor(path: Path) -> Predictor:
    net = fine_tuned_network(path)
    what = "predicted values" if net.task.numeric else "softmax probabilities"
    return Predictor(net.class_names or ["value"], net.policy, f"fine-tuned {net.backbone} at {net.policy.size}px: "
                     f"{what}", lambda pixels, n: np.asarray(net.model.predict_on_batch(pixels), np.float64)[:n],
                     net.task.numeric, net.reject_threshold)


def load_predictor(path: str | Path, weights: str | Path | None = None, precision: str = "auto",
                   engine: str = "auto") -> Predictor:
    """A bundle from the fit stage (``.skops``), a model from the fine-tuning stage (``.keras``, run by Keras) or
    an exported model (``.onnx``, ``.tflite``: see :mod:`pipeline.deploy.export`)."""
    path = Path(path)
    if path.suffix in EXTENSIONS:
        model = ExportedModel(path)
        card = model.card
        thresholds = card.label_thresholds
        return Predictor(card.class_names, ResizePolicy.from_dict(card.resize),
                         f"exported {path.suffix[1:]} model ({card.source}): "
                         + ("label probabilities, each label given over its threshold" if thresholds else
                            "class probabilities"),
                         lambda pixels, n: model(pixels)[:n], reject_threshold=card.reject_threshold,
                         label_thresholds=None if thresholds is None else np.asarray(thresholds, np.float64))
    if is_network(path):
        if engine == "onnx":
            log.info("fine-tuned networks run on Keras")
        return _keras_predictor(path)
    from ..linear.bundle import load_bundle

    return bundle_predictor(load_bundle(path), weights, precision, engine)


def predict_images(cfg: PredictConfig) -> tuple[list[Prediction], str]:
    """Top-k predictions for every image ``cfg`` names, and a line saying what the probabilities are; with
    ``reject``, images whose top probability is under the model's threshold are marked unknown."""
    files, predictions = collect_images(cfg.images)
    if not files and not predictions:
        raise UserError("no images given", param="images")
    predictor = load_predictor(cfg.model, cfg.weights, cfg.precision, cfg.engine)
    threshold = predictor.threshold(cfg.reject)
    if cfg.explain is not None:
        if predictor.regression:
            raise UserError("draws where the evidence for a class lies; this model predicts a number",
                            param="explain")
        claim(cfg.explain, "predict")
    k = max(1, min(cfg.top_k, len(predictor.class_names)))
    with tqdm(total=len(files), unit="img", desc="predict", disable=not cfg.progress or not files) as bar:
        for batch in decoded_batches(files, predictor.policy, cfg.batch_size):
            if batch.ok:
                for row, (i, p) in enumerate(zip(batch.ok, predictor.probabilities(batch.pixels, len(batch.ok)))):
                    if predictor.regression:
                        predictions.append(Prediction(str(files[i]), value=float(p[0])))
                        continue
                    order = np.argsort(-p)[:k]
                    predictions.append(Prediction(str(files[i]),
                                                  [(predictor.class_names[c], float(p[c])) for c in order],
                                                  unknown=threshold is not None and p[order[0]] < threshold))
                    if predictor.label_thresholds is not None:
                        predictions[-1].labels = predictor.given(p)
                    if cfg.explain is not None:
                        predictions[-1].heatmap = _explain(predictor, batch.pixels[row], int(order[0]), cfg,
                                                           file_name(f"{len(predictions):05d}_{files[i].stem}",
                                                                     ".png"))
            predictions += [Prediction(str(files[i]), skipped=reason) for i, reason in batch.failed]
            bar.update(len(batch.items))
    if threshold is not None:
        return predictions, f"{predictor.description}; unknown under {threshold:.3f}"
    return predictions, predictor.description


def _explain(predictor: Predictor, pixels: np.ndarray, target: int, cfg: PredictConfig, name: str) -> str:
    """Write the heatmap of class ``target`` on one decoded image into ``cfg.explain``; its path."""
    from .explain import encoded, explained, occlusion

    path = Path(cfg.explain) / name
    heat = occlusion(predictor.probabilities, pixels, target, cfg.batch_size)
    write_bytes(path, encoded(explained(pixels, heat, predictor.class_names[target])))
    return str(path)


def write_csv(predictions: Sequence[Prediction], path: str | Path, top_k: int, reject: bool = False) -> None:
    """One row per image: path, (with ``reject``) the decision, (several labels per image) the labels given,
    class and probability for each rank (or the value), (explaining) the heatmap's path, then the skip reason."""
    regression = any(p.value is not None for p in predictions)
    explained = any(p.heatmap for p in predictions)
    multilabel = any(p.labels is not None for p in predictions)
    ranks = [] if regression else [f"{what}_{r}" for r in range(1, top_k + 1) for what in ("class", "probability")]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path"] + (["decision"] if reject else []) + (["labels"] if multilabel else [])
                        + (["value"] if regression else ranks) + (["heatmap"] if explained else []) + ["skipped"])
        for p in predictions:
            if regression:
                cells = ["" if p.value is None else f"{p.value:.6g}"]
            else:
                cells = [c for name, prob in p.top for c in (name, f"{prob:.6f}")]
                cells += [""] * (2 * top_k - len(cells))
            given = [LABEL_SEPARATOR.join(name for name, _ in p.labels or [])] if multilabel else []
            writer.writerow([p.path] + ([p.decision] if reject else []) + given + cells
                            + ([p.heatmap or ""] if explained else []) + [p.skipped or ""])
