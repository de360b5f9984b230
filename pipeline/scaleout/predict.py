"""Batch prediction on a Ray cluster into Parquet: the same answers as ``predict.py``, one shard per block.

The output is a folder of Parquet files (``pyarrow.parquet.read_table`` and
pandas read it as one table): ``path``, then ``class_1``, ``probability_1``, ...
(or ``value`` for a regression model), then ``skipped`` (empty, or why).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..data.discover import LABEL_SEPARATOR
from ..deploy.config import PredictConfig
from ..deploy.predict import collect_images, load_predictor
from ..errors import UserError
from ..outputs import replace_folder
from .cluster import actor_pool, decode_batch, file_dataset, prepare_worker
from .extract import DECODE_CPUS
from .listing import ClusterListing

log = logging.getLogger(__name__)


class Classifier:
    """A Ray Data actor: the model, loaded once, turns decoded batches into prediction rows."""

    def __init__(self, model: str, weights: str | None, precision: str, engine: str, top_k: int,
                 reject: bool = False):
        prepare_worker()
        self.predictor = load_predictor(model, weights, precision, engine)
        self.k = max(1, min(top_k, len(self.predictor.class_names)))
        self.threshold = self.predictor.threshold(reject)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["path"])
        ok = np.flatnonzero(batch["error"] == "")
        out: dict = {"path": batch["path"]}
        if self.predictor.regression:
            values = np.full(n, np.nan)
            if len(ok):
                values[ok] = self.predictor.probabilities(batch["pixels"][ok], len(ok))[:, 0]
            out["value"] = values
        else:
            names = np.asarray(self.predictor.class_names, dtype=object)
            classes = np.full((n, self.k), None, dtype=object)
            probabilities = np.full((n, self.k), np.nan)
            given = np.full(n, None, dtype=object)  # several labels per image: each over its threshold
            if len(ok):
                p = self.predictor.probabilities(batch["pixels"][ok], len(ok))
                order = np.argsort(-p, axis=1, kind="stable")[:, :self.k]
                classes[ok] = names[order]
                probabilities[ok] = np.take_along_axis(p, order, axis=1)
                if self.predictor.label_thresholds is not None:
                    given[ok] = [LABEL_SEPARATOR.join(name for name, _ in self.predictor.given(row)) for row in p]
            if self.threshold is not None:  # skipped rows: no decision
                out["decision"] = np.where(probabilities[:, 0] < self.threshold, "unknown", classes[:, 0])
            if self.predictor.label_thresholds is not None:
                out["labels"] = given
            for r in range(self.k):
                out[f"class_{r + 1}"] = classes[:, r]
                out[f"probability_{r + 1}"] = probabilities[:, r]
        out["skipped"] = batch["error"]
        return out


def predict_to_parquet(cfg: PredictConfig, address: str) -> int:
    """Predict every image ``cfg`` names on the cluster at ``address`` into the Parquet folder ``cfg.out``;
    returns the rows. Rejecting adds a ``decision`` column: the top class or ``unknown``
    (:meth:`Predictor.threshold`); a model of several labels per image, a ``labels`` column: those over their
    thresholds."""
    if cfg.out is None:
        raise UserError("on a cluster the predictions go to a Parquet folder: name it", param="out")
    if Path(cfg.out).is_file():
        raise UserError(f"{cfg.out} is a file; on a cluster the predictions go to a folder", param="out")
    predictor = load_predictor(cfg.model, cfg.weights, cfg.precision, cfg.engine)  # a bad model fails here
    predictor.threshold(cfg.reject)  # as does one without a threshold to reject with
    files, missing = collect_images(cfg.images, ClusterListing(address))
    if not files and not missing:
        raise UserError("no images given", param="images")
    pool = actor_pool()
    columns = {"path": [str(f) for f in files] + [p.path for p in missing],
               "file": [str(Path(f).resolve()) for f in files] + [""] * len(missing),
               "error": [""] * len(files) + [p.skipped for p in missing]}
    dataset = (file_dataset(columns, cfg.batch_size)
               .map_batches(decode_batch, fn_kwargs={"policy": predictor.policy}, batch_size=cfg.batch_size,
                            num_cpus=DECODE_CPUS)
               .map_batches(Classifier, batch_size=cfg.batch_size, **pool.options(), fn_constructor_kwargs={
                   "model": str(Path(cfg.model).resolve()), "weights": None if cfg.weights is None else
                   str(cfg.weights), "precision": cfg.precision, "engine": cfg.engine, "top_k": cfg.top_k,
                   "reject": cfg.reject}))
    rows = len(columns["path"])
    log.info("predicting %d images on Ray: %d model actor(s)", rows, pool.actors)
    # replaced whole: a reader never sees two runs' shards mixed
    replace_folder(Path(cfg.out).resolve(), "predict", lambda folder: dataset.write_parquet(str(folder)))
    return rows
