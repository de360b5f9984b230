"""Which unlabelled images to label next for a bundle: their codes (computed from image files, or read from a
store of unlabelled images), the bundle's class scores, and the choice of :mod:`pipeline.linear.label_next`
against the images the bundle was fitted on."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data.decode import ResizePolicy
from ..data.loader import decoded_batches
from ..data.views import views_of
from ..errors import UserError
from ..linear import tta
from ..linear.bundle import Bundle, load_bundle
from ..linear.kinds import get_kind
from ..linear.label_next import rank
from ..run_files import METRICS
from ..store.layout import layer_parts
from ..store.reader import FeatureStore, read_store
from .config import SUGGESTION_COLUMNS, SuggestConfig
from .predict import bundle_codes, collect_images

log = logging.getLogger(__name__)

DUPLICATE_LAYER = "penultimate"  # where the near-duplicate threshold was calibrated (pipeline.linear.duplicates)


@dataclass(frozen=True)
class Suggestion:
    """One image to label, with why: its top class and score, the margin to the second, and how similar it is
    to the nearest labelled image."""

    rank: int
    path: str
    predicted: str
    score: float
    margin: float
    nearest: float


@dataclass
class Suggestions:
    """The ranked images and what the ranking saw."""

    chosen: list[Suggestion]
    pool: int  # unlabelled images with codes
    duplicates: list[str]  # near-duplicates of labelled images, left out
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): undecodable or missing
    labelled: int = 0  # images the bundle was fitted on, compared against

    def format(self) -> str:
        lines = [f"{r.rank:3d}  {r.path}\t{r.predicted} {r.score:.3f}, margin {r.margin:.3f}" for r in self.chosen]
        lines.append(f"{len(self.chosen)} of {self.pool} unlabelled images suggested; {len(self.duplicates)} left "
                     f"out as near-duplicates of the {self.labelled} labelled ones; {len(self.skipped)} skipped")
        return "\n".join(lines)


def _check_store(store: FeatureStore, bundle: Bundle, layers: list[str], what: str) -> None:
    if store.config.weights_checksum != bundle.store_config["weights_checksum"]:
        raise UserError(f"{store.path} was extracted with other {store.config.backbone} weights than the bundle's "
                        f"{bundle.backbone}", param=what)
    stored, trained = store.config.to_json(), bundle.store_config
    differ = [k for k in ("backbone", "input_size", "preprocessing", "resize") if stored.get(k) != trained.get(k)]
    if differ:  # codes of images decoded another way are other codes
        raise UserError(f"{store.path} was extracted with another {', '.join(differ)} than the bundle's store "
                        f"(resize {store.config.resize.get('mode')} against {trained['resize'].get('mode')}): "
                        "extract it as the bundle's store was", param=what)
    missing = [p for layer in layers for p in layer_parts(layer) if p not in store.layers]
    if missing:
        raise UserError(f"{store.path} has no codes of layer {', '.join(missing)}: extract it with the layers "
                        f"{', '.join(dict.fromkeys([*layer_parts(bundle.layer), DUPLICATE_LAYER]))}", param=what)


def labelled_store(cfg: SuggestConfig) -> Path:
    """The store of the images the bundle was fitted on: ``labelled``, or the one its run's metrics.json names."""
    if cfg.labelled is not None:
        return Path(cfg.labelled)
    folder = Path(cfg.model).parent
    if not METRICS.path(folder).exists():
        raise UserError(f"cannot tell which images the bundle was fitted on (no {METRICS.name} beside it naming its "
                        "store): give their feature store", param="labelled")
    return Path(METRICS.read(folder, param="labelled").get("store", ""))


def _from_store(path: Path, bundle: Bundle) -> tuple[list[str], np.ndarray, np.ndarray]:
    store = read_store(path)
    _check_store(store, bundle, [bundle.layer, DUPLICATE_LAYER], "images")
    if bundle.views and not set(bundle.views) <= set(store.views):
        raise UserError(f"the bundle averages over the views {'+'.join(bundle.views)}, which {path} lacks: extract "
                        "it with those views", param="images")
    codes = store.view_codes(bundle.layer) if bundle.views else store.codes(bundle.layer)
    planes = [0] + [1 + store.views.index(v) for v in bundle.views] if bundle.views else None
    scores = tta.scores(bundle.estimator, codes[planes] if planes else codes)
    return store.paths, scores, store.codes(DUPLICATE_LAYER)


def _from_images(cfg: SuggestConfig, bundle: Bundle, files: list[Path]
                 ) -> tuple[list[str], np.ndarray, np.ndarray, list[tuple[str, str]]]:
    network = bundle_codes(bundle, cfg.weights, cfg.precision, cfg.engine, [DUPLICATE_LAYER])
    paths, scores, codes, skipped = [], [], [], []
    with tqdm(total=len(files), unit="img", desc="codes", disable=not cfg.progress) as bar:
        for batch in decoded_batches(files, ResizePolicy.from_dict(bundle.store_config["resize"]), cfg.batch_size):
            if batch.ok:
                n = len(batch.ok)
                planes = [network(p, n) for p in views_of(batch.pixels, bundle.views)]
                scores.append(tta.scores(bundle.estimator, np.stack([p[bundle.layer] for p in planes])))
                codes.append(planes[0][DUPLICATE_LAYER])
                paths += [str(files[i]) for i in batch.ok]
            skipped += [(str(files[i]), reason) for i, reason in batch.failed]
            bar.update(len(batch.items))
    if not paths:
        raise UserError("none of the images could be decoded", param="images")
    return paths, np.concatenate(scores), np.concatenate(codes), skipped


def suggest(cfg: SuggestConfig) -> Suggestions:
    """The ``cfg.count`` images to label next, the most useful first."""
    bundle = load_bundle(cfg.model)
    task = get_kind(bundle.classifier).task
    if not task.classes:
        raise UserError(f"suggests images for single-label classifiers; this is a {task.name} bundle", param="model")
    labelled = read_store(labelled_store(cfg))
    _check_store(labelled, bundle, [DUPLICATE_LAYER], "labelled")
    skipped: list[tuple[str, str]] = []
    if len(cfg.images) == 1 and Path(cfg.images[0]).suffix in (".h5", ".hdf5"):
        paths, scores, codes = _from_store(Path(cfg.images[0]), bundle)
    else:
        files, missing = collect_images(cfg.images)
        skipped = [(m.path, m.skipped) for m in missing]
        if not files:
            raise UserError("no images found", param="images")
        paths, scores, codes, failed = _from_images(cfg, bundle, files)
        skipped += failed
    ranking = rank(scores, codes, labelled.codes(DUPLICATE_LAYER), cfg.count, cfg.seed)
    top = np.argmax(scores, axis=1)
    chosen = [Suggestion(k + 1, paths[i], bundle.class_names[top[i]], float(scores[i, top[i]]),
                         float(ranking.margin[i]), float(ranking.nearest[i])) for k, i in enumerate(ranking.chosen)]
    return Suggestions(chosen, len(paths), [paths[i] for i in ranking.duplicates], skipped, len(labelled))


def write_csv(suggestions: Suggestions, path: str | Path) -> None:
    """One row per suggested image, the most useful first: rank, path, predicted class and its score, margin to
    the second class, similarity to the nearest labelled image."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SUGGESTION_COLUMNS)
        for s in suggestions.chosen:
            writer.writerow([s.rank, s.path, s.predicted, f"{s.score:.6f}", f"{s.margin:.6f}", f"{s.nearest:.4f}"])
